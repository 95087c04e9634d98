//! Config of store graphs: backends (memory, fs, s3) and layers
//! (memory_cache, existence_cache), nested or shared by `ref:`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, Duration, yes};

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
    /// Size of the pieces large blobs are streamed in when read (at least
    /// 4KiB). Default `1MiB`: large enough that one read syscall moves a
    /// useful amount, small enough that many concurrent readers stay cheap.
    #[serde(default = "default_read_chunk")]
    pub read_chunk: ByteSize,
    /// Most bytes the store holds: past it the least recently used blobs
    /// are evicted, in the background, down to `low_watermark`. Default:
    /// unbounded (the embedded default config sets one).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// Where eviction stops, as a fraction of `max_size`. Default 0.9.
    #[serde(default = "default_low_watermark")]
    pub low_watermark: f64,
    /// A blob read, stored or confirmed (FindMissingBlobs, an action-cache
    /// completeness check) within this long is leased: not evicted while
    /// the store stays under `max_size` + `lease_margin`. Default `3h`.
    #[serde(default = "default_min_retention")]
    pub min_retention: Duration,
    /// How far past `max_size` leased blobs are kept before the oldest go
    /// anyway. Default: a tenth of `max_size`.
    #[serde(default)]
    pub lease_margin: Option<ByteSize>,
    /// A CAS keeps blobs up to 256 KiB as records in append-only segment
    /// files (one write and one sync for every small blob of a commit
    /// round, no file per blob). Default true. Only one process may use a
    /// directory with segments (it is locked): set false where several
    /// kiln processes share one directory.
    #[serde(default = "default_segments")]
    pub segments: bool,
}

fn default_segments() -> bool {
    true
}

fn default_low_watermark() -> f64 {
    0.9
}

fn default_min_retention() -> Duration {
    Duration(std::time::Duration::from_secs(3 * 3600))
}

impl FsConfig {
    /// The eviction limits, if the store is bounded.
    pub(crate) fn limits(&self) -> Option<crate::store::fs_index::Limits> {
        let max = self.max_size?.0;
        let margin = self.lease_margin.map_or(max / 10, |m| m.0);
        Some(crate::store::fs_index::Limits {
            max_size: max,
            low_watermark: (max as f64 * self.low_watermark) as u64,
            hard_limit: max.saturating_add(margin),
            min_retention: self.min_retention.0,
        })
    }
}

fn default_read_chunk() -> ByteSize {
    ByteSize(1 << 20)
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
    /// Blobs at least this large are uploaded in parts. Default `32MiB`.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    /// Size of each part (at least 5MiB, S3's minimum). Default `32MiB`.
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
    /// When a blob older than this is read or confirmed by FindMissingBlobs,
    /// copy it onto itself so that a lifecycle expiry rule counts it as new
    /// (renewals count as `kiln_store_calls_total{op="refresh"}`). Pair it
    /// with the bucket's expiry and the existence cache's `ttl`: see README
    /// "S3". Default: off.
    #[serde(default)]
    pub refresh_after: Option<Duration>,
    /// Sign each upload's payload (SigV4's SHA-256 of every byte, which
    /// the server checks), at the cost of one more hash pass over the data.
    /// Default: only over plain `http://` endpoints, where nothing else
    /// protects the bytes in transit; over HTTPS (and AWS) TLS does, and
    /// kiln has verified the content against its digest before it sends it.
    #[serde(default)]
    pub sign_payload: Option<bool>,
    /// Bytes of parts being uploaded at once, all uploads of this store
    /// together (at least `part_size`): what bounds a pod's memory when many
    /// large uploads arrive together; a client's stream waits for room.
    /// Default `256MiB`.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: ByteSize,
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

fn default_max_blob_size() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_region() -> String {
    "us-east-1".into()
}

// 32 MiB parts: on a local SeaweedFS, 64 MiB uploads ran ~25% faster
// than with 8 MiB parts (BENCHMARKS.md, "S3"); a part's bytes are sent
// from the chunks as they arrived, so a larger part costs no copy.
fn default_multipart_threshold() -> ByteSize {
    ByteSize(32 << 20)
}

fn default_part_size() -> ByteSize {
    ByteSize(32 << 20)
}

fn default_in_flight() -> ByteSize {
    ByteSize(256 << 20)
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
