//! `http_cache:` settings: Bazel's HTTP cache protocol on the HTTP
//! listener (`src/http_cache.rs`).

use serde::Deserialize;

use super::units::ByteSize;

/// `http_cache:` settings: `/cas/{sha256}` and `/ac/{sha256}` on the HTTP
/// listener, for clients that speak no gRPC.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCacheConfig {
    /// Serve the protocol at all. Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Largest CAS upload one PUT may send (413 above it). Default `8GiB`.
    #[serde(default = "default_max_http_upload")]
    pub max_upload: ByteSize,
}

impl Default for HttpCacheConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("http_cache defaults parse")
    }
}

fn default_max_http_upload() -> ByteSize {
    ByteSize(8 << 30)
}
