//! ByteStream uploads: a client's Write stream becomes one verified store put,
//! and an interrupted upload of a large blob is kept so it can resume.
//!
//! Large identity uploads go to a spool file as they arrive. If the stream
//! breaks, the spool holds what arrived; QueryWriteStatus reports its length
//! and a Write at that offset continues it.
//!
//! The store decides where an upload waits ([`Staging`]). When the CAS
//! adopts files (a store on the same local disk, the embedded default), the
//! spool is the only write: it is hashed as it is written, off the async
//! threads, and once it is whole and verified the store renames it into
//! place. Other stores get the bytes streamed into a put as they arrive,
//! teed into the spool (S3) or, for a store in memory, into the session's
//! list of the chunks themselves (no copy). A store that keeps large blobs
//! as chunks (`chunked`) reports each chunk it stored: the session keeps
//! their digests and only the bytes after them, and no spool is written.
//! A resumed Write replays what was kept (stored chunks read back), then
//! the new data, into a fresh put. Either way the session is dropped once
//! the blob is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::compression::Decompressor;
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::proto::bytestream::WriteRequest;
use crate::resource::{Compressor, ResourceName};
use crate::store::{Body, ChunkStream, Staging};

mod direct;
mod incoming;
mod sessions;
mod spool;

use incoming::{Incoming, Tee};
use spool::{Spool, spool_writer};

use sessions::Session;
pub use sessions::Uploads;

/// Identity uploads at least this large are spooled so they can resume.
pub const SPOOL_MIN: u64 = 1 << 20;

/// The incoming messages of one Write call.
pub type Requests = BoxStream<'static, Result<WriteRequest, tonic::Status>>;

/// Runs one Write call: returns the `committed_size` to answer with.
pub async fn write(
    instance: &Instance,
    uploads: &Uploads,
    owner: &str,
    name: ResourceName,
    first: WriteRequest,
    rest: Requests,
) -> Result<i64> {
    instance.check_writable()?;
    let digest = name.digest;
    // Refused before a byte is received (or spooled).
    crate::store::content_addressed::check_blob_size(&digest, instance.settings.max_cas_blob_size)?;
    let compressed = name.compressor == Compressor::Zstd;
    if first.write_offset < 0 {
        return Err(Error::InvalidArgument(format!(
            "negative write_offset {}",
            first.write_offset
        )));
    }
    let early = if compressed { -1 } else { digest.size as i64 };
    if !instance.settings.disable_overwrite_early_return
        && instance.cas.find_missing(&[digest]).await?.is_empty()
    {
        uploads.remove(&name.upload_key());
        return Ok(early);
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut incoming = Incoming {
        first: Some(first),
        rest,
        resource: String::new(),
        next_offset: 0,
        finished: false,
        decoder: None,
        tee: None,
        received: received.clone(),
    };
    incoming.resource = incoming
        .first
        .as_ref()
        .map(|f| f.resource_name.clone())
        .unwrap_or_default();
    if compressed {
        if incoming.first.as_ref().is_some_and(|f| f.write_offset != 0) {
            return Err(Error::InvalidArgument(
                "resuming a compressed upload is not supported; start at offset 0".into(),
            ));
        }
        incoming.decoder = Some(Decompressor::new()?);
        instance
            .cas
            .put(&digest, Body::Stream(incoming.into_stream()))
            .await?;
        return Ok(received.load(Ordering::SeqCst) as i64);
    }
    if digest.size < SPOOL_MIN {
        require_offset(incoming.first.as_ref(), 0)?;
        instance
            .cas
            .put(&digest, Body::Stream(incoming.into_stream()))
            .await?;
        return Ok(digest.size as i64);
    }
    resumable(instance, uploads, owner, &name, incoming).await
}

fn require_offset(first: Option<&WriteRequest>, expected: u64) -> Result<()> {
    match first {
        Some(f) if f.write_offset as u64 != expected => Err(Error::InvalidArgument(format!(
            "write_offset {} does not continue this upload: {expected} bytes are committed (see QueryWriteStatus)",
            f.write_offset
        ))),
        _ => Ok(()),
    }
}

/// A large identity upload, teed into its session's spool file.
async fn resumable(
    instance: &Instance,
    uploads: &Uploads,
    owner: &str,
    name: &ResourceName,
    mut incoming: Incoming,
) -> Result<i64> {
    let key = name.upload_key();
    let session = uploads.session(&key, name.digest.size, owner)?;
    let _busy = session.busy.lock().await;
    let offset = incoming.first.as_ref().map_or(0, |f| f.write_offset as u64);
    let kept = session.len.load(Ordering::SeqCst);
    if offset != 0 {
        require_offset(incoming.first.as_ref(), kept)?;
    }
    match instance.cas.staging(&name.digest) {
        Staging::AdoptedFile => {
            return adopted(instance, uploads, &key, &session, name, offset, incoming).await;
        }
        Staging::Memory | Staging::Chunks => {
            return in_memory(instance, uploads, &key, &session, name, offset, incoming).await;
        }
        Staging::Spool => {}
    }
    let spool_err = |e| Error::io("upload spool", e);
    let (spool, writer) = spool_writer(&session, offset, None, &uploads.in_flight);
    let prefix: ChunkStream = if offset > 0 {
        let reader = tokio::fs::File::open(&session.path)
            .await
            .map_err(spool_err)?
            .take(offset);
        ReaderStream::with_capacity(reader, 1 << 20)
            .map_err(spool_err)
            .boxed()
    } else {
        futures::stream::empty().boxed()
    };
    incoming.next_offset = offset;
    incoming.tee = Some(Tee::Spool(spool));
    let body = prefix.chain(incoming.into_stream()).boxed();
    let stored = instance.cas.put(&name.digest, Body::Stream(body)).await;
    // The body (and with it the sender) is gone: the writer finishes what was
    // queued, so a resumed write finds every kept byte in the file.
    if let Ok(Err(e)) = writer.await {
        tracing::warn!(error = %e, "upload spool write failed; a resume will restart from the bytes kept");
    }
    settle(uploads, &key, name, stored)
}

/// A large upload kept resumable in memory: for a store in memory, the
/// chunks as they arrived (shared with the store's put, not copied); for a
/// store that keeps chunks, only the bytes after the chunks it reports
/// stored ([`Trimmer`]). A resumed Write replays the stored chunks (read
/// back), the kept bytes and then the new data into a fresh put.
async fn in_memory(
    instance: &Instance,
    uploads: &Uploads,
    key: &str,
    session: &Arc<Session>,
    name: &ResourceName,
    offset: u64,
    mut incoming: Incoming,
) -> Result<i64> {
    let (stored, tail) = {
        let mut kept = session.kept.lock().expect("session lock");
        if offset == 0 {
            kept.clear();
            session.len.store(0, Ordering::SeqCst);
        }
        (kept.stored.clone(), kept.tail.clone())
    };
    if !stored.is_empty() && !instance.cas.find_missing(&stored).await?.is_empty() {
        // Evicted since: what was kept no longer adds up to the offset.
        uploads.remove(key);
        return Err(Error::Unavailable(format!(
            "the first {offset} bytes kept of this upload are gone; start it again at offset 0"
        )));
    }
    let cas = instance.cas.clone();
    let replayed = futures::stream::iter(stored)
        .map(move |chunk| {
            let cas = cas.clone();
            async move {
                Ok::<_, Error>(
                    cas.get(&chunk, crate::store::Range::FULL)
                        .await?
                        .into_stream(),
                )
            }
        })
        .buffered(2)
        .try_flatten();
    incoming.next_offset = offset;
    incoming.tee = Some(Tee::Memory(session.clone()));
    let body = replayed
        .chain(futures::stream::iter(tail.into_iter().map(Ok)))
        .chain(incoming.into_stream())
        .boxed();
    let trimmer = Arc::new(Trimmer {
        session: session.clone(),
        blob: name.digest,
        next: std::sync::atomic::AtomicUsize::new(0),
    });
    let stored = crate::store::progress::reporting(
        trimmer,
        instance.cas.put(&name.digest, Body::Stream(body)),
    )
    .await;
    if stored.is_err() {
        // Kept for a resume: small chunks are slices of receive buffers
        // larger than themselves, so copy them together first, or the
        // session would hold more memory than it reserved.
        let mut kept = session.kept.lock().expect("session lock");
        if kept.broken {
            drop(kept);
            uploads.remove(key);
        } else {
            let mut gatherer = crate::store::chunk_list::Gatherer::new(name.digest.size);
            for chunk in kept.tail.drain(..) {
                gatherer.add(chunk);
            }
            kept.tail = gatherer.finish().into_chunks().into();
        }
    }
    settle(uploads, key, name, stored)
}

/// Keeps a session's stored chunks and the bytes after them in step with
/// what the store reports: each chunk stored moves its bytes from the tail
/// to the list. A resumed put reports the chunks it replays again, which
/// must be the ones listed (a cut of the same bytes is the same).
struct Trimmer {
    session: Arc<Session>,
    blob: crate::digest::Digest,
    /// The position of the next chunk reported.
    next: std::sync::atomic::AtomicUsize,
}

impl crate::store::progress::StoredPrefix for Trimmer {
    fn stored(&self, blob: &crate::digest::Digest, chunk: &crate::digest::Digest) {
        if *blob != self.blob {
            return;
        }
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let mut kept = self.session.kept.lock().expect("session lock");
        if kept.broken {
            return;
        }
        match kept.stored.get(i).map(|listed| listed == chunk) {
            Some(true) => {}
            None if i == kept.stored.len() && kept.advance(chunk.size) => kept.stored.push(*chunk),
            _ => {
                tracing::error!(blob = %self.blob, "an upload's stored chunks did not continue its list; it will restart");
                kept.broken = true;
            }
        }
    }
}

/// Ends an upload's session when the outcome makes it useless: the blob is
/// stored, or the content was wrong (resuming it cannot help); any other
/// error keeps it for a resume.
fn settle(uploads: &Uploads, key: &str, name: &ResourceName, outcome: Result<()>) -> Result<i64> {
    match outcome {
        Ok(()) => {
            uploads.remove(key);
            Ok(name.digest.size as i64)
        }
        Err(e @ Error::InvalidArgument(_)) => {
            uploads.remove(key);
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// A large upload written once: into the spool, hashed on the way, then
/// handed to a CAS that adopts the file.
async fn adopted(
    instance: &Instance,
    uploads: &Uploads,
    key: &str,
    session: &Arc<Session>,
    name: &ResourceName,
    offset: u64,
    mut incoming: Incoming,
) -> Result<i64> {
    let digest = name.digest;
    // Written and hashed on a blocking thread: the async workers only pass
    // the chunks along.
    let (spool, writer) = spool_writer(
        session,
        offset,
        Some(digest.function.hasher(digest.size)),
        &uploads.in_flight,
    );
    incoming.next_offset = offset;
    incoming.tee = Some(Tee::Spool(spool));
    let mut stream = incoming.into_stream();
    let mut len = offset;
    let received = loop {
        match stream.next().await {
            None => break Ok(len),
            Some(Err(e)) => break Err(e),
            Some(Ok(chunk)) => {
                len += chunk.len() as u64;
                if len > digest.size {
                    break Err(crate::store::content_addressed::too_long(&digest, len));
                }
            }
        }
    };
    // The stream (and with it the sender) is gone: the writer finishes what
    // was queued, so a resumed write finds every kept byte in the file.
    drop(stream);
    let hashed = writer.await?;
    if hashed.is_err() {
        // The spool could not be written (a full disk): what it holds
        // cannot be resumed from, and it must not keep the disk full.
        uploads.remove(key);
    }
    let outcome = match (received, hashed) {
        // A failed spool write (a full disk) is the cause of whatever the
        // stream then reported.
        (_, Err(e)) => Err(Error::io("upload spool", e)),
        (Err(e), _) => Err(e),
        (Ok(len), Ok(_)) if len != digest.size => Err(Error::InvalidArgument(format!(
            "blob {digest}: expected {} bytes, got {len}",
            digest.size
        ))),
        (Ok(_), Ok(hasher)) => {
            let actual = hasher.expect("the writer was given a hasher").finish();
            if actual != digest {
                Err(crate::store::content_addressed::mismatch(&digest, &actual))
            } else {
                let file = crate::store::VerifiedFile::hashed(session.path.clone(), actual);
                instance.cas.put_file(&digest, file).await
            }
        }
    };
    settle(uploads, key, name, outcome)
}
