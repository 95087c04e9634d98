//! How a put tells the upload it serves which start of the blob is stored
//! for good. The chunked layer stores a large blob chunk by chunk, each
//! chunk a blob of its own; an upload that breaks can then resume after the
//! last chunk stored, keeping only the bytes after it, instead of teeing
//! every byte into a spool file to replay.
//!
//! The report travels as a task-local rather than through every layer's
//! `put`: the layers between the upload and the chunked layer (the
//! verifying root, the instrumentation) await the put in the upload's own
//! task and need not know of it.

use std::future::Future;
use std::sync::Arc;

use crate::digest::Digest;

/// Told, in blob order, of each chunk of `blob` that is stored.
pub(crate) trait StoredPrefix: Send + Sync {
    /// `chunk`, the next piece of `blob` in order, is stored for good.
    fn stored(&self, blob: &Digest, chunk: &Digest);
}

tokio::task_local! {
    static LISTENER: Arc<dyn StoredPrefix>;
}

/// Runs `put` with `listener` told of the chunks it stores.
pub(crate) async fn reporting<F: Future>(listener: Arc<dyn StoredPrefix>, put: F) -> F::Output {
    LISTENER.scope(listener, put).await
}

/// Reports that `chunk`, the next piece of `blob`, is stored (a put that no
/// upload listens to reports to no one).
pub(crate) fn report(blob: &Digest, chunk: &Digest) {
    let _ = LISTENER.try_with(|l| l.stored(blob, chunk));
}
