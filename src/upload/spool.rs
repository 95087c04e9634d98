//! The spool writer: a blocking thread per resumable upload that writes
//! (and, for a file the store adopts, hashes) the pieces an upload passes
//! it, each holding its room in the uploads' shared budget until written.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::direct::Appender;
use super::sessions::Session;
use crate::budget::ByteBudget;

/// A piece on its way to the writer, with its room in the budget.
type Piece = (Bytes, Option<OwnedSemaphorePermit>);

/// The sending end of a spool writer: each piece takes room in the
/// uploads' shared budget before it is queued, and the writer gives the
/// room back once the piece is written.
pub(super) struct Spool {
    tx: tokio::sync::mpsc::Sender<Piece>,
    budget: ByteBudget,
}

impl Spool {
    pub(super) fn new(tx: tokio::sync::mpsc::Sender<Piece>, budget: &ByteBudget) -> Self {
        Spool {
            tx,
            budget: budget.clone(),
        }
    }

    /// Queues `data` for the writer once there is room; false once the
    /// writer has stopped.
    pub(super) async fn send(&self, data: Bytes) -> bool {
        let room = self.budget.take(data.len()).await;
        self.tx.send((data, room)).await.is_ok()
    }
}

/// Starts the blocking thread that writes a session's spool from `offset`
/// on: the chunks are handed over by reference, not copied, and the
/// session's length says only what the file holds (the appender writes
/// around the page cache a megabyte at a time, so it may lag the pieces
/// received by up to that until the stream ends). Given a hasher, the
/// thread also hashes what the spool keeps before `offset` and every chunk
/// after it, and returns it. Pieces wait
/// within `budget`, shared by all uploads.
pub(super) fn spool_writer(
    session: &Arc<Session>,
    offset: u64,
    mut hasher: Option<crate::digest::Hasher>,
    budget: &ByteBudget,
) -> (
    Spool,
    tokio::task::JoinHandle<std::io::Result<Option<crate::digest::Hasher>>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(16);
    let session = session.clone();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&session.path)?;
        file.set_len(offset)?;
        if let Some(h) = &mut hasher {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = offset;
            while left > 0 {
                let n = file.read(&mut buf[..left.min(1 << 20) as usize])?;
                if n == 0 {
                    return Err(std::io::Error::other(
                        "the upload spool is shorter than it was",
                    ));
                }
                h.update(&buf[..n]);
                left -= n as u64;
            }
        }
        session.len.store(offset, Ordering::SeqCst);
        let mut file = Appender::new(file, offset)?;
        // Each piece's room in the budget is given back once it is in the
        // appender's buffer or the file.
        while let Some((chunk, _room)) = rx.blocking_recv() {
            let held = file.append(&chunk)?;
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            session.len.store(held, Ordering::SeqCst);
        }
        session.len.store(file.finish()?, Ordering::SeqCst);
        Ok(hasher)
    });
    (Spool::new(tx, budget), writer)
}
