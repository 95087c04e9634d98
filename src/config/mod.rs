//! Kiln's YAML configuration: plain serde types, parsed without side effects,
//! then [`Config::validate`] reports every problem at once with its YAML path.
//! One builder ([`crate::store::build`], [`crate::app`]) turns it into objects.
//!
//! No secrets live here: the file can sit in a Kubernetes ConfigMap.

mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use units::{ByteSize, Duration};

/// The configuration `kiln serve` runs with when given no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.yaml");

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address. Default `127.0.0.1:50051`; `--listen` overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// HTTP listen address for `/metrics` (and, later, build-event pages).
    /// Default `127.0.0.1:8080`; `--http-listen` overrides it.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Where relative `fs` store paths live. Default `./kiln-data`;
    /// `--data-dir` overrides it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// How long a graceful stop waits for in-flight calls. Default `10s`.
    #[serde(default = "default_grace_period")]
    pub grace_period: Duration,
    /// Largest gRPC message kiln accepts or sends. Default `16MiB`; it must
    /// exceed every instance's `max_batch_total_size` plus framing.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// gRPC server behaviour: reflection, compression, shutdown.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// TLS for the gRPC listener (and mTLS with `client_ca`). Default: off.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// OpenTelemetry traces. Default: off.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Who may call, and what they may do.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Per-identity request and byte rates, and a global in-flight limit.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The Build Event Service and its database.
    #[serde(default)]
    pub build_events: BuildEventsConfig,
    /// Named stores, shared by reference (`ref: NAME`) between instances.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// The instances this server serves, chosen by `instance_name`.
    pub instances: Vec<InstanceConfig>,
}

/// `grpc:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Serve grpc.reflection.v1 (for grpcurl and friends). Default true.
    #[serde(default = "yes")]
    pub reflection: bool,
    /// Compress responses: `none`, `gzip` or `zstd` (only to clients that
    /// accept it). Requests in gzip and zstd are always accepted. Default none.
    #[serde(default)]
    pub send_compression: SendCompression,
    /// On stop, how long to report NOT_SERVING (gRPC health, `/healthz`)
    /// before refusing new calls, so load balancers drain the pod. Default 0s.
    #[serde(default = "zero")]
    pub shutdown_delay: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("grpc defaults parse")
    }
}

/// gRPC response compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SendCompression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

/// `tracing:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of the collector, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: String,
    /// `service.name` of kiln's spans. Default `kiln`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a client's sampled
    /// `traceparent` is always followed. Default 1.0.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
}

/// `auth:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (the default: every call allowed) or `jwt`.
    #[serde(default)]
    pub method: AuthMethod,
    /// JWT verification (with `method: jwt`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Static API tokens (hashed), accepted beside or instead of JWTs.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The claim holding roles. Default `roles`.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Instances anyone may use without credentials.
    #[serde(default)]
    pub open_instances: Vec<String>,
    /// Per-instance caps: only these roles can be exercised on the instance.
    #[serde(default)]
    pub instance_roles: BTreeMap<String, Vec<String>>,
    /// The instance whose rules govern build-event publishing and queries
    /// (the Build Event Service has no instance name). Default `""`.
    #[serde(default)]
    pub build_events_instance: String,
}

/// How callers authenticate.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// No authentication (unless `tokens_file` is set).
    #[default]
    None,
    /// Bearer JWTs.
    Jwt,
}

/// `auth.jwt:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms: HS256, HS384, HS512, RS256, ES256. Default HS256.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Environment variable holding the HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// JWKS file with public keys (RS256, ES256).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL with public keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often JWKS keys are re-read (BuildGrid's auth_jwks_fetch_minutes).
    /// Default `60m`.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
    /// Required `aud`, if any.
    #[serde(default)]
    pub audience: Option<String>,
    /// Required `iss`, if any.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// `limits:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls per second per identity (subject, else peer address); bursts of
    /// up to this many. Default: unlimited.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// Request bytes per second per identity. Default: unlimited.
    #[serde(default)]
    pub bytes_per_second: Option<ByteSize>,
    /// Calls served at once by the whole server; beyond it calls are shed
    /// with RESOURCE_EXHAUSTED instead of queueing. Default: unlimited.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

/// `tls:` settings (BuildGrid's server_cert / server_key / client_certs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `build_events:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildEventsConfig {
    /// Database URL: `sqlite:FILE` (relative to the data dir) or
    /// `postgres://...` for many pods. Default `sqlite:build-events.db`.
    #[serde(default = "default_bes_database")]
    pub database: String,
    /// An environment variable holding the database URL instead (so a
    /// PostgreSQL password stays out of the file). Default: none.
    #[serde(default)]
    pub database_env: Option<String>,
    /// Events accepted per invocation. Default 1000000.
    #[serde(default = "default_max_events")]
    pub max_events_per_invocation: u64,
    /// Largest single event. Default `8MiB`.
    #[serde(default = "default_max_event_size")]
    pub max_event_size: ByteSize,
    /// URLs that receive each finished invocation's JSON summary by POST.
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// First wait before a failed webhook delivery is retried; it doubles on
    /// each of up to 6 attempts. Default `1s`.
    #[serde(default = "default_webhook_backoff")]
    pub webhook_backoff: Duration,
}

impl Default for BuildEventsConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("build_events defaults parse")
    }
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable, the default) or `json` (one object per line,
    /// for log collectors).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `kiln=debug`; `RUST_LOG` wins when
    /// set. Default `info`.
    #[serde(default)]
    pub level: Option<String>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One node of a store graph: a backend, a layer over another node, or a
/// reference to a named store.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreConfig {
    /// Blobs in process memory (lost on restart).
    Memory(MemoryConfig),
    /// Blobs as files on local disk (durable).
    Fs(FsConfig),
    /// A memory tier over another store.
    MemoryCache(MemoryCacheConfig),
    /// Blobs in an S3-compatible bucket (durable, shared by all pods).
    S3(S3Config),
    /// Remembers which blobs the inner store holds, for a TTL.
    ExistenceCache(ExistenceCacheConfig),
    /// The store of that name under `stores:`.
    #[serde(rename = "ref")]
    Ref(String),
}

impl StoreConfig {
    /// The config key of this node's kind, used in paths, logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory(_) => "memory",
            StoreConfig::Fs(_) => "fs",
            StoreConfig::MemoryCache(_) => "memory_cache",
            StoreConfig::S3(_) => "s3",
            StoreConfig::ExistenceCache(_) => "existence_cache",
            StoreConfig::Ref(_) => "ref",
        }
    }
}

/// `memory:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Byte budget; least recently used blobs go first beyond it.
    pub max_size: ByteSize,
}

/// `fs:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// Directory of the store; relative paths are under the data dir.
    pub path: PathBuf,
}

/// `memory_cache:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryCacheConfig {
    /// Byte budget of the tier.
    pub max_size: ByteSize,
    /// Larger blobs bypass the tier. Default `1MiB`.
    #[serde(default = "default_max_blob_size")]
    pub max_blob_size: ByteSize,
    /// The slower store behind the tier.
    pub inner: Box<StoreConfig>,
}

/// `s3:` settings. Credentials come from the standard AWS chain
/// (environment, profile, web identity for IRSA), never from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket; it must exist.
    pub bucket: String,
    /// Endpoint URL for S3-compatible servers (e.g. `http://minio:9000`);
    /// default: AWS for `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix, e.g. `cas/`; the CAS and the action cache need different
    /// prefixes when they share a bucket. Default empty.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and
    /// SeaweedFS want. Default false.
    #[serde(default)]
    pub path_style: bool,
    /// Blobs at least this large are uploaded in parts. Default `16MiB`.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    /// Size of each part (at least 5MiB, S3's minimum). Default `8MiB`.
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// HEADs in flight per FindMissingBlobs, and parts in flight per upload
    /// (at most 8). Default 32.
    #[serde(default = "default_s3_concurrency")]
    pub concurrency: usize,
    /// Create-if-absent writes (`If-None-Match: *`) in a CAS; turn off for
    /// servers that lack conditional writes. Default true.
    #[serde(default = "yes")]
    pub conditional_writes: bool,
    /// Time limit of one attempt of one S3 call. Default `30s`.
    #[serde(default = "default_s3_timeout")]
    pub timeout: Duration,
    /// Attempts per S3 call, with exponential backoff. Default 3.
    #[serde(default = "default_s3_attempts")]
    pub max_attempts: u32,
    /// When a blob older than this is read, copy it onto itself so that a
    /// lifecycle expiry rule counts it as new. Default: off.
    #[serde(default)]
    pub refresh_after: Option<Duration>,
}

/// `existence_cache:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExistenceCacheConfig {
    /// How long a "present" answer is trusted; keep it well below any
    /// expiry of the inner store. Default `10m`.
    #[serde(default = "default_existence_ttl")]
    pub ttl: Duration,
    /// Digests remembered at most. Default 1000000 (about 100 MiB).
    #[serde(default = "default_existence_entries")]
    pub max_entries: u64,
    /// The store whose contents are remembered.
    pub inner: Box<StoreConfig>,
}

/// One REAPI instance: its stores and behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The `instance_name` clients send; `""` is the default instance.
    pub name: String,
    /// The content-addressable store. The builder always adds verification
    /// at its root.
    pub cas: StoreConfig,
    /// The action cache: ActionResults keyed by action digest.
    pub action_cache: StoreConfig,
    /// Refuse every write (uploads and action results) with
    /// PERMISSION_DENIED. Default false.
    #[serde(default)]
    pub read_only: bool,
    /// Answer NOT_FOUND for action results whose outputs are no longer all in
    /// the CAS, so clients rebuild instead of failing later. Default true.
    #[serde(default = "yes")]
    pub completeness_check: bool,
    /// Largest total of a BatchUpdateBlobs / BatchReadBlobs. Default `4MiB`.
    #[serde(default = "default_max_batch")]
    pub max_batch_total_size: ByteSize,
    /// ByteStream read chunk size. Default `1MiB`.
    #[serde(default = "default_chunk")]
    pub read_chunk_size: ByteSize,
    /// Make a ByteStream write of a blob that already exists run to the end
    /// instead of returning early (BuildGrid's option). Default false.
    #[serde(default)]
    pub disable_overwrite_early_return: bool,
    /// GetTree: directories fetched in parallel per level. Default 32.
    #[serde(default = "default_tree_concurrency")]
    pub tree_read_concurrency: usize,
    /// GetTree's cache of complete trees.
    #[serde(default)]
    pub tree_cache: TreeCacheConfig,
}

/// `tree_cache:` settings (BuildGrid's tree_cache_size / tree_cache_ttl_minutes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeCacheConfig {
    /// Byte budget for cached trees (their encoded size). Default `64MiB`;
    /// `0` disables the cache.
    #[serde(default = "default_tree_cache_size")]
    pub max_size: ByteSize,
    /// How long a cached tree is served before it is walked again, so that
    /// blobs expiring underneath are noticed. Default `60m`.
    #[serde(default = "default_tree_cache_ttl")]
    pub ttl: Duration,
}

impl Default for TreeCacheConfig {
    fn default() -> Self {
        TreeCacheConfig {
            max_size: default_tree_cache_size(),
            ttl: default_tree_cache_ttl(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_bes_database() -> String {
    "sqlite:build-events.db".into()
}
fn default_max_events() -> u64 {
    1_000_000
}
fn default_max_event_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_webhook_backoff() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}
fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_grace_period() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}
fn default_max_message_size() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_blob_size() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_max_batch() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_chunk() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_tree_concurrency() -> usize {
    32
}
fn default_tree_cache_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_tree_cache_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_multipart_threshold() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_s3_concurrency() -> usize {
    32
}
fn default_s3_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}
fn default_s3_attempts() -> u32 {
    3
}
fn default_existence_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}
fn default_existence_entries() -> u64 {
    1_000_000
}
fn default_service_name() -> String {
    "kiln".into()
}
fn default_sampling_ratio() -> f64 {
    1.0
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}
fn default_jwks_refresh() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}
fn zero() -> Duration {
    Duration(std::time::Duration::ZERO)
}
fn yes() -> bool {
    true
}

impl Config {
    /// Parses YAML text; the error names the line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses a file, then validates it; every error is returned.
    pub fn load(path: &Path) -> Result<Config, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let config = Config::parse(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT).expect("the embedded default config parses")
    }

    /// Checks everything parsing cannot; returns every problem, each prefixed
    /// with its YAML path (e.g. `instances[0].cas.ref`).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let errors = validate::errors(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
