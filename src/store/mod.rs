//! The storage abstraction every backend and layer implements.
//!
//! One three-method trait, [`BlobStore`], serves the CAS and the action cache
//! alike (AC values are serialized ActionResults keyed by action digest). A
//! layer is a `BlobStore` wrapping another; the builder in [`build`] stacks
//! them from config, so any topology is a YAML change, not a code change.

pub(crate) mod build;
pub(crate) mod chunk_list;
pub(crate) mod chunked;
pub(crate) mod chunked_layout;
pub(crate) mod content_addressed;
pub(crate) mod existence_cache;
pub(crate) mod fs;
mod fs_evict;
pub(crate) mod fs_index;
pub(crate) mod fs_segments;
pub(crate) mod fs_sync;
pub(crate) mod instrumented;
pub mod memory;
pub(crate) mod memory_cache;
pub(crate) mod merged_puts;
pub(crate) mod progress;
pub mod s3;
mod turns;

#[cfg(test)]
pub(crate) mod testing;

/// The store contract suite, public so that integration tests can run it over
/// backends that need a real server (S3).
#[doc(hidden)]
pub mod contract;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use crate::digest::{Digest, HashKey};
use crate::error::{Error, Result};

/// A shared handle to a store node; what instances and layers hold.
pub type Store = Arc<dyn BlobStore>;

/// A stream of chunks; an `Err` item aborts whatever consumes it.
pub type ChunkStream = BoxStream<'static, Result<Bytes>>;

/// Blob contents: whole bytes for small blobs (zero-copy through every layer),
/// a chunk stream for large ones (never whole in memory).
pub enum Body {
    /// The whole content.
    Bytes(Bytes),
    /// Content arriving in chunks.
    Stream(ChunkStream),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Body::Stream"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::Bytes(bytes)
    }
}

impl Body {
    /// Concatenates the body. Only for data known to be small (or for tests):
    /// it holds the whole content in memory.
    pub async fn collect(self) -> Result<Bytes> {
        match self {
            Body::Bytes(b) => Ok(b),
            Body::Stream(mut s) => {
                let Some(first) = s.next().await.transpose()? else {
                    return Ok(Bytes::new());
                };
                let Some(second) = s.next().await.transpose()? else {
                    return Ok(first);
                };
                let mut buf = BytesMut::with_capacity(first.len() + second.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&second);
                while let Some(chunk) = s.next().await.transpose()? {
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf.freeze())
            }
        }
    }

    /// Concatenates the body, failing with RESOURCE_EXHAUSTED as soon as it
    /// passes `max` bytes, so a stream of unknown length never grows a
    /// buffer beyond what the caller budgeted.
    pub async fn collect_max(self, max: u64) -> Result<Bytes> {
        self.collect_expecting(0, max).await
    }

    /// [`Body::collect_max`] into a buffer sized for the `expected` bytes
    /// (a digest's size) up front, so a large blob is not copied again each
    /// time a growing buffer doubles.
    pub async fn collect_expecting(self, expected: u64, max: u64) -> Result<Bytes> {
        let over = |n: u64| {
            Error::exhausted(format!(
                "value of at least {n} bytes is larger than the {max} bytes allowed here"
            ))
        };
        match self {
            Body::Bytes(b) if b.len() as u64 > max => Err(over(b.len() as u64)),
            Body::Bytes(b) => Ok(b),
            Body::Stream(mut s) => {
                let mut buf = BytesMut::with_capacity(expected.min(max) as usize);
                while let Some(chunk) = s.next().await.transpose()? {
                    let n = buf.len() as u64 + chunk.len() as u64;
                    if n > max {
                        return Err(over(n));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf.freeze())
            }
        }
    }

    /// The body as a stream of chunks, whatever its form.
    pub fn into_stream(self) -> ChunkStream {
        match self {
            Body::Bytes(b) => futures::stream::once(async move { Ok(b) }).boxed(),
            Body::Stream(s) => s,
        }
    }
}

/// A window of a blob: `offset` bytes skipped, at most `limit` bytes returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// Bytes to skip.
    pub offset: u64,
    /// At most this many bytes; `None` reads to the end.
    pub limit: Option<u64>,
}

impl Range {
    /// The whole blob.
    pub const FULL: Range = Range {
        offset: 0,
        limit: None,
    };

    /// The `[start, end)` bounds of this range in a blob of `len` bytes; an
    /// offset past the end is OUT_OF_RANGE (an offset equal to `len` is an
    /// empty read, as ByteStream allows).
    pub fn bounds(&self, len: u64) -> Result<(u64, u64)> {
        if self.offset > len {
            return Err(Error::OutOfRange(format!(
                "read offset {} is past the end of a {len}-byte blob",
                self.offset
            )));
        }
        let end = match self.limit {
            Some(limit) => self.offset.saturating_add(limit).min(len),
            None => len,
        };
        Ok((self.offset, end))
    }

    /// The slice of `bytes` this range selects (zero-copy).
    pub fn slice(&self, bytes: &Bytes) -> Result<Bytes> {
        let (start, end) = self.bounds(bytes.len() as u64)?;
        Ok(bytes.slice(start as usize..end as usize))
    }
}

/// A finished local file whose bytes were hashed to `digest` as they were
/// written: what a large ByteStream upload hands to the CAS, so that a store
/// on the same disk can adopt the file instead of writing it again.
#[derive(Debug)]
pub struct VerifiedFile {
    path: PathBuf,
    digest: Digest,
}

impl VerifiedFile {
    /// Vouches that the file at `path` holds exactly the bytes that hashed
    /// to `digest`: only code that hashed them itself may say so.
    pub(crate) fn hashed(path: PathBuf, digest: Digest) -> Self {
        VerifiedFile { path, digest }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What its bytes hashed to.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The file's bytes as a body, for stores that copy it.
    pub async fn into_body(self) -> Result<Body> {
        use futures::TryStreamExt;
        let context = format!("reading {}", self.path.display());
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| Error::io(&context, e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(move |e| Error::io(&context, e));
        Ok(Body::Stream(stream.boxed()))
    }
}

/// Where a large upload waits: chosen by the store that keeps the blob, so
/// no upload is written twice when once is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// A spool file on local disk, teed from the bytes streamed into the
    /// store's put (a remote store: S3).
    Spool,
    /// A spool file the store then adopts without copying it
    /// ([`BlobStore::put_file`]: a store on the same local disk).
    AdoptedFile,
    /// The chunks as they arrived, kept in memory: the store holds its
    /// blobs in memory anyway, so a file would only cost a copy.
    Memory,
    /// The chunks of the blob the store has stored (it reports them, in
    /// order, through [`progress`]) and, in memory, the bytes after them:
    /// a store that keeps large blobs as chunks (`chunked`).
    Chunks,
}

/// A key-value store of blobs addressed by digest.
///
/// Contract (checked for every implementation by the contract suite):
/// - `get` of an absent key is [`Error::NotFound`]; an offset past the end of
///   the stored value is [`Error::OutOfRange`].
/// - `put` commits only after the body ended without error: a stream that
///   yields `Err` aborts the put and leaves nothing visible. A put replaces any
///   value under the key (for CAS keys the content is identical anyway, so
///   concurrent writers of one blob are harmless).
/// - `find_missing` answers in the order asked, duplicates included.
#[async_trait]
pub trait BlobStore: fmt::Debug + Send + Sync + 'static {
    /// The digests this store does not hold.
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>>;
    /// A range of a blob; [`Error::NotFound`] when absent.
    async fn get(&self, digest: &Digest, range: Range) -> Result<Body>;
    /// `get`, filling no cache on the way when the store below serves as
    /// fast: a chunked layer's read of a large blob's chunks, which a
    /// memory tier over a local store passes by as it passes by a large
    /// blob stored whole (it would push the hot small blobs out, and copy
    /// every chunk into the tier). A tier that holds the blob still
    /// answers; over a remote store (S3) it keeps what it reads, which is
    /// what spares a hot large blob's GETs. Layers between forward it.
    async fn get_passing(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.get(digest, range).await
    }

    /// Whether this store answers from this machine (memory, local disk)
    /// rather than over a network: what a memory tier above it may skip
    /// keeping ([`BlobStore::get_passing`]). Layers forward it.
    fn is_local(&self) -> bool {
        false
    }
    /// Stores a blob; it is visible to `get` once this returns `Ok`.
    async fn put(&self, digest: &Digest, body: Body) -> Result<()>;

    /// The full digest of a key this store holds with `key`'s function and
    /// hash, whatever its size, or None. Bazel's HTTP cache names blobs and
    /// actions by hash alone; every backend answers from what it indexes
    /// anyway (a map lookup, one prefix listing on S3), and layers forward.
    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>>;

    /// Where a large upload of `digest` should wait until it is whole and
    /// verified, which is also what a broken upload resumes from; layers
    /// ask their inner store.
    fn staging(&self, _digest: &Digest) -> Staging {
        Staging::Spool
    }

    /// Stores a blob from a local file. The store may move the file away
    /// (adopt it); whatever is left at its path afterwards is the caller's.
    async fn put_file(&self, digest: &Digest, file: VerifiedFile) -> Result<()> {
        self.put(digest, file.into_body().await?).await
    }

    /// Stores a small blob unless the store holds it already; true when
    /// it was stored now. The chunked layer's put of each chunk: one call,
    /// so a backend that refuses overwrites by itself (S3's conditional
    /// PUT) stores a new chunk in one request instead of an existence
    /// check and a put. Layers between forward it.
    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        put_if_absent_by_looking(self, digest, body).await
    }

    /// Stores a small `value` under `key` and returns the value it
    /// replaced, if one was stored (and is at most `max_old` bytes): the
    /// action cache's write, which the insights set beside the result it
    /// replaces. One call, so a store can answer in one step (the memory
    /// store looks up beside its insert) rather than through a failed
    /// read's error and a second call through every layer. Not atomic:
    /// two writers of one key may both see the same old value.
    async fn swap(&self, key: &Digest, value: Bytes, max_old: u64) -> Result<Option<Bytes>> {
        swap_by_reading(self, key, value, max_old).await
    }

    /// The chunks a blob is stored as, when a chunked layer below stores
    /// it so (SplitBlob answers from them instead of reading the blob);
    /// layers forward.
    async fn stored_chunks(&self, _digest: &Digest) -> Result<Option<StoredChunks>> {
        Ok(None)
    }
}

/// `swap` as a read (a value that cannot be read counts as none) and a
/// put: what a store without a better way does.
pub(crate) async fn swap_by_reading<S: BlobStore + ?Sized>(
    store: &S,
    key: &Digest,
    value: Bytes,
    max_old: u64,
) -> Result<Option<Bytes>> {
    let old = match store.get(key, Range::FULL).await {
        Ok(body) => body.collect_max(max_old).await.ok(),
        Err(_) => None,
    };
    store.put(key, value.into()).await?;
    Ok(old)
}

/// `put_if_absent` in two steps, an existence check and a put: what a
/// store without a better way does.
pub(crate) async fn put_if_absent_by_looking<S: BlobStore + ?Sized>(
    store: &S,
    digest: &Digest,
    body: Body,
) -> Result<bool> {
    if store.find_missing(&[*digest]).await?.is_empty() {
        return Ok(false);
    }
    store.put(digest, body).await?;
    Ok(true)
}

/// A blob's chunks as a chunked layer stores them.
#[derive(Debug, Clone)]
pub struct StoredChunks {
    /// The chunking function and its two parameters, as
    /// [`crate::chunking::Chunker::params`] gives them.
    pub params: (crate::chunking::Function, u64, u64),
    /// The chunks, in order.
    pub chunks: Vec<Digest>,
}

/// Values up to this size are copied into an allocation of their own
/// before a memory store or tier keeps them (see [`owned`]).
const OWN_COPY_MAX: usize = 1 << 20;

/// `bytes` in an allocation of its own, for a value kept long. A blob of a
/// BatchUpdateBlobs request is a slice of the whole decoded request: kept
/// as it is, one 4 KiB entry would pin the 4 MiB buffer while the cache
/// counts 4 KiB, so the memory a tier really holds would be many times its
/// budget. Small values are copied (cheap); large ones come from streams
/// that were concatenated into buffers of their own size already.
pub(crate) fn owned(bytes: Bytes) -> Bytes {
    if bytes.len() <= OWN_COPY_MAX {
        Bytes::copy_from_slice(&bytes)
    } else {
        bytes
    }
}

/// Reads a whole value into memory: for small values such as Directory
/// messages and ActionResults.
pub async fn get_bytes(store: &dyn BlobStore, digest: &Digest) -> Result<Bytes> {
    store.get(digest, Range::FULL).await?.collect().await
}

/// Reads a whole CAS blob that kiln must parse (a Directory, Action,
/// Command or Tree), refusing one larger than `max` before reading a byte:
/// the size is the digest's, which the CAS guarantees.
pub async fn get_parsed_blob(store: &dyn BlobStore, digest: &Digest, max: u64) -> Result<Bytes> {
    if digest.size > max {
        return Err(Error::InvalidArgument(format!(
            "blob {digest} is too large to be read whole: expected at most {max} bytes, got {}",
            digest.size
        )));
    }
    store.get(digest, Range::FULL).await?.collect_max(max).await
}
