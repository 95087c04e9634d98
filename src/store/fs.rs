//! `FsStore`: blobs as files on local disk, the embedded default.
//!
//! Layout: `{root}/{function}/{hash[0..2]}/{hash}-{size}`, sharded so no
//! directory grows huge. A put writes a temp file under `{root}/tmp`, fsyncs
//! it, renames it into place and fsyncs the directory: a blob is either whole
//! or absent, and an acknowledged blob survives a crash.

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
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::contract;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let dir = tempfile::tempdir().unwrap();
        contract::run_all(Arc::new(FsStore::open(dir.path(), 64 << 10, true).unwrap())).await;
    }

    #[tokio::test]
    async fn survives_reopen_and_clears_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = contract::blob(7, 5000);
        let d = DigestFunction::Sha256.digest_of(&data);
        {
            let store = FsStore::open(dir.path(), 4096, true).unwrap();
            store.put(&d, data.clone().into()).await.unwrap();
            std::fs::write(store.tmp.join("leftover"), b"partial").unwrap();
        }
        let store = FsStore::open(dir.path(), 4096, true).unwrap();
        assert_eq!(crate::store::get_bytes(&store, &d).await.unwrap(), data);
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_dropped_put_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), 4096, true).unwrap();
        let d = DigestFunction::Sha256.digest_of(b"never finished");
        let first = futures::stream::iter([Ok(Bytes::from_static(b"never"))]);
        let body = Body::Stream(first.chain(futures::stream::pending()).boxed());
        {
            let put = store.put(&d, body);
            futures::pin_mut!(put);
            // Drive the put until its temp file exists, as a client reset
            // would find it (polled with a deadline, never a fixed wait).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_dir(&store.tmp).unwrap().count() == 0 {
                assert!(futures::poll!(put.as_mut()).is_pending());
                assert!(
                    std::time::Instant::now() < deadline,
                    "no temp file appeared"
                );
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 1);
        }
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_file_cut_short_while_streaming_ends_in_an_error() {
        let d = DigestFunction::Sha256.digest_of(b"0123456789");
        let short = futures::stream::iter([Ok(Bytes::from_static(b"01234"))]).boxed();
        let got: Vec<Result<Bytes>> = exactly(short, 10, d).collect().await;
        assert!(got[0].is_ok());
        assert!(
            matches!(got.last(), Some(Err(_))),
            "a short file must not end cleanly"
        );
        let whole = futures::stream::iter([Ok(Bytes::from_static(b"0123456789"))]).boxed();
        let got: Vec<Result<Bytes>> = exactly(whole, 10, d).collect().await;
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn action_cache_values_keep_their_own_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), 4096, false).unwrap();
        let key = DigestFunction::Sha256.digest_of(b"an action");
        store
            .put(
                &key,
                Bytes::from_static(b"a result of another length").into(),
            )
            .await
            .unwrap();
        assert_eq!(
            crate::store::get_bytes(&store, &key).await.unwrap(),
            "a result of another length"
        );
    }

    fn bounded(dir: &Path, max: u64, hard: u64, retention: std::time::Duration) -> FsStore {
        let limits = Limits {
            max_size: max,
            low_watermark: max / 10 * 9,
            hard_limit: hard,
            min_retention: retention,
        };
        FsStore::open_with(
            dir,
            FsOptions {
                read_chunk: 4096,
                content_addressed: true,
                limits: Some(limits),
                capacity: None,
            },
        )
        .unwrap()
    }

    /// Bytes of blob files on disk (temp files excluded).
    fn disk_usage(root: &Path) -> u64 {
        let mut total = 0;
        for f in DigestFunction::ALL {
            for shard in std::fs::read_dir(root.join(f.name())).unwrap().flatten() {
                for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
                    total += file.metadata().unwrap().len();
                }
            }
        }
        total
    }

    async fn settle(store: &FsStore, max: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.index.totals().0 > max || store.index.is_evicting() {
            assert!(
                std::time::Instant::now() < deadline,
                "eviction never caught up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bounded_store_keeps_to_its_size_and_its_hot_set() {
        let dir = tempfile::tempdir().unwrap();
        let (max, blob_size) = (100_000u64, 5_000usize);
        let store = bounded(dir.path(), max, max, std::time::Duration::ZERO);
        let hot: Vec<Bytes> = (0..3)
            .map(|i| contract::blob(1000 + i, blob_size))
            .collect();
        for b in &hot {
            let d = DigestFunction::Sha256.digest_of(b);
            store.put(&d, b.clone().into()).await.unwrap();
        }
        for i in 0..100u64 {
            let b = contract::blob(i, blob_size);
            store
                .put(&DigestFunction::Sha256.digest_of(&b), b.into())
                .await
                .unwrap();
            for h in &hot {
                let d = DigestFunction::Sha256.digest_of(h);
                assert_eq!(crate::store::get_bytes(&store, &d).await.unwrap(), *h);
            }
            settle(&store, max).await;
            assert!(
                disk_usage(dir.path()) <= max + blob_size as u64,
                "after put {i}"
            );
        }
        let hot_digests: Vec<Digest> = hot
            .iter()
            .map(|h| DigestFunction::Sha256.digest_of(h))
            .collect();
        assert!(
            store.find_missing(&hot_digests).await.unwrap().is_empty(),
            "the hot set stays"
        );
        assert_eq!(
            store.index.totals().0,
            disk_usage(dir.path()),
            "the index matches the files"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn confirmed_blobs_are_leased_until_the_hard_limit() {
        let dir = tempfile::tempdir().unwrap();
        let blob_size = 10_000usize;
        // Ten old blobs, written before the store opens (their mtime is
        // their last access): five will be confirmed, five not.
        let old: Vec<Bytes> = (0..10).map(|i| contract::blob(i, blob_size)).collect();
        {
            let store = FsStore::open(dir.path(), 4096, true).unwrap();
            for b in &old {
                store
                    .put(&DigestFunction::Sha256.digest_of(b), b.clone().into())
                    .await
                    .unwrap();
            }
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
            for b in &old {
                let path = store.path(&DigestFunction::Sha256.digest_of(b));
                std::fs::File::options()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_modified(past)
                    .unwrap();
            }
        }
        let retention = std::time::Duration::from_secs(3600);
        let store = bounded(dir.path(), 100_000, 200_000, retention);
        let digests: Vec<Digest> = old
            .iter()
            .map(|b| DigestFunction::Sha256.digest_of(b))
            .collect();
        assert!(store.find_missing(&digests[..5]).await.unwrap().is_empty());
        // Fill past max_size: the unconfirmed old ones go, the confirmed stay.
        for i in 0..6u64 {
            let b = contract::blob(100 + i, blob_size);
            store
                .put(&DigestFunction::Sha256.digest_of(&b), b.into())
                .await
                .unwrap();
        }
        // Over max_size but under the hard limit: the pass removes what is
        // not leased and keeps the rest.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.index.find_missing(&digests[5..]).len() < 5 || store.index.is_evicting() {
            assert!(
                std::time::Instant::now() < deadline,
                "the unconfirmed blobs stayed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let gone = store.index.find_missing(&digests);
        assert!(
            gone.iter().all(|d| digests[5..].contains(d)),
            "only unconfirmed blobs went: {gone:?}"
        );
        assert!(
            store.index.totals().0 > 100_000,
            "leased blobs kept above max_size"
        );
        assert!(!gone.is_empty());
        // Past the hard limit, leased blobs go too (counted as forced).
        for i in 0..20u64 {
            let b = contract::blob(200 + i, blob_size);
            store
                .put(&DigestFunction::Sha256.digest_of(&b), b.into())
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.index.totals().0 > 200_000 || store.index.is_evicting() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            !store.index.find_missing(&digests[..5]).is_empty(),
            "past the hard limit the oldest go"
        );
    }

    #[tokio::test]
    async fn a_reopened_store_rebuilds_its_index_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let n = 100_000u32;
        // Blob files laid out as the store lays them out (sizes only matter
        // to the index; content is not re-hashed at start).
        let started = std::time::Instant::now();
        let mut digests = Vec::new();
        {
            let store = FsStore::open(dir.path(), 4096, true).unwrap();
            for i in 0..n {
                let mut d = DigestFunction::Sha256.digest_of(&i.to_le_bytes());
                d.size = u64::from(i % 7);
                let path = store.path(&d);
                if let Err(e) = std::fs::write(&path, vec![0u8; d.size as usize]) {
                    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, vec![0u8; d.size as usize]).unwrap();
                }
                digests.push(d);
            }
        }
        let written = started.elapsed();
        let opened = std::time::Instant::now();
        let store = FsStore::open(dir.path(), 4096, true).unwrap();
        let took = opened.elapsed();
        println!("fs index: {n} blobs rebuilt in {took:?} (files written in {written:?})");
        let expected: u64 = digests.iter().map(|d| d.size).sum();
        assert_eq!(store.index.totals(), (expected, n as usize));
        assert!(store.find_missing(&digests).await.unwrap().is_empty());
    }
}
