//! Kiln's YAML configuration: plain serde types, parsed without side effects,
//! then [`Config::validate`] reports every problem at once with its YAML path.
//! One builder ([`crate::store::build`], [`crate::app`]) turns it into objects.
//!
//! No secrets live here: the file can sit in a Kubernetes ConfigMap.

mod asset;
mod chunking;
mod edge;
mod http_cache;
mod http_server;
mod stores;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use asset::{AllowRule, RemoteAssetConfig};
pub use chunking::{ChunkingConfig, FastCdcConfig, RepMaxConfig};
pub use edge::{
    AuthConfig, AuthMethod, GrpcConfig, HttpAuth, JwtConfig, LimitsConfig, Role, SendCompression,
    TlsConfig, TracingConfig,
};
pub use http_cache::HttpCacheConfig;
pub use http_server::HttpServerConfig;
pub use stores::{
    ExistenceCacheConfig, FsConfig, MemoryCacheConfig, MemoryConfig, S3Config, StoreConfig,
};
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
    /// ByteStream upload spools (what makes large uploads resumable).
    #[serde(default)]
    pub uploads: UploadsConfig,
    /// The Build Event Service and its database.
    #[serde(default)]
    pub build_events: BuildEventsConfig,
    /// Bazel's HTTP cache protocol on the HTTP listener.
    #[serde(default)]
    pub http_cache: HttpCacheConfig,
    /// What kiln learns from the results it stores.
    #[serde(default)]
    pub insights: InsightsConfig,
    /// The HTTP listener's connection limits and timeouts.
    #[serde(default)]
    pub http: HttpServerConfig,
    /// The Remote Asset API and its egress policy.
    #[serde(default)]
    pub remote_asset: RemoteAssetConfig,
    /// Remote execution: the scheduler, its database and its timeouts.
    #[serde(default)]
    pub execution: ExecutionConfig,
    /// Named stores, shared by reference (`ref: NAME`) between instances.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// The instances this server serves, chosen by `instance_name`.
    pub instances: Vec<InstanceConfig>,
}

/// `insights:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightsConfig {
    /// Compare each action result written with the one it replaces and
    /// record the outputs of actions that are not deterministic. Costs a
    /// lookup beside each action-cache write. Default true.
    #[serde(default = "yes")]
    pub nondeterminism: bool,
    /// Explain cache misses: record each action whose result is written
    /// fresh beside the last action of the same target, mnemonic and
    /// outputs (in the background; each round's fingerprints as one row
    /// in the build-event database), and compare the two when the misses
    /// are read. Default true.
    #[serde(default = "yes")]
    pub misses: bool,
    /// Count each invocation's cache hits, misses, uploads and bytes (its
    /// scorecard, on its page). Default true.
    #[serde(default = "yes")]
    pub scorecards: bool,
    /// Run one in this many cache hits again on a worker (lowest priority,
    /// result not cached) and record the action as not deterministic if
    /// its outputs differ from the cached ones: finds nondeterminism
    /// without waiting for two clients to build the same action. Needs
    /// `execution.enabled`. 0 (the default) runs none.
    #[serde(default)]
    pub reexecute_one_in: u32,
    /// Re-executions queued or running at once, at most; hits sampled
    /// beyond it are skipped (counted as `busy`). Default 2.
    #[serde(default = "default_reexecute_max_running")]
    pub reexecute_max_running: u32,
}

fn default_reexecute_max_running() -> u32 {
    2
}

impl Default for InsightsConfig {
    fn default() -> Self {
        InsightsConfig {
            nondeterminism: true,
            misses: true,
            scorecards: true,
            reexecute_one_in: 0,
            reexecute_max_running: default_reexecute_max_running(),
        }
    }
}

/// `uploads:` settings: bounds on the spool files that keep interrupted
/// large uploads resumable. A new resumable upload reserves its declared
/// size; past a bound it is RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// Bytes all spools together may reserve. Default `8GiB`.
    #[serde(default = "default_max_spool")]
    pub max_spool: ByteSize,
    /// Bytes one identity's spools may reserve (all anonymous callers are
    /// one identity). Default `2GiB`.
    #[serde(default = "default_max_spool_per_identity")]
    pub max_spool_per_identity: ByteSize,
    /// Received bytes all uploads together may hold while they wait to be
    /// written to their spools (hashed and written on blocking threads);
    /// past it uploads wait, and so do their clients. Default `64MiB`.
    #[serde(default = "default_spool_in_flight")]
    pub spool_in_flight: ByteSize,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("uploads defaults parse")
    }
}

fn default_max_spool() -> ByteSize {
    ByteSize(8 << 30)
}

fn default_max_spool_per_identity() -> ByteSize {
    ByteSize(2 << 30)
}

fn default_spool_in_flight() -> ByteSize {
    ByteSize(64 << 20)
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
    /// Invocations (their summaries, events and streams) not updated for
    /// this long are deleted, a bounded batch at a time. Default `30d`.
    #[serde(default = "default_bes_retention")]
    pub retention: Duration,
}

fn default_bes_retention() -> Duration {
    secs(30 * 24 * 3600)
}

impl Default for BuildEventsConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("build_events defaults parse")
    }
}

/// `execution:` settings: the scheduler behind Execute, Operations and Bots.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Serve Execute, Operations and Bots, and advertise execution in
    /// Capabilities. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where jobs and operations live: `sqlite:FILE` (relative to the data
    /// dir), `postgres://...` (shared by many pods; may be the build events
    /// database) or `memory` (one process, lost on restart: for tests).
    /// Default `sqlite:scheduler.db`.
    #[serde(default = "default_exec_database")]
    pub database: String,
    /// An environment variable holding the database URL instead.
    #[serde(default)]
    pub database_env: Option<String>,
    /// An action no worker has taken after this long fails with
    /// FAILED_PRECONDITION (usually: no worker offers its platform). Default `30m`.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// Timeout of actions that set none. Default `15m`.
    #[serde(default = "default_action_timeout")]
    pub default_action_timeout: Duration,
    /// Cap on any action's timeout. Default `1h`.
    #[serde(default = "default_max_action_timeout")]
    pub max_action_timeout: Duration,
    /// A worker silent this long has lost its leases: their jobs are queued
    /// again for another worker. Default `30s`.
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: Duration,
    /// Runs per job before a job whose workers keep vanishing fails. Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How often waiters look at the database for changes made by other
    /// pods (changes made by this pod wake them at once). Default `250ms`.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// On PostgreSQL, pods announce job changes to each other (LISTEN /
    /// NOTIFY), so waiters on one pod hear of another's changes at once.
    /// Default true; false leaves them to polling alone.
    #[serde(default = "yes")]
    pub notifications: bool,
    /// How often waiters still poll while notifications are heard (a
    /// notification lost in a reconnect is caught by then). Default `5s`.
    #[serde(default = "default_notified_poll_interval")]
    pub notified_poll_interval: Duration,
    /// How long an idle worker's UpdateBotSession waits for work before
    /// returning empty. Default `10s`.
    #[serde(default = "default_bot_wait")]
    pub bot_wait: Duration,
    /// Finished operations stay queryable this long. Default `24h`.
    #[serde(default = "default_retention")]
    pub retention: Duration,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("execution defaults parse")
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
    /// Largest CAS blob accepted from any upload path, advertised to
    /// clients (REAPI 2.12's `max_cas_blob_size_bytes`) so they can refuse
    /// it before sending a byte. Default `0`: no limit.
    #[serde(default)]
    pub max_cas_blob_size: ByteSize,
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
    /// Largest total of the (distinct, encoded) Directory messages of one
    /// tree that GetTree, Execute or an action-cache check will read: a
    /// client chooses the root, so this bounds what one request can make
    /// kiln read and hold. Default `128MiB`.
    #[serde(default = "default_max_tree_size")]
    pub max_tree_size: ByteSize,
    /// Most digests one FindMissingBlobs may ask about; more is
    /// INVALID_ARGUMENT (clients split their queries). Default 200000 (a
    /// 16 MiB message holds about 230,000).
    #[serde(default = "default_max_find_missing")]
    pub max_find_missing: usize,
    /// REAPI 2.12's SplitBlob and SpliceBlob.
    #[serde(default)]
    pub chunking: ChunkingConfig,
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
fn default_exec_database() -> String {
    "sqlite:scheduler.db".into()
}
fn secs(n: u64) -> Duration {
    Duration(std::time::Duration::from_secs(n))
}
fn default_queue_timeout() -> Duration {
    secs(30 * 60)
}
fn default_action_timeout() -> Duration {
    secs(15 * 60)
}
fn default_max_action_timeout() -> Duration {
    secs(3600)
}
fn default_lease_timeout() -> Duration {
    secs(30)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_poll_interval() -> Duration {
    Duration(std::time::Duration::from_millis(250))
}
fn default_notified_poll_interval() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}
fn default_bot_wait() -> Duration {
    secs(10)
}
fn default_retention() -> Duration {
    secs(24 * 3600)
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
fn default_max_batch() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_chunk() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_tree_concurrency() -> usize {
    32
}
fn default_max_tree_size() -> ByteSize {
    ByteSize(128 << 20)
}
fn default_max_find_missing() -> usize {
    200_000
}
fn default_tree_cache_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_tree_cache_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
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

    /// Sets `max_size` of every fs store in every instance's CAS (how
    /// `kiln serve --max-size` bounds the embedded default, as
    /// bazel-remote's `--max_size` does).
    pub fn set_cas_max_size(&mut self, size: ByteSize) {
        fn visit(
            store: &mut StoreConfig,
            named: &mut BTreeMap<String, StoreConfig>,
            size: ByteSize,
        ) {
            match store {
                StoreConfig::Fs(f) => f.max_size = Some(size),
                StoreConfig::MemoryCache(c) => visit(&mut c.inner, named, size),
                StoreConfig::ExistenceCache(c) => visit(&mut c.inner, named, size),
                StoreConfig::Ref(name) => {
                    if let Some(mut target) = named.remove(name.as_str()) {
                        visit(&mut target, named, size);
                        named.insert(name.clone(), target);
                    }
                }
                StoreConfig::Memory(_) | StoreConfig::S3(_) => {}
            }
        }
        for instance in &mut self.instances {
            visit(&mut instance.cas, &mut self.stores, size);
        }
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
