//! The worker's CAS client: downloads into files (small blobs batched,
//! large ones streamed through ByteStream) and uploads of what is missing,
//! hashing everything it receives so a bad byte never reaches an action.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::Conn;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest, GetTreeRequest,
    batch_update_blobs_request,
};

/// Blobs up to this size travel in batches; larger ones through ByteStream.
const SMALL: u64 = 256 << 10;
/// Bytes per batch request: well under every server's 4 MiB default.
const BATCH_BYTES: u64 = 2 << 20;
/// ByteStream write chunk.
const CHUNK: usize = 1 << 20;

/// Where an upload's content comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// In memory (small encoded messages such as Trees).
    Bytes(bytes::Bytes),
    /// A file on disk.
    File(PathBuf),
    /// An output: a file beneath an exec root, opened only through it.
    Beneath(std::sync::Arc<super::outputs::Root>, PathBuf),
}

impl Source {
    /// Opens a file source for reading.
    pub(super) fn open(&self) -> Result<std::fs::File> {
        match self {
            Source::File(p) => {
                std::fs::File::open(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))
            }
            Source::Beneath(root, rel) => root.open_file(rel),
            Source::Bytes(_) => Err(Error::internal("opening an in-memory source")),
        }
    }
}

/// Tries of one CAS call while the server is unavailable: with the waits
/// between them (0.2 s doubling) a pod restart of a few seconds is ridden
/// out without failing the action that was already run.
const ATTEMPTS: u32 = 6;

/// Runs `call` again while it fails with UNAVAILABLE, up to [`ATTEMPTS`].
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut wait = std::time::Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(Error::Unavailable(why)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %why, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A CAS client bound to one instance and digest function.
#[derive(Clone)]
pub struct Cas {
    conn: Conn,
    instance: String,
    function: DigestFunction,
    splicing: Splicing,
}

/// The server's chunker for SpliceBlob, asked once per worker and shared
/// by its actions' clients (None inside: the server does not splice).
pub type Splicing =
    std::sync::Arc<tokio::sync::OnceCell<Option<std::sync::Arc<crate::chunking::Chunker>>>>;

pub(super) fn status(what: &str) -> impl Fn(tonic::Status) -> Error + '_ {
    move |s| match s.code() {
        tonic::Code::NotFound => Error::NotFound(format!("{what}: {}", s.message())),
        // A connection cut mid-stream (a pod killed behind the balancer)
        // surfaces as INTERNAL from the transport: as passing as the rest.
        tonic::Code::Unavailable
        | tonic::Code::Unknown
        | tonic::Code::Cancelled
        | tonic::Code::Internal => Error::Unavailable(format!("{what}: {}", s.message())),
        _ => Error::internal(format!("{what}: {:?}: {}", s.code(), s.message())),
    }
}

impl Cas {
    /// A client for `instance`, hashing with `function`.
    pub fn new(conn: Conn, instance: String, function: DigestFunction) -> Self {
        Cas {
            conn,
            instance,
            function,
            splicing: Splicing::default(),
        }
    }

    /// Shares the worker's answer to "does the server splice?".
    pub fn splicing(mut self, splicing: Splicing) -> Self {
        self.splicing = splicing;
        self
    }

    pub(super) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    /// The digest function in use.
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    fn resource(&self, digest: &Digest) -> String {
        let function = match self.function {
            DigestFunction::Sha256 => String::new(),
            f => format!("{}/", f.name()),
        };
        let prefix = if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        };
        format!(
            "{prefix}blobs/{function}{}/{}",
            digest.hash_hex(),
            digest.size
        )
    }

    /// One whole blob in memory (for small messages: Command, Action).
    pub async fn read(&self, digest: &Digest) -> Result<bytes::Bytes> {
        let mut blobs = self.read_batch(&[*digest]).await?;
        blobs
            .pop()
            .map(|(_, b)| b)
            .ok_or_else(|| Error::NotFound(format!("blob {digest}")))
    }

    async fn read_batch(&self, digests: &[Digest]) -> Result<Vec<(Digest, bytes::Bytes)>> {
        retrying("reading inputs", || self.read_batch_once(digests)).await
    }

    async fn read_batch_once(&self, digests: &[Digest]) -> Result<Vec<(Digest, bytes::Bytes)>> {
        let response = ContentAddressableStorageClient::new(self.conn.clone())
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: digests.iter().map(Digest::to_proto).collect(),
                acceptable_compressors: Vec::new(),
                digest_function: self.function.to_proto() as i32,
            })
            .await
            .map_err(status("reading inputs"))?
            .into_inner();
        let mut out = Vec::new();
        for r in response.responses {
            let digest = Digest::from_proto(self.function, r.digest.as_ref(), "blob")?;
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                let e = format!("blob {digest}: {}", s.message);
                return Err(if s.code == tonic::Code::NotFound as i32 {
                    Error::NotFound(e)
                } else {
                    Error::Unavailable(e)
                });
            }
            if self.function.digest_of(&r.data) != digest {
                return Err(Error::Unavailable(format!(
                    "blob {digest}: the server sent content with another digest"
                )));
            }
            out.push((digest, r.data));
        }
        Ok(out)
    }

    /// Writes each blob to its path (via a temporary file, renamed into
    /// place, so a concurrent reader never sees half a file).
    pub async fn download(&self, blobs: Vec<(Digest, PathBuf)>) -> Result<()> {
        let (small, large): (Vec<_>, Vec<_>) =
            blobs.into_iter().partition(|(d, _)| d.size <= SMALL);
        let mut batch: Vec<(Digest, PathBuf)> = Vec::new();
        let mut batch_bytes = 0;
        let mut batches = Vec::new();
        for (d, p) in small {
            if batch_bytes + d.size > BATCH_BYTES && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += d.size;
            batch.push((d, p));
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let small_jobs = futures::stream::iter(batches)
            .map(|batch| async move {
                let digests: Vec<Digest> = batch.iter().map(|(d, _)| *d).collect();
                let got = self.read_batch(&digests).await?;
                for (digest, data) in got {
                    for (_, path) in batch.iter().filter(|(d, _)| *d == digest) {
                        write_atomically(path, &data).await?;
                    }
                }
                Ok::<_, Error>(())
            })
            .buffer_unordered(4);
        let large_jobs = futures::stream::iter(large)
            .map(|(d, p)| async move { self.read_to_file(&d, &p).await })
            .buffer_unordered(4);
        let results: Vec<Result<()>> = small_jobs.chain(large_jobs).collect().await;
        results.into_iter().collect()
    }

    async fn read_to_file(&self, digest: &Digest, path: &Path) -> Result<()> {
        retrying("reading an input", || self.read_to_file_once(digest, path)).await
    }

    async fn read_to_file_once(&self, digest: &Digest, path: &Path) -> Result<()> {
        let mut stream = ByteStreamClient::new(self.conn.clone())
            .read(ReadRequest {
                resource_name: self.resource(digest),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .map_err(status("reading an input"))?
            .into_inner();
        let tmp = temp_path(path);
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let mut hasher = self.function.hasher(digest.size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(status("reading an input"))?;
            if hasher.len() + chunk.data.len() as u64 > digest.size {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Error::Unavailable(format!(
                    "blob {digest}: the server sent more than the {} bytes declared",
                    digest.size
                )));
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data)
                .await
                .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        }
        file.flush().await.map_err(|e| Error::io("flushing", e))?;
        if hasher.finish() != *digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::Unavailable(format!(
                "blob {digest}: the server sent content with another digest"
            )));
        }
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
    }

    /// Every directory of the tree under `root`, with its digest.
    pub async fn tree(&self, root: &Digest) -> Result<Vec<(Digest, bytes::Bytes)>> {
        if root.is_empty_blob() {
            // An empty input root: the empty Directory, no call needed.
            return Ok(vec![(*root, bytes::Bytes::new())]);
        }
        retrying("reading the input tree", || self.tree_once(root)).await
    }

    async fn tree_once(&self, root: &Digest) -> Result<Vec<(Digest, bytes::Bytes)>> {
        let mut stream = ContentAddressableStorageClient::new(self.conn.clone())
            .get_tree(GetTreeRequest {
                instance_name: self.instance.clone(),
                root_digest: Some(root.to_proto()),
                page_size: 0,
                page_token: String::new(),
                digest_function: self.function.to_proto() as i32,
            })
            .await
            .map_err(status("reading the input tree"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            for dir in page.map_err(status("reading the input tree"))?.directories {
                out.push((self.function.digest_of(&dir), dir));
            }
        }
        Ok(out)
    }

    /// Uploads those of `blobs` the server lacks.
    pub async fn upload(&self, mut blobs: Vec<(Digest, Source)>) -> Result<()> {
        // The empty blob is always present; asking costs a round trip.
        blobs.retain(|(d, _)| !d.is_empty_blob());
        if blobs.is_empty() {
            return Ok(());
        }
        let missing = self
            .missing(blobs.iter().map(|(d, _)| *d).collect())
            .await?;
        let mut seen = std::collections::HashSet::new();
        let todo: Vec<(Digest, Source)> = blobs
            .into_iter()
            .filter(|(d, _)| missing.contains(d) && seen.insert(*d))
            .collect();
        let (small, large): (Vec<_>, Vec<_>) = todo.into_iter().partition(|(d, _)| d.size <= SMALL);
        let mut requests = Vec::new();
        let mut batch_bytes = 0;
        for (digest, source) in small {
            if batch_bytes + digest.size > BATCH_BYTES && !requests.is_empty() {
                self.update_batch(std::mem::take(&mut requests)).await?;
                batch_bytes = 0;
            }
            batch_bytes += digest.size;
            requests.push(batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: read_source(&source).await?,
                compressor: 0,
            });
        }
        if !requests.is_empty() {
            self.update_batch(requests).await?;
        }
        for (digest, source) in large {
            if digest.size >= super::chunked::MIN_SIZE
                && !matches!(source, Source::Bytes(_))
                && let Some(chunker) = self
                    .splicing
                    .get_or_init(|| super::chunked::chunker(self))
                    .await
            {
                match super::chunked::upload(self, chunker, &digest, &source).await {
                    Ok(sent) => {
                        tracing::debug!(%digest, chunks_sent = sent, "output uploaded by chunks");
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(%digest, error = %e, "uploading by chunks failed; uploading whole");
                    }
                }
            }
            self.write(&digest, &source).await?;
        }
        Ok(())
    }

    /// Which of `digests` the server lacks.
    pub(super) async fn missing(
        &self,
        digests: Vec<Digest>,
    ) -> Result<std::collections::HashSet<Digest>> {
        let request = FindMissingBlobsRequest {
            instance_name: self.instance.clone(),
            blob_digests: digests.iter().map(|d| d.to_proto()).collect(),
            digest_function: self.function.to_proto() as i32,
        };
        let missing = retrying("uploading outputs", || async {
            ContentAddressableStorageClient::new(self.conn.clone())
                .find_missing_blobs(request.clone())
                .await
                .map_err(status("uploading outputs"))
        })
        .await?
        .into_inner()
        .missing_blob_digests;
        Ok(missing
            .iter()
            .map(|d| Digest::from_proto(self.function, Some(d), "missing blob"))
            .collect::<Result<_, _>>()?)
    }

    pub(super) async fn update_batch(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<()> {
        retrying("uploading outputs", || {
            self.update_batch_once(requests.clone())
        })
        .await
    }

    async fn update_batch_once(
        &self,
        requests: Vec<batch_update_blobs_request::Request>,
    ) -> Result<()> {
        let response = ContentAddressableStorageClient::new(self.conn.clone())
            .batch_update_blobs(BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests,
                digest_function: self.function.to_proto() as i32,
            })
            .await
            .map_err(status("uploading outputs"))?
            .into_inner();
        for r in response.responses {
            if let Some(s) = r.status.filter(|s| s.code != 0) {
                return Err(Error::Unavailable(format!(
                    "uploading an output: {}",
                    s.message
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn write(&self, digest: &Digest, source: &Source) -> Result<()> {
        retrying("uploading an output", || self.write_once(digest, source)).await
    }

    async fn write_once(&self, digest: &Digest, source: &Source) -> Result<()> {
        let resource = {
            let r = self.resource(digest);
            let (prefix, rest) = match r.find("blobs/") {
                Some(i) => r.split_at(i),
                None => ("", r.as_str()),
            };
            format!("{prefix}uploads/{}/{rest}", uuid::Uuid::new_v4())
        };
        let file = match source {
            Source::File(_) | Source::Beneath(..) => tokio::fs::File::from_std(source.open()?),
            Source::Bytes(b) => {
                // In messages of at most CHUNK bytes (a chunk of a large
                // output can be 4 MiB, a server's whole message limit).
                let mut requests = Vec::new();
                let mut at = 0;
                loop {
                    let end = (at + CHUNK).min(b.len());
                    requests.push(WriteRequest {
                        resource_name: if at == 0 {
                            resource.clone()
                        } else {
                            String::new()
                        },
                        write_offset: at as i64,
                        finish_write: end == b.len(),
                        data: b.slice(at..end),
                    });
                    if end == b.len() {
                        break;
                    }
                    at = end;
                }
                ByteStreamClient::new(self.conn.clone())
                    .write(futures::stream::iter(requests))
                    .await
                    .map_err(status("uploading an output"))?;
                return Ok(());
            }
        };
        // Streamed chunk by chunk; a final empty message at the end offset
        // finishes the write (a short or failed read makes the server refuse
        // the upload, as the size will not match).
        let size = digest.size as i64;
        let mut offset = 0i64;
        let mut name = Some(resource);
        let chunks = tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .map(move |data| {
                let request = WriteRequest {
                    resource_name: name.take().unwrap_or_default(),
                    write_offset: offset,
                    finish_write: false,
                    data,
                };
                offset += request.data.len() as i64;
                request
            });
        let finish = futures::stream::once(async move {
            WriteRequest {
                resource_name: String::new(),
                write_offset: size,
                finish_write: true,
                data: bytes::Bytes::new(),
            }
        });
        ByteStreamClient::new(self.conn.clone())
            .write(chunks.chain(finish))
            .await
            .map_err(status("uploading an output"))?;
        Ok(())
    }
}

async fn read_source(source: &Source) -> Result<bytes::Bytes> {
    match source {
        Source::Bytes(b) => Ok(b.clone()),
        Source::File(_) | Source::Beneath(..) => {
            let mut file = source.open()?;
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map(|_| bytes::Bytes::from(data))
                    .map_err(|e| Error::io("reading an output", e))
            })
            .await
            .map_err(|e| Error::internal(format!("reading an output: {e}")))?
        }
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", uuid::Uuid::new_v4()));
    path.with_file_name(name)
}

async fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    tokio::fs::write(&tmp, data)
        .await
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}
