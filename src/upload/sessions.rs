//! The upload sessions of one server: each interrupted large upload's spool
//! file (or, for a store in memory, its chunks; for a chunked store, the
//! chunks it stored and the bytes after them), the space it reserved (per
//! identity and in all), and their expiry.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};
use crate::resource::ResourceName;

/// What an upload kept in memory instead of at its spool's path.
#[derive(Debug, Default)]
pub(super) struct Kept {
    /// The chunks of the blob's start the store holds (a chunked store,
    /// [`crate::store::Staging::Chunks`]), in order.
    pub(super) stored: Vec<crate::digest::Digest>,
    /// The bytes after them, as they arrived.
    pub(super) tail: VecDeque<Bytes>,
    /// A report did not continue `stored` (which a cut of the same bytes
    /// always does): the session cannot be resumed from.
    pub(super) broken: bool,
}

impl Kept {
    /// Forgets everything kept.
    pub(super) fn clear(&mut self) {
        *self = Kept::default();
    }

    /// Drops the tail's first `n` bytes (a chunk stored); false if it
    /// holds fewer.
    pub(super) fn advance(&mut self, mut n: u64) -> bool {
        while n > 0 {
            let Some(front) = self.tail.front_mut() else {
                return false;
            };
            if front.len() as u64 > n {
                front.advance(n as usize);
                return true;
            }
            n -= front.len() as u64;
            self.tail.pop_front();
        }
        true
    }
}

/// An interrupted upload's spooled bytes.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) path: PathBuf,
    /// The bytes kept, when they are kept in memory instead of at `path`.
    pub(super) kept: Mutex<Kept>,
    /// Who reserved the spool space, and how much.
    pub(super) owner: String,
    pub(super) reserved: u64,
    pub(super) len: AtomicU64,
    pub(super) touched: Mutex<Instant>,
    /// Held by the Write that is using the session.
    pub(super) busy: tokio::sync::Mutex<()>,
}

/// The upload sessions of one server.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    limits: crate::config::UploadsConfig,
    /// Bytes reserved in all, and per owner.
    reserved: Mutex<(u64, HashMap<String, u64>)>,
    /// Received bytes waiting for the spool writers, all uploads together.
    pub(super) in_flight: crate::budget::ByteBudget,
}

impl Uploads {
    /// Keeps spool files under `dir` within `limits`, clearing any a
    /// previous run left.
    pub fn new(dir: PathBuf, limits: crate::config::UploadsConfig) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("clearing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Uploads {
            dir,
            sessions: Mutex::new(HashMap::new()),
            in_flight: crate::budget::ByteBudget::new(limits.spool_in_flight.0),
            limits,
            reserved: Mutex::new((0, HashMap::new())),
        })
    }

    /// Bytes kept for an upload, if it is known.
    pub fn committed(&self, name: &ResourceName) -> Option<u64> {
        let sessions = self.sessions.lock().expect("uploads lock");
        sessions
            .get(&name.upload_key())
            .map(|s| s.len.load(Ordering::SeqCst))
    }

    /// The session of `key`, reserving `size` bytes for `owner` when it is
    /// new; RESOURCE_EXHAUSTED when that would pass a spool limit.
    pub(super) fn session(&self, key: &str, size: u64, owner: &str) -> Result<Arc<Session>> {
        let mut sessions = self.sessions.lock().expect("uploads lock");
        if let Some(session) = sessions.get(key) {
            *session.touched.lock().expect("session lock") = Instant::now();
            return Ok(session.clone());
        }
        self.reserve(owner, size)?;
        let session = Arc::new(Session {
            path: self.dir.join(uuid::Uuid::new_v4().simple().to_string()),
            kept: Mutex::new(Kept::default()),
            owner: owner.to_string(),
            reserved: size,
            len: AtomicU64::new(0),
            touched: Mutex::new(Instant::now()),
            busy: tokio::sync::Mutex::new(()),
        });
        sessions.insert(key.to_string(), session.clone());
        Ok(session)
    }

    fn reserve(&self, owner: &str, size: u64) -> Result<()> {
        let mut reserved = self.reserved.lock().expect("uploads lock");
        let (total, by_owner) = &mut *reserved;
        let mine = by_owner.get(owner).copied().unwrap_or(0);
        let (max, per) = (
            self.limits.max_spool.0,
            self.limits.max_spool_per_identity.0,
        );
        if total.saturating_add(size) > max || mine.saturating_add(size) > per {
            return Err(Error::exhausted(format!(
                "upload spools are full: {owner} holds {mine} of {per} bytes and all uploads {total} of {max}; \
                 a resumable upload of {size} bytes does not fit (finish or abandon other uploads first)"
            )));
        }
        *total += size;
        by_owner.insert(owner.to_string(), mine + size);
        Ok(())
    }

    fn release(&self, session: &Session) {
        let _ = std::fs::remove_file(&session.path);
        let mut reserved = self.reserved.lock().expect("uploads lock");
        let (total, by_owner) = &mut *reserved;
        *total = total.saturating_sub(session.reserved);
        if let Some(mine) = by_owner.get_mut(&session.owner) {
            *mine = mine.saturating_sub(session.reserved);
            if *mine == 0 {
                by_owner.remove(&session.owner);
            }
        }
    }

    pub(super) fn remove(&self, key: &str) {
        let removed = self.sessions.lock().expect("uploads lock").remove(key);
        if let Some(s) = removed {
            self.release(&s);
        }
    }

    /// Drops sessions untouched for `idle`; clients that never come back
    /// must not fill the disk.
    pub fn expire(&self, idle: Duration) {
        let mut expired = Vec::new();
        self.sessions.lock().expect("uploads lock").retain(|_, s| {
            let keep = s.touched.lock().expect("session lock").elapsed() < idle;
            if !keep {
                expired.push(s.clone());
            }
            keep
        });
        for s in expired {
            self.release(&s);
        }
    }
}
