//! Where the Remote Asset API may download from. Every URL (the first and
//! each redirect) must match an `allow` rule, and every address it connects
//! to must be public unless explicitly allowed: the check runs in the DNS
//! resolver the HTTP client connects with, so a name that resolves to an
//! internal address (or is re-bound to one) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::config::{AllowRule, RemoteAssetConfig};
use crate::error::{Error, Result};

/// The parsed policy.
#[derive(Debug)]
pub(crate) struct Egress {
    rules: Vec<AllowRule>,
    private_ok: Vec<ipnet::IpNet>,
    max_redirects: usize,
}

impl Egress {
    pub(crate) fn from_config(config: &RemoteAssetConfig) -> Result<Self> {
        let (rules, private_ok) = config
            .parsed()
            .map_err(|e| Error::InvalidArgument(e.join("; ")))?;
        Ok(Egress {
            rules,
            private_ok,
            max_redirects: config.max_redirects,
        })
    }

    /// Allows `url`, or says (PERMISSION_DENIED) why not.
    pub(crate) fn check(&self, url: &url::Url) -> Result<()> {
        let refused = |why: &str| {
            Error::PermissionDenied(format!(
                "{url} is refused by the remote_asset egress policy: {why}"
            ))
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused("only http and https are fetched"));
        }
        let Some(host) = url.host_str() else {
            return Err(refused("it names no host"));
        };
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        if !self.rules.iter().any(|r| matches(r, url, &host)) {
            return Err(refused("it matches no remote_asset.allow entry"));
        }
        // An address literal is checked here (no resolver runs for it): a
        // non-public one only when an allow entry names it literally.
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.address_allowed(ip)
            && !self.rules.iter().any(|r| names_literally(r, &host))
        {
            return Err(refused("it is a non-public address"));
        }
        Ok(())
    }

    /// Whether a connection to `ip` (from resolving a name) is allowed.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.private_ok.iter().any(|n| n.contains(&ip))
    }

    /// The redirect policy: at most `max_redirects`, each target checked.
    pub(crate) fn redirects(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let egress = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > egress.max_redirects {
                let error = format!("more than {} redirects", egress.max_redirects);
                return attempt.error(error);
            }
            match egress.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e.to_string()),
            }
        })
    }
}

fn matches(rule: &AllowRule, url: &url::Url, host: &str) -> bool {
    match rule {
        AllowRule::Host(h) => h == host,
        AllowRule::Subdomains(domain) => host
            .strip_suffix(domain.as_str())
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        AllowRule::Prefix(prefix) => {
            prefix.scheme() == url.scheme()
                && prefix.host_str().map(str::to_ascii_lowercase).as_deref()
                    == url.host_str().map(str::to_ascii_lowercase).as_deref()
                && prefix.port_or_known_default() == url.port_or_known_default()
                && path_under(prefix.path(), url.path())
        }
    }
}

/// `path` lies under `prefix`: the same, or below it on a segment boundary
/// when the prefix ends in `/` (so `/a/` does not allow `/ab`).
fn path_under(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.starts_with(&format!("{prefix}/"))
    }
}

fn names_literally(rule: &AllowRule, host: &str) -> bool {
    match rule {
        AllowRule::Host(h) => h == host,
        AllowRule::Prefix(p) => p
            .host_str()
            .is_some_and(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host)),
        AllowRule::Subdomains(_) => false,
    }
}

/// Globally routable: not loopback, private, link-local, shared (CGNAT),
/// unspecified, broadcast, documentation, multicast, or unique-local.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_documentation()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// The resolver the download client connects with: system DNS, then only
/// the addresses the policy allows.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| egress.address_allowed(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to non-public addresses, refused by the remote_asset egress policy (see remote_asset.allow_private_networks)"
                    ),
                );
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str], private: &[&str]) -> Egress {
        let config = RemoteAssetConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_private_networks: private.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Egress::from_config(&config).unwrap()
    }

    fn ok(e: &Egress, url: &str) -> bool {
        e.check(&url::Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn prefixes_hosts_and_subdomains() {
        let e = egress(
            &[
                "https://github.com/bazelbuild/",
                "mirror.example.com",
                "*.corp.example",
            ],
            &[],
        );
        assert!(ok(
            &e,
            "https://github.com/bazelbuild/rules_go/archive/x.tar.gz"
        ));
        assert!(
            !ok(&e, "https://github.com/bazelbuild-evil/x"),
            "segment boundary"
        );
        assert!(
            !ok(&e, "http://github.com/bazelbuild/x"),
            "scheme is part of a prefix"
        );
        assert!(
            !ok(&e, "https://github.com:8443/bazelbuild/x"),
            "so is the port"
        );
        assert!(ok(&e, "http://mirror.example.com:8080/anything"));
        assert!(ok(&e, "https://a.b.corp.example/x"));
        assert!(!ok(&e, "https://corp.example/x"), "not the apex");
        assert!(!ok(&e, "https://evilcorp.example/x"));
        assert!(!ok(&e, "https://example.org/"));
        assert!(!ok(&e, "file:///etc/passwd"));
        assert!(!ok(&e, "ftp://mirror.example.com/x"));
    }

    #[test]
    fn non_public_literals_need_naming_or_a_network() {
        let e = egress(
            &["*.example.com", "http://127.0.0.1:8123/"],
            &["10.1.0.0/16"],
        );
        assert!(ok(&e, "http://127.0.0.1:8123/file"), "named literally");
        assert!(!ok(&e, "http://127.0.0.1:8124/file"), "other port: no rule");
        let wide = egress(
            &["169.254.169.254", "10.1.2.3", "10.9.9.9"],
            &["10.1.0.0/16"],
        );
        assert!(
            ok(&wide, "http://169.254.169.254/latest/meta-data"),
            "named literally"
        );
        assert!(ok(&wide, "http://10.1.2.3/"));
        assert!(ok(&wide, "http://10.9.9.9/"), "named literally");
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(e.address_allowed("10.1.200.3".parse().unwrap()));
        assert!(!e.address_allowed("10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn malformed_entries_are_reported_with_their_paths() {
        let config = RemoteAssetConfig {
            allow: vec![
                "ftp://x/".into(),
                "https://u:p@h/".into(),
                "*.".into(),
                "ok.example".into(),
            ],
            allow_private_networks: vec!["10.0.0.0/33".into()],
            ..Default::default()
        };
        let errors = config.parsed().unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("remote_asset.allow[0]"), "{errors:?}");
        assert!(
            errors[3].starts_with("remote_asset.allow_private_networks[0]"),
            "{errors:?}"
        );
    }
}
