//! Shared helpers for the end-to-end tests: boot a real kiln on 127.0.0.1:0
//! from a YAML string and talk to it with generated clients.

#![allow(dead_code)]

pub mod bazel;
pub mod bes;
pub mod chunking;
pub mod exec;
pub mod origin;
pub mod otlp;
pub mod s3;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use kiln::app::RunningServer;
use kiln::config::Config;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

/// A memory-only single-instance config.
pub const MEMORY: &str = r#"
instances:
  - name: ""
    cas: { memory: { max_size: 512MiB } }
    action_cache: { memory: { max_size: 16MiB } }
"#;

/// The embedded default (disk under the data dir).
pub fn disk() -> String {
    kiln::config::EMBEDDED_DEFAULT.to_string()
}

/// A running server and its data directory.
pub struct Kiln {
    pub server: RunningServer,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Kiln {
    /// Starts kiln from `yaml` with a fresh temp data dir.
    pub async fn start(yaml: &str) -> Kiln {
        let tmp = tempfile::tempdir().unwrap();
        let mut k = Kiln::start_in(yaml, tmp.path()).await;
        k._tmp = Some(tmp);
        k
    }

    /// Starts kiln from `yaml` on an existing data dir (restart tests).
    pub async fn start_in(yaml: &str, data_dir: &Path) -> Kiln {
        Kiln::try_start_in(yaml, data_dir)
            .await
            .expect("kiln starts")
    }

    /// Starts kiln, or says why it could not.
    pub async fn try_start_in(yaml: &str, data_dir: &Path) -> Result<Kiln, kiln::error::Error> {
        let mut config = Config::parse(yaml).expect("test config parses");
        config.listen = "127.0.0.1:0".into();
        config.http_listen = "127.0.0.1:0".into();
        config.validate().expect("test config is valid");
        let server = kiln::app::start(config, data_dir.to_path_buf()).await?;
        let url = format!("http://{}", server.addr);
        Ok(Kiln {
            server,
            url,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        })
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel().await)
    }

    pub async fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel().await)
    }

    /// The server's answer to GetCapabilities for the default instance.
    pub async fn server_capabilities(&self) -> kiln::proto::reapi::ServerCapabilities {
        self.capabilities()
            .await
            .get_capabilities(kiln::proto::reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner()
    }
}

/// Deterministic pseudo-random bytes.
pub fn blob(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// A port nothing listens on right now, for a server started on it later
/// (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` ports free now, chosen below the kernel's ephemeral range: a port
/// taken from that range (bind to port 0) and released can be handed to
/// any outgoing connection before SeaweedFS binds it, which failed a CI run
/// ("Port allocation failed ... is not available").
pub fn free_ports(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (mut ports, mut held) = (Vec::new(), Vec::new());
    while ports.len() < n {
        let port = (10000 + uuid::Uuid::new_v4().as_u128() % u128::from(low - 10000)) as u16;
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports.push(port);
        }
    }
    ports
}

/// Fetches `/metrics` from a server's HTTP listener.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
}

/// Scrapes `/metrics` until `done` holds for it (within 20 s); returns the
/// scrape that satisfied it.
pub async fn wait_metrics(kiln: &Kiln, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape(kiln.server.http_addr).await;
        if done(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sums the samples of `metric` whose labels include every `label="value"`.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// BatchReadBlobs of one digest: its response entry (data and status).
pub async fn read_one(
    cas: &mut ContentAddressableStorageClient<Channel>,
    digest: &Digest,
) -> kiln::proto::reapi::batch_read_blobs_response::Response {
    let r = cas
        .batch_read_blobs(kiln::proto::reapi::BatchReadBlobsRequest {
            digests: vec![digest.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.responses.into_iter().next().unwrap()
}

/// QueryWriteStatus of an upload: (committed_size, complete), or its status.
pub async fn write_status(
    channel: Channel,
    resource_name: &str,
) -> Result<(i64, bool), tonic::Status> {
    let mut bs = ByteStreamClient::new(channel);
    let status = bs
        .query_write_status(kiln::proto::bytestream::QueryWriteStatusRequest {
            resource_name: resource_name.to_string(),
        })
        .await?
        .into_inner();
    Ok((status.committed_size, status.complete))
}

/// FindMissingBlobs: which of `digests` the server lacks.
pub async fn missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    digests: &[Digest],
) -> Vec<kiln::proto::reapi::Digest> {
    cas.find_missing_blobs(kiln::proto::reapi::FindMissingBlobsRequest {
        blob_digests: digests.iter().map(Digest::to_proto).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
}

/// A BatchUpdateBlobs request storing `blobs` under their SHA-256 digests.
pub fn upload_request(blobs: &[Bytes]) -> kiln::proto::reapi::BatchUpdateBlobsRequest {
    use kiln::proto::reapi::batch_update_blobs_request::Request;
    kiln::proto::reapi::BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|b| Request {
                digest: Some(sha(b).to_proto()),
                data: b.clone(),
                compressor: 0,
            })
            .collect(),
        ..Default::default()
    }
}

/// BuildGrid's `bgd` (Python, grpcio), installed by README's test command.
pub fn bgd() -> String {
    let path = std::env::var("KILN_BGD")
        .expect("KILN_BGD is not set: README's test command installs BuildGrid's bgd");
    assert!(
        std::path::Path::new(&path).exists(),
        "KILN_BGD={path} does not exist"
    );
    path
}

/// Starts `kiln serve` as a child process (for what is global per process,
/// such as the trace exporter) with `yaml` on free ports; returns the child,
/// its URL and a connected channel.
pub async fn spawn_kiln(yaml: &str, dir: &Path) -> (Spawned, String, Channel) {
    let cfg = dir.join("kiln.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    spawn_kiln_config(&cfg, dir, &[]).await
}

/// A `kiln serve` child process, killed and reaped when dropped: a test
/// that panics does not leave its server running (and holding the test
/// runner's output open).
pub struct Spawned(pub std::process::Child);

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kiln serve --config FILE` as a child process with extra
/// environment variables, as [`spawn_kiln`] does.
pub async fn spawn_kiln_config(
    cfg: &Path,
    dir: &Path,
    env: &[(&str, &str)],
) -> (Spawned, String, Channel) {
    let [port, http] = free_ports(2)[..] else {
        unreachable!("two ports")
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(cfg)
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--http-listen=127.0.0.1:{http}"))
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Spawned(child);
    let url = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let channel = loop {
        if let Ok(c) = Channel::from_shared(url.clone()).unwrap().connect().await {
            break c;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "kiln did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    (child, url, channel)
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An `application/x-www-form-urlencoded` body of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Writes a static tokens file (`auth.tokens_file`) in `dir` granting each
/// (token, roles, subject); returns its path.
pub fn tokens_file(dir: &Path, grants: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let text: String = grants
        .iter()
        .map(|(token, roles, subject)| {
            let hash = kiln::digest::DigestFunction::Sha256
                .digest_of(token.as_bytes())
                .hash_hex();
            format!("{hash} {roles} {subject}\n")
        })
        .collect();
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

/// The outputs of nondeterministic actions kiln's JSON API lists for
/// `query` (e.g. `?invocation=ID`).
pub async fn nondeterministic(kiln: &Kiln, query: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "http://{}/api/v1/nondeterminism{query}",
        kiln.server.http_addr
    );
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["outputs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("the API answered no outputs list: {v}"))
}
