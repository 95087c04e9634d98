//! Downloads for the Remote Asset API: one HTTP GET through the egress
//! policy (checked for the URL, each redirect and every address connected
//! to), streamed into a spool file on a blocking thread that hashes it with
//! the CAS's digest function and every checksum asked for, bounded in size
//! and time. Content whose checksum does not match is deleted, never stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::egress::{Egress, Resolver};
use super::qualifiers::{Sri, SriAlgorithm};
use crate::config::RemoteAssetConfig;
use crate::digest::DigestFunction;
use crate::error::{Error, Result};
use crate::store::VerifiedFile;

/// One caller's share of the downloader: downloads at once, and bytes
/// spooled at once.
#[derive(Debug)]
pub(crate) struct Quota {
    pub(crate) downloads: tokio::sync::Semaphore,
    spooled: std::sync::atomic::AtomicU64,
    max_spool: u64,
}

impl Quota {
    pub(crate) fn new(downloads: usize, max_spool: u64) -> Quota {
        Quota {
            downloads: tokio::sync::Semaphore::new(downloads.max(1)),
            spooled: std::sync::atomic::AtomicU64::new(0),
            max_spool,
        }
    }
}

/// Bytes a download holds against its caller's spool quota, given back
/// when it ends (stored or discarded).
struct Spooled<'q> {
    quota: &'q Quota,
    bytes: u64,
}

impl Spooled<'_> {
    fn add(&mut self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.bytes += n;
        self.quota.spooled.fetch_add(n, Ordering::Relaxed) + n <= self.quota.max_spool
    }
}

impl Drop for Spooled<'_> {
    fn drop(&mut self) {
        self.quota
            .spooled
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Downloader {
    egress: Arc<Egress>,
    client: reqwest::Client,
    max_size: u64,
    timeout: Duration,
    spool_dir: PathBuf,
}

/// The text of an error and its causes (reqwest's own message omits them,
/// and the egress policy's refusal is a cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Downloader {
    pub(crate) fn new(config: &RemoteAssetConfig, spool_dir: &Path) -> Result<Self> {
        let egress = Arc::new(Egress::from_config(config)?);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(egress.clone())))
            .redirect(egress.redirects())
            // A proxy would connect on kiln's behalf, past the resolver's
            // address check.
            .no_proxy()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("building the download client: {e}")))?;
        Ok(Downloader {
            egress,
            client,
            max_size: config.max_download_size.0,
            timeout: config.timeout.0,
            spool_dir: spool_dir.to_path_buf(),
        })
    }

    /// Downloads `url` into a spool file; the file's digest is the CAS's.
    /// Its bytes count against `quota` while it downloads.
    pub(crate) async fn get(
        &self,
        url: &url::Url,
        headers: &[(String, String)],
        timeout: Option<Duration>,
        function: DigestFunction,
        sri: &[Sri],
        quota: &Quota,
    ) -> Result<VerifiedFile> {
        self.egress.check(url)?;
        let limit = timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let spool = Spool(Some(
            self.spool_dir
                .join(uuid::Uuid::new_v4().simple().to_string()),
        ));
        let path = spool.0.clone().expect("set");
        let fetched = tokio::time::timeout(
            limit,
            self.stream(url, headers, &path, function, sri, quota),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::DeadlineExceeded(format!(
                "downloading {url} took longer than {limit:?}"
            )))
        });
        // On success the file is the caller's; on failure, or when this
        // future is dropped (the client cancelled), the guard removes it.
        if fetched.is_ok() {
            spool.keep();
        }
        fetched
    }

    async fn stream(
        &self,
        url: &url::Url,
        headers: &[(String, String)],
        path: &Path,
        function: DigestFunction,
        sri: &[Sri],
        quota: &Quota,
    ) -> Result<VerifiedFile> {
        let mut spooled = Spooled { quota, bytes: 0 };
        let mut request = self.client.get(url.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let failed = |e: reqwest::Error| {
            let text = chain(&e);
            let message = format!("GET {url}: {text}");
            if text.contains("egress policy") {
                Error::PermissionDenied(message)
            } else if e.is_timeout() {
                Error::DeadlineExceeded(message)
            } else {
                Error::Unavailable(message)
            }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        // Only a 200 is the URL's whole content: a 206 (a range), a 203 or
        // any other success is not recorded as what the URL serves.
        if status != reqwest::StatusCode::OK {
            let message = format!("GET {url}: the server answered {status}, not 200 OK");
            return Err(match status.as_u16() {
                404 | 410 => Error::NotFound(message),
                401 | 403 => Error::PermissionDenied(message),
                200..=299 => Error::FailedPrecondition(message),
                _ => Error::Unavailable(message),
            });
        }
        if let Some(len) = response.content_length()
            && len > self.max_size
        {
            return Err(too_large(url, len, self.max_size));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let mut hashers = Hashers::new(function, sri);
        let file_path = path.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<Hashers> {
            use std::io::Write;
            let mut file = std::fs::File::create(&file_path)?;
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
                hashers.update(&chunk);
            }
            // Not synced here: the store that takes the file makes it
            // durable (the fs store's commit round) or copies it.
            Ok(hashers)
        });
        let mut body = response.bytes_stream();
        let mut seen: u64 = 0;
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    seen += chunk.len() as u64;
                    if seen > self.max_size {
                        broke = Some(too_large(url, seen, self.max_size));
                        break;
                    }
                    if !spooled.add(chunk.len() as u64) {
                        broke = Some(Error::exhausted(format!(
                            "downloading {url}: this caller's downloads hold more than remote_asset.max_spool_per_caller ({} bytes) at once",
                            quota.max_spool
                        )));
                        break;
                    }
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    broke = Some(failed(e));
                    break;
                }
            }
        }
        drop(tx);
        let hashers = writer
            .await?
            .map_err(|e| Error::io("writing a download to its spool file", e))?;
        if let Some(e) = broke {
            return Err(e);
        }
        let (digest, actual) = hashers.finish();
        if !sri.is_empty() && !sri.iter().any(|s| actual.contains(s)) {
            let expected: Vec<String> = sri
                .iter()
                .map(|s| Sri::format(s.algorithm, &s.expected))
                .collect();
            let got: Vec<String> = actual
                .iter()
                .map(|s| Sri::format(s.algorithm, &s.expected))
                .collect();
            return Err(Error::Aborted(format!(
                "checksum mismatch for {url}: expected {}, got {}",
                expected.join(" or "),
                got.join(" ")
            )));
        }
        Ok(VerifiedFile::hashed(path.to_path_buf(), digest))
    }
}

/// A spool file removed when dropped, unless kept: a download whose
/// client went away leaves nothing behind.
pub(crate) struct Spool(pub(crate) Option<PathBuf>);

impl Spool {
    /// Hands the file over: it is no longer removed.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Synchronous: a drop cannot wait, and an unlink does not block long.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn too_large(url: &url::Url, seen: u64, max: u64) -> Error {
    Error::exhausted(format!(
        "{url} is larger than remote_asset.max_download_size ({seen} bytes or more, at most {max})"
    ))
}

/// The CAS digest and one SRI digest per algorithm asked for, fed together.
pub(crate) struct Hashers {
    cas: crate::digest::Hasher,
    sri: Vec<(SriAlgorithm, aws_lc_rs::digest::Context)>,
}

impl Hashers {
    pub(crate) fn new(function: DigestFunction, sri: &[Sri]) -> Self {
        let mut algorithms: Vec<SriAlgorithm> = sri.iter().map(|s| s.algorithm).collect();
        algorithms.sort_by_key(|a| a.name());
        algorithms.dedup();
        Hashers {
            // Downloads are hashed before their size is known: GITSHA1 is
            // refused for Remote Asset before anything is fetched.
            cas: function.hasher(0),
            sri: algorithms
                .into_iter()
                .map(|a| (a, aws_lc_rs::digest::Context::new(a.ring())))
                .collect(),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.cas.update(data);
        for (_, context) in &mut self.sri {
            context.update(data);
        }
    }

    pub(crate) fn finish(self) -> (crate::digest::Digest, Vec<Sri>) {
        let actual = self
            .sri
            .into_iter()
            .map(|(algorithm, context)| Sri {
                algorithm,
                expected: context.finish().as_ref().to_vec(),
            })
            .collect();
        (self.cas.finish(), actual)
    }
}
