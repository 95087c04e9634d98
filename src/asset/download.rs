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
    pub(crate) async fn get(
        &self,
        url: &url::Url,
        headers: &[(String, String)],
        timeout: Option<Duration>,
        function: DigestFunction,
        sri: &[Sri],
    ) -> Result<VerifiedFile> {
        self.egress.check(url)?;
        let limit = timeout.map_or(self.timeout, |t| t.min(self.timeout));
        let path = self
            .spool_dir
            .join(uuid::Uuid::new_v4().simple().to_string());
        let fetched = tokio::time::timeout(limit, self.stream(url, headers, &path, function, sri))
            .await
            .unwrap_or_else(|_| {
                Err(Error::DeadlineExceeded(format!(
                    "downloading {url} took longer than {limit:?}"
                )))
            });
        if fetched.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
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
    ) -> Result<VerifiedFile> {
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
        if !status.is_success() {
            let message = format!("GET {url}: the server answered {status}");
            return Err(match status.as_u16() {
                404 | 410 => Error::NotFound(message),
                401 | 403 => Error::PermissionDenied(message),
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

fn too_large(url: &url::Url, seen: u64, max: u64) -> Error {
    Error::exhausted(format!(
        "{url} is larger than remote_asset.max_download_size ({seen} bytes or more, at most {max})"
    ))
}

/// The CAS digest and one SRI digest per algorithm asked for, fed together.
struct Hashers {
    cas: crate::digest::Hasher,
    sri: Vec<(SriAlgorithm, aws_lc_rs::digest::Context)>,
}

impl Hashers {
    fn new(function: DigestFunction, sri: &[Sri]) -> Self {
        let mut algorithms: Vec<SriAlgorithm> = sri.iter().map(|s| s.algorithm).collect();
        algorithms.sort_by_key(|a| a.name());
        algorithms.dedup();
        Hashers {
            cas: function.hasher(),
            sri: algorithms
                .into_iter()
                .map(|a| (a, aws_lc_rs::digest::Context::new(a.ring())))
                .collect(),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.cas.update(data);
        for (_, context) in &mut self.sri {
            context.update(data);
        }
    }

    fn finish(self) -> (crate::digest::Digest, Vec<Sri>) {
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
