//! `http:` settings: how the HTTP listener (pages, JSON API, Bazel's HTTP
//! cache, `/metrics`) treats connections, so that idle or trickling
//! clients cannot take the file descriptors gRPC needs.

use serde::Deserialize;

use super::units::Duration;

/// `http:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// A request's headers must arrive whole within this. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed
    /// (an idle keep-alive, or a client that stopped mid-request). Default `60s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Connections open at once; past it new ones are closed at once.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TLS handshake must finish within this. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub tls_handshake_timeout: Duration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("http defaults parse")
    }
}

fn default_header_read_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

fn default_idle_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(60))
}

fn default_max_connections() -> usize {
    1024
}
