//! `FsStore`: blobs as files on local disk, the embedded default.
//!
//! Layout: `{root}/{function}/{hash[0..2]}/{hash}-{size}`, sharded so no
//! directory grows huge; a CAS keeps its small blobs in append-only segment
//! files instead (`fs_segments`), unless configured not to. A put writes a temp file under `{root}/tmp` and
//! hands it to the store's syncer (`fs_sync`), which makes it durable,
//! renames it into place and makes the rename durable, in rounds shared by
//! every put finishing at about the same time: a blob is either whole or
//! absent, and an acknowledged blob survives a crash. Every blob is in
//! the in-memory index (`fs_index`), which answers FindMissingBlobs and
//! drives eviction when the store has a `max_size`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::fs_evict::Evictor;
use super::fs_index::{Index, Limits, Loc, Place};
use super::fs_segments::{SMALL_MAX, Segments};
use super::fs_sync::Syncer;
use super::instrumented::CapacityMetrics;
use super::{BlobStore, Body, Range};
use crate::digest::{Digest, DigestFunction, HashKey};
use crate::error::{Error, Result};

/// Values up to this size are read whole; larger ones are streamed.
const WHOLE_READ_MAX: u64 = 256 << 10;

/// A durable store on a local directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
    tmp: PathBuf,
    read_chunk: usize,
    /// Values are content-addressed, so a file's length must equal its
    /// digest's size (an action cache's values have sizes of their own).
    sized: bool,
    /// Every blob on disk, with its size and last access.
    index: Arc<Index>,
    capacity: Option<CapacityMetrics>,
    /// Commits finished temp files durably, in rounds.
    syncer: Syncer,
    /// The device of the store's file system: files on it can be adopted.
    dev: u64,
    /// Where small blobs go, when the store keeps them in segments.
    segments: Option<Arc<Segments>>,
}

/// How an fs store is opened.
#[derive(Debug, Clone, Default)]
pub(crate) struct FsOptions {
    /// Size of the pieces large blobs are read in.
    pub read_chunk: usize,
    /// The store holds a CAS (file lengths are checked against digests).
    pub content_addressed: bool,
    /// Bounds on its size; `None` grows without bound.
    pub limits: Option<Limits>,
    /// Where evictions and the stored total are reported.
    pub capacity: Option<CapacityMetrics>,
    /// Small blobs of a CAS go into segment files (one process per
    /// directory).
    pub segments: bool,
}

impl FsStore {
    /// Opens (creating if needed) an unbounded store under `root`, clearing
    /// temp files that a crash may have left behind.
    #[cfg(test)]
    pub(crate) fn open(
        root: impl Into<PathBuf>,
        read_chunk: usize,
        content_addressed: bool,
    ) -> Result<Self> {
        Self::open_with(
            root,
            FsOptions {
                read_chunk,
                content_addressed,
                ..Default::default()
            },
        )
    }

    /// Opens a store with `options`: clears temp files, rebuilds the index
    /// by scanning the blobs, and evicts at once if it is over its limit.
    pub(crate) fn open_with(root: impl Into<PathBuf>, options: FsOptions) -> Result<Self> {
        let root = root.into();
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| Error::io(format!("clearing {}", tmp.display()), e))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        for f in DigestFunction::ALL {
            let dir = root.join(f.name());
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let index = Arc::new(Index::new(options.limits));
        let started = std::time::Instant::now();
        index
            .scan(&root, options.content_addressed)
            .map_err(|e| Error::io(format!("scanning {}", root.display()), e))?;
        let mut stale = std::collections::BTreeSet::new();
        let segments = if options.segments && options.content_addressed {
            let roll_at = super::fs_segments::segment_len_for(options.limits.map(|l| l.max_size));
            let (segments, found) = Segments::open(&root, roll_at)
                .map_err(|e| Error::io(format!("opening the segments of {}", root.display()), e))?;
            for f in found {
                let place = Place::Segment(f.loc);
                match index.insert_at(f.digest, f.digest.size, f.last_ms, place) {
                    // A copy in an older segment (a compaction cut short):
                    // that segment is compacted again below.
                    Some(Place::Segment(old)) => {
                        stale.insert(old.segment);
                    }
                    // A file of a blob that is also in a segment.
                    Some(Place::File) => {
                        let _ = std::fs::remove_file(blob_path(&root, &f.digest));
                    }
                    None => {}
                }
            }
            Some(Arc::new(segments))
        } else {
            None
        };
        let syncer = Syncer::start(&root, index.clone(), segments.clone())?;
        let dev = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&root)
                .map_err(|e| Error::io(format!("reading {}", root.display()), e))?
                .dev()
        };
        let store = FsStore {
            root,
            tmp,
            read_chunk: options.read_chunk.max(4096),
            sized: options.content_addressed,
            index,
            capacity: options.capacity,
            syncer,
            dev,
            segments,
        };
        store.report_start(started.elapsed());
        if !stale.is_empty() {
            store.evictor().compact(stale, i64::MIN);
        }
        if store.index.should_evict() {
            store.evictor().run();
        }
        Ok(store)
    }

    /// Logs what is stored, the limit and the disk's free space.
    fn report_start(&self, took: std::time::Duration) {
        let (bytes, blobs) = self.index.totals();
        let free = nix::sys::statvfs::statvfs(&self.root)
            .ok()
            .map(|v| v.blocks_available() * v.fragment_size());
        let max_size = self.index.limits().map(|l| l.max_size);
        tracing::info!(
            path = %self.root.display(),
            blobs,
            bytes,
            ?max_size,
            ?free,
            index_ms = took.as_millis() as u64,
            "fs store opened"
        );
        if let (Some(max), Some(free)) = (max_size, free)
            && max > bytes + free
        {
            tracing::warn!(
                path = %self.root.display(),
                max_size = max,
                free,
                "the store's max_size is larger than the disk can give it"
            );
        }
        if let Some(c) = &self.capacity {
            c.bytes.set(bytes as i64);
        }
    }

    fn evictor(&self) -> Evictor {
        Evictor {
            root: self.root.clone(),
            index: self.index.clone(),
            capacity: self.capacity.clone(),
            segments: self.segments.clone(),
        }
    }

    /// After a put: starts an eviction pass in the background if the store
    /// went over its limit.
    fn after_put(&self) {
        if let Some(c) = &self.capacity {
            c.bytes.set(self.index.totals().0 as i64);
        }
        if self.index.should_evict() {
            let evictor = self.evictor();
            tokio::task::spawn_blocking(move || evictor.run());
        }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        blob_path(&self.root, d)
    }

    fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Where a blob lives under `root`.
pub(super) fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    let hash = d.hash_hex();
    root.join(d.function.name())
        .join(&hash[..2])
        .join(format!("{hash}-{}", d.size))
}

/// Writes a streamed blob to its (unsynced) temp file; returns its length.
async fn write_stream(
    temp: &Path,
    mut stream: super::ChunkStream,
    context: &(dyn Fn() -> String + Sync),
) -> Result<u64> {
    let file = tokio::fs::File::create(temp)
        .await
        .map_err(|e| Error::io(context(), e))?;
    // Client chunks are often 16-64 KiB; batching them saves a
    // blocking-pool hand-off per chunk.
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io(context(), e))?;
    }
    file.flush().await.map_err(|e| Error::io(context(), e))?;
    Ok(len)
}

/// The error for a blob file whose length is not its digest's size (cut
/// short by a crash of the file system, or tampered with): it is removed
/// and reported absent, so clients upload it again instead of reading
/// wrong bytes.
fn damaged(path: &Path, digest: &Digest, len: u64) -> Error {
    tracing::error!(
        path = %path.display(),
        expected = digest.size,
        actual = len,
        "removing a damaged blob file"
    );
    let _ = std::fs::remove_file(path);
    Error::NotFound(format!(
        "blob {digest} not found (its file was damaged: expected {} bytes, found {len})",
        digest.size
    ))
}

/// Reads `[start, end)` of a file whole.
fn read_whole(
    path: &Path,
    digest: &Digest,
    sized: bool,
    range: Range,
) -> std::io::Result<std::result::Result<Bytes, Error>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if sized && len != digest.size {
        return Ok(Err(damaged(path, digest, len)));
    }
    let (start, end) = match range.bounds(len) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; (end - start) as usize];
    f.read_exact(&mut buf)?;
    Ok(Ok(buf.into()))
}

/// Passes a file's chunks through, ending in an error rather than a clean
/// end if the file yields fewer bytes than were checked at open (it was
/// truncated while being read): a reader never gets OK with short data.
fn exactly(stream: super::ChunkStream, expected: u64, digest: Digest) -> super::ChunkStream {
    // State: the file's stream, bytes seen so far, and whether it is over.
    futures::stream::unfold((stream, 0u64, false), move |(mut stream, seen, over)| async move {
        if over {
            return None;
        }
        match stream.next().await {
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                Some((Ok(chunk), (stream, seen, false)))
            }
            Some(Err(e)) => Some((Err(e), (stream, seen, true))),
            None if seen == expected => None,
            None => Some((
                Err(Error::internal(format!(
                    "blob {digest} was cut short while being read: expected {expected} bytes, got {seen}"
                ))),
                (stream, seen, true),
            )),
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for FsStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        // The index knows every file (it is rebuilt from them at start):
        // no syscall per digest, and each hit renews the blob's lease.
        Ok(self.index.find_missing(digests))
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        Ok(self.index.resolve(key))
    }

    async fn swap(
        &self,
        key: &Digest,
        value: bytes::Bytes,
        max_old: u64,
    ) -> Result<Option<bytes::Bytes>> {
        // The index knows the files this pod wrote or found at start: a key
        // it does not know (an action cache's fresh action, nearly every
        // write) is taken as new without a failed open on a blocking
        // thread. In a directory shared by pods, a result another pod wrote
        // since is therefore not set beside the new one (only the insights
        // read the replaced value); reads still look on disk.
        if self.index.contains(key) {
            return super::swap_by_reading(self, key, value, max_old).await;
        }
        self.put(key, value.into()).await?;
        Ok(None)
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        if let Some(segments) = &self.segments {
            // A compaction may move the blob between the lookup and the
            // read: the second lookup finds it at its new place.
            for _ in 0..2 {
                match self.index.locate(digest) {
                    Some(Place::Segment(loc)) => {
                        if let Some(bytes) = self.read_segment(segments, loc, digest).await? {
                            let (start, end) = range.bounds(bytes.len() as u64)?;
                            return Ok(Body::Bytes(bytes.slice(start as usize..end as usize)));
                        }
                    }
                    Some(Place::File) => break,
                    None => {
                        return Err(Error::NotFound(format!("blob {digest} not found")));
                    }
                }
            }
        }
        let path = self.path(digest);
        let not_found = |e: std::io::Error| Error::io(format!("blob {digest}"), e);
        let wanted = range.limit.unwrap_or(u64::MAX);
        if digest.size <= WHOLE_READ_MAX || wanted <= WHOLE_READ_MAX {
            let (d, sized) = (*digest, self.sized);
            let read = tokio::task::spawn_blocking(move || read_whole(&path, &d, sized, range))
                .await?
                .map_err(not_found)
                .and_then(|r| r);
            return match read {
                Ok(bytes) => {
                    self.index.touch(digest);
                    Ok(Body::Bytes(bytes))
                }
                Err(e) => {
                    if matches!(e, Error::NotFound(_)) {
                        self.index.remove(digest);
                    }
                    Err(e)
                }
            };
        }
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                self.index.remove(digest);
                return Err(not_found(e));
            }
        };
        let len = file.metadata().await.map_err(not_found)?.len();
        if self.sized && len != digest.size {
            self.index.remove(digest);
            return Err(damaged(&path, digest, len));
        }
        let (start, end) = range.bounds(len)?;
        self.index.touch(digest);
        file.seek(SeekFrom::Start(start)).await.map_err(not_found)?;
        let reader = file.take(end - start);
        let context = format!("reading blob {digest}");
        let stream = ReaderStream::with_capacity(reader, self.read_chunk)
            .map_err(move |e| Error::io(&context, e));
        Ok(Body::Stream(exactly(stream.boxed(), end - start, *digest)))
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        if self.segments.is_some() && digest.size <= SMALL_MAX {
            return self.put_small(digest, body).await;
        }
        let temp = self.temp_path();
        let context = || format!("storing blob {digest}");
        // Removes the temp file if this put fails or is dropped half-way
        // (the client reset the stream), not only at the next start.
        let guard = TempGuard(Some(temp.clone()));
        let dest = self.path(digest);
        let committed = match body {
            // The syncer writes the file in its next round.
            Body::Bytes(data) => {
                self.syncer
                    .commit_bytes(temp, dest, *digest, vec![data])
                    .await
            }
            // A chunk cut from an upload: its pieces are written as they
            // are (through the async file, each would be copied twice).
            Body::Stream(stream) if digest.size <= GATHER_MAX => {
                let pieces = gather(stream, digest).await?;
                self.syncer.commit_bytes(temp, dest, *digest, pieces).await
            }
            Body::Stream(stream) => {
                let len = write_stream(&temp, stream, &context).await?;
                self.syncer.commit(temp, dest, *digest, len).await
            }
        };
        committed.map_err(|e| Error::io(context(), e))?;
        guard.disarm();
        self.after_put();
        Ok(())
    }

    fn is_local(&self) -> bool {
        true
    }

    fn staging(&self, _: &Digest) -> super::Staging {
        super::Staging::AdoptedFile
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let context = || format!("storing blob {digest}");
        let meta = tokio::fs::metadata(file.path())
            .await
            .map_err(|e| Error::io(context(), e))?;
        // Only a file on the store's own file system can be renamed in.
        if meta.dev() != self.dev {
            return self.put(digest, file.into_body().await?).await;
        }
        if meta.len() != digest.size {
            return Err(Error::internal(format!(
                "the file for blob {digest} holds {} bytes",
                meta.len()
            )));
        }
        self.syncer
            .commit(
                file.path().to_path_buf(),
                self.path(digest),
                *digest,
                meta.len(),
            )
            .await
            .map_err(|e| Error::io(context(), e))?;
        self.after_put();
        Ok(())
    }
}

impl FsStore {
    /// Reads a record (in place when the page cache holds it, else on a
    /// blocking thread): None when its segment was
    /// compacted away meanwhile; a damaged record is forgotten and reported
    /// NOT_FOUND, so clients upload it again.
    async fn read_segment(
        &self,
        segments: &Arc<Segments>,
        loc: Loc,
        digest: &Digest,
    ) -> Result<Option<Bytes>> {
        let read = match segments.read_cached(loc, digest) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let (segments, d) = (segments.clone(), *digest);
                tokio::task::spawn_blocking(move || segments.read(loc, &d)).await?
            }
            other => other,
        };
        match read {
            Ok(found) => Ok(found),
            Err(e) => {
                tracing::error!(%digest, error = %e, "forgetting a damaged blob in a segment");
                self.index.remove(digest);
                if e.kind() == std::io::ErrorKind::InvalidData {
                    Err(Error::NotFound(format!(
                        "blob {digest} not found (its record was damaged)"
                    )))
                } else {
                    Err(Error::io(format!("reading blob {digest}"), e))
                }
            }
        }
    }

    /// A small blob goes into the current segment in the syncer's next
    /// round, unless it is stored already (content-addressed: the same
    /// bytes).
    async fn put_small(&self, digest: &Digest, body: Body) -> Result<()> {
        if self.index.contains(digest) {
            return Ok(());
        }
        let data = body.collect_expecting(digest.size, digest.size).await?;
        if data.len() as u64 != digest.size {
            return Err(Error::internal(format!(
                "blob {digest}: {} bytes given for a blob of {}",
                data.len(),
                digest.size
            )));
        }
        self.syncer
            .append(*digest, data)
            .await
            .map_err(|e| Error::io(format!("storing blob {digest}"), e))?;
        self.after_put();
        Ok(())
    }
}

/// Streamed blobs up to this size are gathered as their pieces and written
/// by the syncer (no copy), larger ones written through the async file.
const GATHER_MAX: u64 = 4 << 20;

/// The pieces of `stream`, refused past `digest`'s size.
async fn gather(mut stream: super::ChunkStream, digest: &Digest) -> Result<Vec<Bytes>> {
    let mut pieces = Vec::new();
    let mut len = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        len += piece.len() as u64;
        if len > digest.size {
            return Err(Error::InvalidArgument(format!(
                "blob {digest}: expected {} bytes, got at least {len}",
                digest.size
            )));
        }
        pieces.push(piece);
    }
    Ok(pieces)
}

/// Deletes a temp file when dropped, unless disarmed once it was renamed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
