//! The table of recent result writers, so a later differing result can
//! name the invocation that wrote the earlier one.

use std::sync::Arc;

use super::Writer;
use crate::digest::Digest;

/// Slots of the table (a power of two).
const WRITER_SLOTS: usize = 1 << 18;

/// Who last wrote recent results: a direct-mapped table (a slot per action
/// digest's leading bytes, a newer action taking the slot of an older one)
/// rather than a cache with an eviction policy, because it is written on
/// every result and read only when one is found to differ.
#[derive(Debug)]
pub(super) struct Writers {
    slots: Vec<Slot>,
}

/// The instance (its name's hash: the table only names writers, and a
/// copy of the name cost an allocation per write), action and writer of
/// the result a slot last saw written.
type Slot = std::sync::Mutex<Option<Arc<(u64, Digest, Writer)>>>;

fn instance_key(instance: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::default().hash_one(instance)
}

impl Writers {
    pub(super) fn new() -> Writers {
        Writers {
            slots: (0..WRITER_SLOTS)
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
        }
    }

    fn slot(&self, action: &Digest) -> &Slot {
        let mut lead = [0u8; 8];
        lead.copy_from_slice(&action.hash[..8]);
        &self.slots[u64::from_le_bytes(lead) as usize % WRITER_SLOTS]
    }

    pub(super) fn get(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Option<Arc<(u64, Digest, Writer)>> {
        let key = instance_key(instance);
        let slot = self.slot(action).lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|e| e.0 == key && e.1 == *action)
            .cloned()
    }

    /// Makes `writer` the action's latest writer and returns its entry. An
    /// anonymous writer names nothing: it only forgets who wrote the
    /// replaced result.
    pub(super) fn replace(
        &self,
        instance: &str,
        action: &Digest,
        writer: Writer,
    ) -> Arc<(u64, Digest, Writer)> {
        let key = instance_key(instance);
        let entry = Arc::new((key, *action, writer));
        let mut slot = self.slot(action).lock().unwrap_or_else(|p| p.into_inner());
        if !entry.2.is_anonymous() {
            *slot = Some(entry.clone());
        } else if slot.as_ref().is_some_and(|e| e.0 == key && e.1 == *action) {
            *slot = None;
        }
        entry
    }
}
