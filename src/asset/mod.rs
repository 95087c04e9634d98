//! The Remote Asset API's domain: resolve (uris, qualifiers) to content in
//! the CAS, downloading from origin (within the egress policy) when nothing
//! cached answers, and remember pushed associations.
//!
//! What a fetch or push resolved to is an [`AssetRecord`] in the instance's
//! action-cache store (durable, shared by every pod), one per URI, keyed by
//! the URI and the content-identifying qualifiers; a FetchBlob with a
//! `sha256` checksum is also answered by the CAS itself when it holds that
//! hash. Downloads stream into a spool file hashed on the way (never whole
//! in memory), are verified against every checksum asked for before they
//! are stored, and are adopted by a CAS on the same disk without a copy.

pub(crate) mod archive;
#[cfg(test)]
mod archive_tests;
mod archive_tree;
mod download;
mod egress;
mod qualifiers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message;

use crate::config::RemoteAssetConfig;
use crate::digest::{Digest, DigestFunction, HashKey};
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::proto::asset::Qualifier;
use crate::proto::kiln_v1::AssetRecord;
use crate::store::VerifiedFile;

pub(crate) use qualifiers::Qualifiers;
use qualifiers::Sri;

/// What is fetched: a blob, or an archive unpacked into a Directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Blob,
    Directory,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Directory => "directory",
        }
    }
}

/// A Fetch request, decoded.
#[derive(Debug)]
pub(crate) struct Fetch<'a> {
    pub(crate) kind: Kind,
    pub(crate) function: DigestFunction,
    pub(crate) uris: &'a [String],
    pub(crate) qualifiers: &'a [Qualifier],
    /// `oldest_content_accepted`, in ms since the epoch.
    pub(crate) oldest_ms: Option<i64>,
    pub(crate) timeout: Option<Duration>,
    /// The caller may cause a download (the `write` role); without it only
    /// cached assets answer.
    pub(crate) may_download: bool,
    /// Who the download counts against (token subject, else address).
    pub(crate) caller: String,
}

/// How a fetch ended: the URI it concerns and the content or the error.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) uri: String,
    pub(crate) result: Result<Digest>,
}

/// A Push request, decoded.
#[derive(Debug)]
pub(crate) struct Push<'a> {
    pub(crate) kind: Kind,
    pub(crate) uris: &'a [String],
    pub(crate) qualifiers: &'a [Qualifier],
    pub(crate) digest: Digest,
    pub(crate) references_blobs: Vec<Digest>,
    pub(crate) references_directories: Vec<Digest>,
    pub(crate) expire_at: Option<prost_types::Timestamp>,
}

/// The Remote Asset service's shared state.
#[derive(Debug)]
pub(crate) struct Assets {
    downloader: download::Downloader,
    /// Each caller's share of the downloader.
    quotas: moka::sync::Cache<String, Arc<download::Quota>>,
    max_downloads_per_caller: usize,
    max_spool_per_caller: u64,
    limits: archive::Limits,
    spool_dir: PathBuf,
}

impl Assets {
    /// Builds the downloader from config; `spool_dir` (emptied here) holds
    /// downloads and large unpacked files until the CAS takes them.
    pub(crate) fn new(config: &RemoteAssetConfig, spool_dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(spool_dir);
        std::fs::create_dir_all(spool_dir)
            .map_err(|e| Error::io(format!("creating {}", spool_dir.display()), e))?;
        Ok(Assets {
            downloader: download::Downloader::new(config, spool_dir)?,
            quotas: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            max_downloads_per_caller: config.max_downloads_per_caller,
            max_spool_per_caller: config.max_spool_per_caller.0,
            limits: archive::Limits {
                max_entries: config.max_archive_entries,
                max_bytes: config.max_unpacked_size.0,
                // Set per instance when an archive is unpacked.
                max_directory: u64::MAX,
            },
            spool_dir: spool_dir.to_path_buf(),
        })
    }

    /// Resolves a Fetch. An `Err` is a malformed request; what went wrong
    /// with origin is in the [`Outcome`], with the URI it concerns.
    pub(crate) async fn fetch(&self, instance: &Instance, req: Fetch<'_>) -> Result<Outcome> {
        check_qualifier_count(req.qualifiers)?;
        let q = qualifiers::parse(req.qualifiers, req.kind == Kind::Directory)?;
        let urls = parse_uris(req.uris)?;
        if let Some(found) = self.cached(instance, &req, &q).await? {
            return Ok(found);
        }
        if !req.may_download {
            return Ok(Outcome {
                uri: req.uris[0].clone(),
                result: Err(Error::PermissionDenied(
                    "the asset is not cached, and downloading it needs the write role".into(),
                )),
            });
        }
        // One caller's downloads wait their turn (within the request's
        // timeout), so no caller can take the downloader to itself.
        let quota = self.quotas.get_with(req.caller.clone(), || {
            Arc::new(download::Quota::new(
                self.max_downloads_per_caller,
                self.max_spool_per_caller,
            ))
        });
        let wait = req.timeout.unwrap_or(Duration::from_secs(600));
        let _turn = match tokio::time::timeout(wait, quota.downloads.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Ok(Outcome {
                    uri: req.uris[0].clone(),
                    result: Err(Error::exhausted(format!(
                        "this caller already runs remote_asset.max_downloads_per_caller ({}) downloads",
                        self.max_downloads_per_caller
                    ))),
                });
            }
        };
        let mut last = None;
        for (i, url) in urls.iter().enumerate() {
            let headers = q.headers_for(i, url.as_str());
            let result = self
                .fetch_one(instance, &req, &q, url, &headers, &quota)
                .await;
            match result {
                Ok(digest) => {
                    // Recorded for the URI that served it: the ones that
                    // failed may not hold it at all.
                    let served = std::slice::from_ref(&req.uris[i]);
                    store_records(instance, req.kind, served, &q.identity, digest, None).await?;
                    return Ok(Outcome {
                        uri: req.uris[i].clone(),
                        result: Ok(digest),
                    });
                }
                Err(e) => {
                    tracing::info!(uri = %url, error = %e, "remote asset fetch failed");
                    last = Some(Outcome {
                        uri: req.uris[i].clone(),
                        result: Err(e),
                    });
                }
            }
        }
        Ok(last.expect("at least one URI"))
    }

    /// Downloads one URL and stores it (a blob) or its unpacked tree.
    async fn fetch_one(
        &self,
        instance: &Instance,
        req: &Fetch<'_>,
        q: &Qualifiers,
        url: &url::Url,
        headers: &[(String, String)],
        quota: &download::Quota,
    ) -> Result<Digest> {
        let file = self
            .downloader
            .get(url, headers, req.timeout, req.function, &q.sri, quota)
            .await?;
        // Whatever becomes of this call (the client may go away), the spool
        // file does not outlive it.
        let _spool = download::Spool(Some(file.path().to_path_buf()));
        match req.kind {
            Kind::Blob => store_file(instance.cas.as_ref(), file).await,
            Kind::Directory => {
                let path = file.path().to_path_buf();
                let unpacked = self
                    .unpack(instance, req.function, &path, q.directory.clone())
                    .await;
                let _ = tokio::fs::remove_file(&path).await;
                unpacked
            }
        }
    }

    /// Unpacks the archive at `path` into the CAS on a blocking thread.
    async fn unpack(
        &self,
        instance: &Instance,
        function: DigestFunction,
        path: &Path,
        subdirectory: Option<String>,
    ) -> Result<Digest> {
        let cas = instance.cas.clone();
        let handle = tokio::runtime::Handle::current();
        let limits = archive::Limits {
            max_directory: instance.settings.max_parsed_blob,
            ..self.limits
        };
        let (path, spool) = (path.to_path_buf(), self.spool_dir.clone());
        // Set when this call is dropped (the client went away): the
        // blocking unpack stops at its next read or entry.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut sink = |digest: Digest, content: archive::Content| -> Result<()> {
                match content {
                    archive::Content::Bytes(bytes) => {
                        handle.block_on(cas.put(&digest, bytes.into()))
                    }
                    archive::Content::File(file) => {
                        handle.block_on(store_file(cas.as_ref(), file)).map(|_| ())
                    }
                }
            };
            archive::unpack(
                &path,
                function,
                limits,
                &spool,
                subdirectory.as_deref(),
                &stop,
                &mut sink,
            )
        })
        .await?
    }

    /// An answer from what is stored: the CAS by checksum (blobs), else a
    /// record for any of the URIs whose content is still all there.
    async fn cached(
        &self,
        instance: &Instance,
        req: &Fetch<'_>,
        q: &Qualifiers,
    ) -> Result<Option<Outcome>> {
        if req.kind == Kind::Blob && req.function == DigestFunction::Sha256 {
            for sri in q
                .sri
                .iter()
                .filter(|s| s.algorithm == qualifiers::SriAlgorithm::Sha256)
            {
                let Ok(hash) = <[u8; 32]>::try_from(sri.expected.as_slice()) else {
                    continue;
                };
                let key = HashKey {
                    function: DigestFunction::Sha256,
                    hash,
                };
                if let Some(digest) = instance.cas.resolve(&key).await? {
                    return Ok(Some(Outcome {
                        uri: req.uris[0].clone(),
                        result: Ok(digest),
                    }));
                }
            }
        }
        let now = crate::time::now_ms();
        let ms = |t: &prost_types::Timestamp| crate::time::saturating_ms(t.seconds, t.nanos);
        for uri in req.uris {
            let key = record_key(req.kind, req.function, uri, &q.identity);
            let bytes = match crate::store::get_bytes(instance.action_cache.as_ref(), &key).await {
                Ok(b) => b,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let Ok(record) = AssetRecord::decode(bytes) else {
                continue;
            };
            let created = record.created.as_ref().map(ms).unwrap_or(0);
            if req.oldest_ms.is_some_and(|oldest| created < oldest) {
                continue;
            }
            if record.expire_at.as_ref().map(ms).is_some_and(|t| t <= now) {
                continue;
            }
            let Ok(digest) = Digest::from_proto(req.function, record.digest.as_ref(), "asset")
            else {
                continue;
            };
            // A record is only an answer if its content has the checksum
            // asked for, whoever wrote it.
            if req.kind == Kind::Blob
                && !q.sri.is_empty()
                && !checksums(instance, digest, &q.sri).await?.any
            {
                tracing::warn!(uri = %uri, %digest, "a remote asset record's content lacks the checksum asked for; ignored");
                continue;
            }
            if self.present(instance, req.kind, digest).await? {
                return Ok(Some(Outcome {
                    uri: uri.clone(),
                    result: Ok(digest),
                }));
            }
        }
        Ok(None)
    }

    /// Whether the blob, or the whole tree under a root Directory, is in
    /// the CAS (an evicted part makes a record no answer).
    async fn present(&self, instance: &Instance, kind: Kind, digest: Digest) -> Result<bool> {
        let cas = instance.cas.as_ref();
        if kind == Kind::Blob {
            return Ok(cas.find_missing(&[digest]).await?.is_empty());
        }
        let walk = crate::tree::complete_directories(cas, digest, instance.settings.walk);
        let Some(directories) = walk.await? else {
            return Ok(false);
        };
        let mut files = Vec::new();
        for f in directories.iter().flat_map(|d| &d.files) {
            files.push(Digest::from_proto(
                digest.function,
                f.digest.as_ref(),
                "file",
            )?);
        }
        Ok(cas.find_missing(&files).await?.is_empty())
    }

    /// Records a pushed association, once its content is in the CAS.
    pub(crate) async fn push(&self, instance: &Instance, req: Push<'_>) -> Result<()> {
        parse_uris(req.uris)?;
        check_qualifier_count(req.qualifiers)?;
        let mut blobs = req.references_blobs.clone();
        if req.kind == Kind::Blob {
            blobs.push(req.digest);
        }
        let missing = instance.cas.find_missing(&blobs).await?;
        if !missing.is_empty() {
            return Err(Error::MissingBlobs(missing));
        }
        // A pushed blob must have every checksum its qualifiers name, or a
        // later Fetch asking for that checksum would get other bytes.
        let sri = qualifiers::pushed_sri(req.qualifiers)?;
        if req.kind == Kind::Blob
            && !sri.is_empty()
            && !checksums(instance, req.digest, &sri).await?.all
        {
            return Err(Error::InvalidArgument(format!(
                "blob {} does not have every checksum its checksum.sri qualifiers name",
                req.digest
            )));
        }
        let mut roots = req.references_directories.clone();
        if req.kind == Kind::Directory {
            roots.push(req.digest);
        }
        for root in roots {
            if !self.present(instance, Kind::Directory, root).await? {
                return Err(Error::FailedPrecondition(format!(
                    "directory {root} is not wholly in the CAS: upload the tree before pushing it"
                )));
            }
        }
        let identity = qualifiers::pushed_identity(req.qualifiers);
        store_records(
            instance,
            req.kind,
            req.uris,
            &identity,
            req.digest,
            req.expire_at,
        )
        .await
    }
}

/// How a stored blob compares with a list of checksums.
struct Checked {
    /// It has at least one of them.
    any: bool,
    /// It has every one.
    all: bool,
}

/// Hashes the blob `digest` (streamed from the CAS) with each algorithm of
/// `sri` and compares.
async fn checksums(instance: &Instance, digest: Digest, sri: &[Sri]) -> Result<Checked> {
    use futures::StreamExt;
    let mut hashers = download::Hashers::new(digest.function, sri);
    match instance.cas.get(&digest, crate::store::Range::FULL).await? {
        crate::store::Body::Bytes(b) => hashers.update(&b),
        crate::store::Body::Stream(mut s) => {
            while let Some(chunk) = s.next().await {
                hashers.update(&chunk?);
            }
        }
    }
    let (_, actual) = hashers.finish();
    let has = |s: &Sri| actual.contains(s);
    Ok(Checked {
        any: sri.iter().any(has),
        all: sri.iter().all(has),
    })
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Hands a spool file to the CAS (which may adopt it) and removes what is
/// left of it; returns its digest.
async fn store_file(cas: &dyn crate::store::BlobStore, file: VerifiedFile) -> Result<Digest> {
    let digest = file.digest();
    let leftover = file.path().to_path_buf();
    let stored = cas.put_file(&digest, file).await;
    let _ = tokio::fs::remove_file(&leftover).await;
    stored.map(|()| digest)
}

async fn store_records(
    instance: &Instance,
    kind: Kind,
    uris: &[String],
    identity: &[(String, String)],
    digest: Digest,
    expire_at: Option<prost_types::Timestamp>,
) -> Result<()> {
    let record = AssetRecord {
        digest: Some(digest.to_proto()),
        created: Some(prost_types::Timestamp::from(SystemTime::now())),
        expire_at,
    };
    let bytes = Bytes::from(record.encode_to_vec());
    for uri in uris {
        let key = record_key(kind, digest.function, uri, identity);
        instance
            .action_cache
            .put(&key, bytes.clone().into())
            .await?;
    }
    Ok(())
}

/// The action-cache key of one URI's record: a hash of a preamble no
/// serialized Action starts with, the kind, the digest function, the URI
/// and the identifying qualifiers (length-prefixed, so no two requests
/// share a key).
fn record_key(
    kind: Kind,
    function: DigestFunction,
    uri: &str,
    identity: &[(String, String)],
) -> Digest {
    let mut text = Vec::new();
    let mut field = |s: &str| {
        text.extend_from_slice(&(s.len() as u64).to_le_bytes());
        text.extend_from_slice(s.as_bytes());
    };
    field("kiln-remote-asset-v1");
    field(kind.name());
    field(function.name());
    field(uri);
    for (name, value) in identity {
        field(name);
        field(value);
    }
    function.digest_of(&text)
}

/// Most URIs one request may name: each can cost a record lookup and a
/// download, so a request's work stays in proportion to a few mirrors.
const MAX_URIS: usize = 32;

/// Most qualifiers one request may carry.
const MAX_QUALIFIERS: usize = 64;

/// The request's URIs as URLs; none, too many, or one that does not parse
/// is INVALID_ARGUMENT.
fn parse_uris(uris: &[String]) -> Result<Vec<url::Url>> {
    if uris.is_empty() {
        return Err(Error::InvalidArgument(
            "uris: at least one URI is required".into(),
        ));
    }
    if uris.len() > MAX_URIS {
        return Err(Error::InvalidArgument(format!(
            "uris: expected at most {MAX_URIS}, got {}",
            uris.len()
        )));
    }
    uris.iter()
        .map(|u| {
            url::Url::parse(u)
                .map_err(|e| Error::InvalidArgument(format!("uri {u:?} is not a URL: {e}")))
        })
        .collect()
}

fn check_qualifier_count(qualifiers: &[Qualifier]) -> Result<()> {
    if qualifiers.len() > MAX_QUALIFIERS {
        return Err(Error::InvalidArgument(format!(
            "qualifiers: expected at most {MAX_QUALIFIERS}, got {}",
            qualifiers.len()
        )));
    }
    Ok(())
}

impl Qualifiers {
    /// The headers to send with the URI at `index`.
    fn headers_for(&self, index: usize, url: &str) -> Vec<(String, String)> {
        let mut out = self.headers.clone();
        if let Some(extra) = self.url_headers.get(&index) {
            out.extend(extra.iter().cloned());
        }
        if let Some(extra) = self.auth_headers.get(url) {
            out.extend(extra.iter().cloned());
        }
        out
    }
}
