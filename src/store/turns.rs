//! Turns per digest: the chunked layer's way to let one of several
//! concurrent writers of the same content go first.

use std::collections::HashMap;
use std::sync::Arc;

use crate::digest::Digest;

/// One turn at a time per digest: concurrent uploads of one blob (or of
/// one chunk) wait for the first and then find it stored, instead of all
/// asking at once, all finding it missing and all writing it.
#[derive(Debug, Default)]
pub(crate) struct Turns(std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>);

impl Turns {
    pub(crate) async fn take(&self, digest: Digest) -> Turn<'_> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest)
            .or_default()
            .clone();
        Turn {
            turns: self,
            digest,
            held: Some(lock.lock_owned().await),
        }
    }
}

/// A digest's turn, given back (and forgotten when nobody waits) on drop.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    digest: Digest,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.turns.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = self.held.take() {
            // The map's handle and this guard's: nobody else waits.
            if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&held)) == 2 {
                map.remove(&self.digest);
            }
        }
    }
}
