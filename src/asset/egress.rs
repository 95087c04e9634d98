//! Where the Remote Asset API may download from. Every URL (the first and
//! each redirect) must match an `allow` rule, and every address it connects
//! to must be public unless explicitly allowed: the check runs in the DNS
//! resolver the HTTP client connects with, so a name that resolves to an
//! internal address (or is re-bound to one) is refused too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
    /// An IPv6 address that embeds an IPv4 one (NAT64, 6to4) is judged
    /// as that IPv4 address: a translator would connect there.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = embedded_v4(ip).map_or(ip, IpAddr::V4);
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
/// The IPv4 address an IPv6 one stands for: IPv4-mapped (::ffff:a.b.c.d),
/// IPv4-compatible (::a.b.c.d), NAT64's well-known prefix
/// (64:ff9b::a.b.c.d) and 6to4 (2002:AABB:CCDD::).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(v6.is_loopback() || v6.is_unspecified()) {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn is_public(ip: IpAddr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let first = s[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x64 && s[1] == 0xff9b) // NAT64, local use (64:ff9b:1::/48)
                || (first == 0x2001 && s[1] == 0) // Teredo: reaches an obscured IPv4 address
                || (first == 0x2001 && s[1] == 0x0db8)) // documentation
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
    fn addresses_embedding_ipv4_are_judged_as_that_ipv4() {
        let e = egress(&["*.example.com"], &["10.1.0.0/16"]);
        let allowed = |a: &str| e.address_allowed(a.parse().unwrap());
        // NAT64 and 6to4 to loopback, private and metadata addresses.
        for refused in [
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c0a8:101",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b:1::8.8.8.8",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(!allowed(refused), "{refused}");
        }
        // ... and a public or allowed-private one through them is fine.
        assert!(allowed("64:ff9b::808:808"), "8.8.8.8");
        assert!(allowed("2002:808:808::"), "8.8.8.8");
        assert!(allowed("64:ff9b::a01:203"), "10.1.2.3 is allowed");
        assert!(allowed("2606:4700::1111"));
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
