//! `FsStore`: blobs as files on local disk, the embedded default.
//!
//! Layout: `{root}/{function}/{hash[0..2]}/{hash}-{size}`, sharded so no
//! directory grows huge. A put writes a temp file under `{root}/tmp`, fsyncs
//! it, renames it into place and fsyncs the directory: a blob is either whole
//! or absent, and an acknowledged blob survives a crash.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

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
}

impl FsStore {
    /// Opens (creating if needed) a store under `root`, clearing temp files
    /// that a crash may have left behind.
    pub fn open(
        root: impl Into<PathBuf>,
        read_chunk: usize,
        content_addressed: bool,
    ) -> Result<Self> {
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
        Ok(FsStore {
            root,
            tmp,
            read_chunk: read_chunk.max(4096),
            sized: content_addressed,
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hash = d.hash_hex();
        self.root
            .join(d.function.name())
            .join(&hash[..2])
            .join(format!("{hash}-{}", d.size))
    }

    fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }
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
fn put_whole(temp: &Path, dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let result = (|| {
        let mut f = std::fs::File::create(temp)?;
        f.write_all(data)?;
        f.sync_all()?;
        commit(temp, dest)
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
        // One blocking task per batch of stats: a stat of a cached dentry takes
        // microseconds, far less than a task hand-off per digest would.
        let batches: Vec<Vec<(Digest, PathBuf)>> = digests
            .chunks(256)
            .map(|c| c.iter().map(|d| (*d, self.path(d))).collect())
            .collect();
        let results: Vec<Vec<Digest>> = futures::stream::iter(batches)
            .map(|batch| {
                tokio::task::spawn_blocking(move || {
                    batch
                        .into_iter()
                        .filter(|(_, p)| !p.exists())
                        .map(|(d, _)| d)
                        .collect::<Vec<_>>()
                })
            })
            .buffered(4)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let path = self.path(digest);
        let not_found = |e: std::io::Error| Error::io(format!("blob {digest}"), e);
        let wanted = range.limit.unwrap_or(u64::MAX);
        if digest.size <= WHOLE_READ_MAX || wanted <= WHOLE_READ_MAX {
            let (d, sized) = (*digest, self.sized);
            let bytes = tokio::task::spawn_blocking(move || read_whole(&path, &d, sized, range))
                .await?
                .map_err(not_found)??;
            return Ok(Body::Bytes(bytes));
        }
        let mut file = tokio::fs::File::open(&path).await.map_err(not_found)?;
        let len = file.metadata().await.map_err(not_found)?.len();
        if self.sized && len != digest.size {
            return Err(damaged(&path, digest, len));
        }
        let (start, end) = range.bounds(len)?;
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
        match body {
            Body::Bytes(data) => {
                tokio::task::spawn_blocking(move || put_whole(&temp, &dest, &data))
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
                    while let Some(chunk) = stream.next().await {
                        file.write_all(&chunk?)
                            .await
                            .map_err(|e| Error::io(context(), e))?;
                    }
                    file.flush().await.map_err(|e| Error::io(context(), e))?;
                    let file = file.into_inner();
                    file.sync_all().await.map_err(|e| Error::io(context(), e))?;
                    drop(file);
                    let (t, d) = (temp.clone(), dest.clone());
                    tokio::task::spawn_blocking(move || commit(&t, &d))
                        .await?
                        .map_err(|e| Error::io(context(), e))
                }
                .await;
                if result.is_ok() {
                    guard.disarm();
                }
                result
            }
        }
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
}
