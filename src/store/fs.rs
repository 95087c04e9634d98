//! `FsStore`: blobs as files on local disk, the embedded default.
//!
//! Layout: `{root}/{function}/{hash[0..2]}/{hash}-{size}`, sharded so no
//! directory grows huge. A put writes a temp file under `{root}/tmp`, fsyncs
//! it, renames it into place and fsyncs the directory: a blob is either whole
//! or absent, and an acknowledged blob survives a crash. Every blob is in
//! the in-memory index (`fs_index`), which answers FindMissingBlobs and
//! drives eviction when the store has a `max_size`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::fs_index::{Index, Limits};
use super::instrumented::CapacityMetrics;
use super::{BlobStore, Body, Range};
use crate::digest::{Digest, DigestFunction};
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
        let store = FsStore {
            root,
            tmp,
            read_chunk: options.read_chunk.max(4096),
            sized: options.content_addressed,
            index,
            capacity: options.capacity,
        };
        store.report_start(started.elapsed());
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
fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    let hash = d.hash_hex();
    root.join(d.function.name())
        .join(&hash[..2])
        .join(format!("{hash}-{}", d.size))
}

/// Deletes what the index chose, off the async threads.
struct Evictor {
    root: PathBuf,
    index: Arc<Index>,
    capacity: Option<CapacityMetrics>,
}

impl Evictor {
    fn run(self) {
        let started = std::time::Instant::now();
        let done = self
            .index
            .evict(|d| std::fs::remove_file(blob_path(&self.root, d)));
        tracing::info!(
            path = %self.root.display(),
            blobs = done.blobs,
            bytes = done.bytes,
            forced = done.forced,
            ms = started.elapsed().as_millis() as u64,
            "evicted least recently used blobs"
        );
        if let Some(c) = &self.capacity {
            c.record(&done, self.index.totals().0);
        }
    }
}

/// Moves a finished temp file of `len` bytes into place, makes the rename
/// durable and indexes the blob; waits first for an eviction deleting the
/// same digest's old file, so that deletion cannot hit the new one.
fn commit_indexed(
    temp: &Path,
    dest: &Path,
    index: &Index,
    digest: &Digest,
    len: u64,
) -> std::io::Result<()> {
    index.wait_not_evicting(digest);
    commit(temp, dest)?;
    index.insert(*digest, len);
    Ok(())
}

/// Moves a finished temp file into place and makes the rename durable.
fn commit(temp: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest.parent().expect("blob paths have a parent");
    if let Err(e) = std::fs::rename(temp, dest) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(dir)?;
        std::fs::rename(temp, dest)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `data` to a temp file and commits it, all on a blocking thread.
fn put_whole(
    temp: &Path,
    dest: &Path,
    data: &[u8],
    index: &Index,
    digest: &Digest,
) -> std::io::Result<()> {
    let result = (|| {
        let mut f = std::fs::File::create(temp)?;
        f.write_all(data)?;
        f.sync_all()?;
        commit_indexed(temp, dest, index, digest, data.len() as u64)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
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

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
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
        let temp = self.temp_path();
        let dest = self.path(digest);
        let context = || format!("storing blob {digest}");
        let (index, d) = (self.index.clone(), *digest);
        let stored = match body {
            Body::Bytes(data) => {
                tokio::task::spawn_blocking(move || put_whole(&temp, &dest, &data, &index, &d))
                    .await?
                    .map_err(|e| Error::io(context(), e))
            }
            Body::Stream(mut stream) => {
                // Removes the temp file if this put is dropped half-way (the
                // client reset the stream), not only at the next start.
                let guard = TempGuard(Some(temp.clone()));
                let result = async {
                    let file = tokio::fs::File::create(&temp)
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
                    let file = file.into_inner();
                    file.sync_all().await.map_err(|e| Error::io(context(), e))?;
                    drop(file);
                    let (t, dst) = (temp.clone(), dest.clone());
                    tokio::task::spawn_blocking(move || commit_indexed(&t, &dst, &index, &d, len))
                        .await?
                        .map_err(|e| Error::io(context(), e))
                }
                .await;
                if result.is_ok() {
                    guard.disarm();
                }
                result
            }
        };
        if stored.is_ok() {
            self.after_put();
        }
        stored
    }
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
