//! `remote_asset:` settings: the Remote Asset API's egress policy and the
//! bounds on what one fetch may download or unpack. A server that downloads
//! URLs on request is an SSRF tool unless it is told where it may go.

use serde::Deserialize;

use super::units::{ByteSize, Duration};

/// The Remote Asset API (Fetch and Push).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAssetConfig {
    /// Serve the Fetch and Push services. Default true (with an empty
    /// `allow`, Fetch serves only cached and pushed assets).
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Where downloads may go: URL prefixes (`https://github.com/bazelbuild/`)
    /// or host patterns (`mirror.example.com`, `*.example.com`). Empty:
    /// nothing is downloaded.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Private, loopback, link-local and other non-public addresses are
    /// refused (even when an allowed host name resolves to one) unless the
    /// address lies in one of these networks (`10.0.0.0/8`, `127.0.0.1/32`)
    /// or an `allow` entry names the address literally.
    #[serde(default)]
    pub allow_private_networks: Vec<String>,
    /// Redirects followed per download, each re-checked. Default 5.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// Largest download. Default `4GiB`.
    #[serde(default = "default_max_download")]
    pub max_download_size: ByteSize,
    /// Longest download (a request's shorter `timeout` wins). Default `10m`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Most entries FetchDirectory unpacks from one archive. Default 100000.
    #[serde(default = "default_max_entries")]
    pub max_archive_entries: u64,
    /// Most bytes FetchDirectory unpacks from one archive, counted as they
    /// are decompressed (a zip bomb stops here). Default `8GiB`.
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_size: ByteSize,
    /// Downloads one caller (token subject, else client address) runs at
    /// once; more wait their turn. Default 4.
    #[serde(default = "default_downloads_per_caller")]
    pub max_downloads_per_caller: usize,
    /// Bytes one caller's downloads may hold in the spool at once; past it
    /// a download fails with RESOURCE_EXHAUSTED. Default `8GiB`.
    #[serde(default = "default_spool_per_caller")]
    pub max_spool_per_caller: ByteSize,
}

impl Default for RemoteAssetConfig {
    fn default() -> Self {
        serde_saphyr::from_str("{}").expect("remote_asset defaults parse")
    }
}

fn default_max_redirects() -> usize {
    5
}

fn default_max_download() -> ByteSize {
    ByteSize(4 << 30)
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}

fn default_max_entries() -> u64 {
    100_000
}

fn default_downloads_per_caller() -> usize {
    4
}

fn default_spool_per_caller() -> ByteSize {
    ByteSize(8 << 30)
}

fn default_max_unpacked() -> ByteSize {
    ByteSize(8 << 30)
}

/// One `allow` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// A URL prefix: scheme, host, port and path prefix must match (the path
    /// on a segment boundary when the prefix ends in `/`).
    Prefix(url::Url),
    /// An exact host name or address literal, any scheme, port or path.
    Host(String),
    /// `*.example.com`: any host ending in `.example.com` (not the apex).
    Subdomains(String),
}

impl RemoteAssetConfig {
    /// The `allow` entries and private networks, parsed; every malformed
    /// entry is reported with its YAML path.
    pub fn parsed(&self) -> Result<(Vec<AllowRule>, Vec<ipnet::IpNet>), Vec<String>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, entry) in self.allow.iter().enumerate() {
            match parse_rule(entry) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push(format!("remote_asset.allow[{i}]: {entry:?} {e}")),
            }
        }
        let mut nets = Vec::new();
        for (i, entry) in self.allow_private_networks.iter().enumerate() {
            let parsed = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => errors.push(format!(
                    "remote_asset.allow_private_networks[{i}]: {entry:?} is not an address or a network such as 10.0.0.0/8"
                )),
            }
        }
        if errors.is_empty() {
            Ok((rules, nets))
        } else {
            Err(errors)
        }
    }
}

fn parse_rule(entry: &str) -> Result<AllowRule, &'static str> {
    if entry.contains("://") {
        let url = url::Url::parse(entry).map_err(|_| "is not a URL")?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host");
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err("must not carry a query, fragment or credentials");
        }
        return Ok(AllowRule::Prefix(url));
    }
    let host = entry.trim().to_ascii_lowercase();
    let valid = |h: &str| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    };
    match host.strip_prefix("*.") {
        Some(domain) if valid(domain) => Ok(AllowRule::Subdomains(domain.to_string())),
        None if valid(&host) => Ok(AllowRule::Host(host.trim_matches(['[', ']']).to_string())),
        _ => Err("must be a URL prefix (https://host/path/), a host name or *.domain"),
    }
}
