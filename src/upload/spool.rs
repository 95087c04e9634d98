//! The spool writer: a blocking thread per resumable upload that writes
//! (and, for a file the store adopts, hashes) the pieces an upload passes
//! it, each holding its room in the uploads' shared budget until written.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::sessions::Session;

/// Pieces for a spool writer, each with its room in the uploads' budget.
pub(super) type SpoolSender =
    tokio::sync::mpsc::Sender<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>)>;

/// Starts the blocking thread that writes a session's spool from `offset`
/// on: the chunks are handed over by reference, not copied, and the
/// session's length says only what the file holds. Given a hasher, the
/// thread also hashes what the spool keeps before `offset` (from the page
/// cache, usually) and every chunk after it, and returns it.
pub(super) fn spool_writer(
    session: &Arc<Session>,
    offset: u64,
    mut hasher: Option<crate::digest::Hasher>,
) -> (
    SpoolSender,
    tokio::task::JoinHandle<std::io::Result<Option<crate::digest::Hasher>>>,
) {
    let (tx, mut rx): (SpoolSender, _) = tokio::sync::mpsc::channel(16);
    let session = session.clone();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, Write};
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
        file.seek(std::io::SeekFrom::Start(offset))?;
        session.len.store(offset, Ordering::SeqCst);
        // Each piece's room in the budget is given back once it is written.
        while let Some((chunk, _room)) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            session.len.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        Ok(hasher)
    });
    (tx, writer)
}
