//! An instance's `chunking:` settings: REAPI 2.12's SplitBlob and SpliceBlob
//! and the chunking functions kiln advertises for them.

use serde::Deserialize;

use super::units::ByteSize;

/// `chunking:` under an instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Serve SplitBlob and SpliceBlob and advertise them (Bazel 8.7+ uses
    /// them with `--experimental_remote_cache_chunking`). Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// FAST_CDC_2020's parameters, as advertised; Bazel prefers this
    /// function when both are offered.
    #[serde(default)]
    pub fast_cdc_2020: FastCdcConfig,
    /// REP_MAX_CDC's parameters, as advertised.
    #[serde(default)]
    pub rep_max_cdc: RepMaxConfig,
    /// Store blobs of at least `store_min_size` bytes as their FastCDC
    /// chunks (with `fast_cdc_2020`'s parameters), whoever uploads them and
    /// however: a second version of a large artifact then costs only the
    /// chunks an edit touched, and SplitBlob answers from the stored
    /// chunks. Blobs stored whole before stay readable. An interrupted
    /// upload resumes from the chunks it stored (no spool file). Default
    /// false: it costs a second hash of every large upload and the cut, so
    /// one large upload at a time runs at about two thirds of the
    /// unchunked speed on disk and in memory (BENCHMARKS.md, "Chunking").
    #[serde(default)]
    pub store: bool,
    /// The smallest blob stored as chunks. Default `2MiB` (FastCDC's
    /// largest chunk at the default average: anything smaller would often
    /// be one chunk anyway).
    #[serde(default = "default_store_min_size")]
    pub store_min_size: ByteSize,
    /// Bytes of cut chunks that may wait to be stored, all of an instance's
    /// uploads together: against a slow store each upload holds its chunks
    /// in flight, and many uploads at once would hold that many times as
    /// much; past it the uploads wait (and so do their clients). Default
    /// `256MiB`.
    #[serde(default = "default_store_in_flight")]
    pub store_in_flight: ByteSize,
    /// Most chunks one SpliceBlob may name (more is INVALID_ARGUMENT), so a
    /// request cannot make kiln read an unbounded list. Default 65536.
    #[serde(default = "default_max_splice_chunks")]
    pub max_splice_chunks: usize,
    /// SplitBlobs of blobs not split before that run at once; more wait.
    /// Each reads and hashes its whole blob. Default 2.
    #[serde(default = "default_max_concurrent_splits")]
    pub max_concurrent_splits: usize,
    /// The largest blob SplitBlob reads and cuts (one already stored as
    /// the asked chunks is answered whatever its size): a request of a
    /// hundred bytes must not make kiln read a blob of any size. Larger is
    /// RESOURCE_EXHAUSTED; the client downloads the blob whole. Default
    /// `8GiB`.
    #[serde(default = "default_max_split_size")]
    pub max_split_size: ByteSize,
}

/// `fast_cdc_2020:` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastCdcConfig {
    /// The average chunk size: a power of two from 1KiB to 1MiB; chunks
    /// are a quarter to four times it. Default `512KiB` (Bazel's default).
    #[serde(default = "default_avg")]
    pub avg_chunk_size: ByteSize,
    /// Seed XORed into the rolling hash's table. Default 0.
    #[serde(default)]
    pub seed: u32,
}

/// `rep_max_cdc:` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepMaxConfig {
    /// Offer REP_MAX_CDC at all. Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Every chunk is at least this and under twice this. Default `256KiB`.
    #[serde(default = "default_min")]
    pub min_chunk_size: ByteSize,
    /// How far past the earliest cut the best one is looked for. Default
    /// `2MiB` (Buildbarn's).
    #[serde(default = "default_horizon")]
    pub horizon_size: ByteSize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("chunking defaults parse")
    }
}

impl Default for FastCdcConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("fast_cdc_2020 defaults parse")
    }
}

impl Default for RepMaxConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("rep_max_cdc defaults parse")
    }
}

impl ChunkingConfig {
    /// What is wrong with these settings, each with its path under `path`.
    pub(super) fn errors(&self, path: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = crate::chunking::FastCdc::new(
            self.fast_cdc_2020.avg_chunk_size.0,
            self.fast_cdc_2020.seed,
        ) {
            errors.push(format!("{path}.fast_cdc_2020: {e}"));
        }
        let rep = &self.rep_max_cdc;
        if let Err(e) = crate::chunking::RepMax::new(rep.min_chunk_size.0, rep.horizon_size.0) {
            errors.push(format!("{path}.rep_max_cdc: {e}"));
        }
        if self.max_splice_chunks == 0 {
            errors.push(format!("{path}.max_splice_chunks: must be at least 1"));
        }
        if self.max_concurrent_splits == 0 {
            errors.push(format!("{path}.max_concurrent_splits: must be at least 1"));
        }
        if self.store_in_flight.0 < 4 << 20 {
            errors.push(format!(
                "{path}.store_in_flight: must be at least 4MiB (one chunk at the largest average), got {}",
                self.store_in_flight.0
            ));
        }
        errors
    }
}

fn default_store_min_size() -> ByteSize {
    ByteSize(2 << 20)
}
fn default_store_in_flight() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_max_splice_chunks() -> usize {
    65_536
}
fn default_max_concurrent_splits() -> usize {
    2
}
fn default_max_split_size() -> ByteSize {
    ByteSize(8 << 30)
}
fn default_avg() -> ByteSize {
    ByteSize(512 << 10)
}
fn default_min() -> ByteSize {
    ByteSize(256 << 10)
}
fn default_horizon() -> ByteSize {
    ByteSize(2 << 20)
}
