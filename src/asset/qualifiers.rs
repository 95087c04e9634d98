//! The Remote Asset qualifiers kiln understands. The spec asks servers to
//! refuse the ones they do not (INVALID_ARGUMENT naming them): a qualifier
//! is a promise about the content, and ignoring one would return content
//! that may not keep it.

use std::collections::BTreeMap;

use base64::Engine;

use crate::error::{Error, Result};
use crate::proto::asset::Qualifier;

/// A Subresource Integrity algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SriAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl SriAlgorithm {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(SriAlgorithm::Sha256),
            "sha384" => Some(SriAlgorithm::Sha384),
            "sha512" => Some(SriAlgorithm::Sha512),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SriAlgorithm::Sha256 => "sha256",
            SriAlgorithm::Sha384 => "sha384",
            SriAlgorithm::Sha512 => "sha512",
        }
    }

    pub(crate) fn ring(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            SriAlgorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            SriAlgorithm::Sha384 => &aws_lc_rs::digest::SHA384,
            SriAlgorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }
}

/// One expected checksum (`sha256-BASE64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sri {
    pub(crate) algorithm: SriAlgorithm,
    pub(crate) expected: Vec<u8>,
}

impl Sri {
    /// `algorithm-BASE64`, as SRI writes it.
    pub(crate) fn format(algorithm: SriAlgorithm, hash: &[u8]) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(hash);
        format!("{}-{encoded}", algorithm.name())
    }
}

/// What a request's qualifiers ask for.
#[derive(Debug, Default)]
pub(crate) struct Qualifiers {
    /// Checksums the content must have: any one matching is enough.
    pub(crate) sri: Vec<Sri>,
    /// Headers sent with every URI.
    pub(crate) headers: Vec<(String, String)>,
    /// Headers sent with the URI at an index (`http_header_url:N:NAME`).
    pub(crate) url_headers: BTreeMap<usize, Vec<(String, String)>>,
    /// Headers per URI from Bazel's `bazel.auth_headers` (JSON).
    pub(crate) auth_headers: BTreeMap<String, Vec<(String, String)>>,
    /// FetchDirectory: the subdirectory of the archive to return.
    pub(crate) directory: Option<String>,
    /// The qualifiers that identify content (not headers): part of the
    /// cache key, sorted.
    pub(crate) identity: Vec<(String, String)>,
}

/// The `resource_type` values FetchDirectory accepts (it also detects the
/// format from the content).
const ARCHIVE_TYPES: [&str; 8] = [
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-compressed-tar",
    "application/x-xz",
    "application/zstd",
    "application/zip",
    "application/x-zip-compressed",
];

/// Parses a Fetch request's qualifiers; `directory` says whether this is
/// FetchDirectory (which also takes `directory`).
pub(crate) fn parse(qualifiers: &[Qualifier], directory: bool) -> Result<Qualifiers> {
    let mut out = Qualifiers::default();
    let mut unknown = Vec::new();
    for q in qualifiers {
        let name = q.name.as_str();
        let invalid = |why: String| Error::InvalidArgument(format!("qualifier {name}: {why}"));
        let header_name = |h: &str| {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                Err(invalid(format!("{h:?} is not an HTTP header name")))
            } else {
                Ok(h.to_ascii_lowercase())
            }
        };
        let header_value = |v: &str| {
            axum::http::HeaderValue::from_str(v)
                .map(|_| v.to_string())
                .map_err(|_| invalid("the value is not a valid HTTP header value".into()))
        };
        if let Some(h) = header_of(name) {
            header_allowed(h).map_err(invalid)?;
        }
        if name == "checksum.sri" {
            out.sri.extend(parse_sri(&q.value).map_err(invalid)?);
            out.identity.push((q.name.clone(), q.value.clone()));
        } else if name == "bazel.canonical_id" {
            out.identity.push((q.name.clone(), q.value.clone()));
        } else if name == "resource_type" {
            if directory && !ARCHIVE_TYPES.contains(&q.value.as_str()) {
                return Err(invalid(format!(
                    "{:?} is not an archive type kiln unpacks ({ARCHIVE_TYPES:?})",
                    q.value
                )));
            }
            out.identity.push((q.name.clone(), q.value.clone()));
        } else if name == "directory" && directory {
            let sub = q.value.trim_matches('/');
            if sub
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
                && !sub.is_empty()
            {
                return Err(invalid(format!(
                    "{:?} is not a relative path inside the archive",
                    q.value
                )));
            }
            out.directory = (!sub.is_empty()).then(|| sub.to_string());
            out.identity.push((q.name.clone(), sub.to_string()));
        } else if let Some(h) = name.strip_prefix("http_header:") {
            let header = (header_name(h)?, header_value(&q.value)?);
            if !is_credential(&header.0) {
                out.identity
                    .push((format!("http_header:{}", header.0), header.1.clone()));
            }
            out.headers.push(header);
        } else if let Some(rest) = name.strip_prefix("http_header_url:") {
            let (index, h) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected http_header_url:INDEX:NAME".into()))?;
            let index: usize = index
                .parse()
                .map_err(|_| invalid(format!("{index:?} is not a URI index")))?;
            let entry = (header_name(h)?, header_value(&q.value)?);
            if !is_credential(&entry.0) {
                out.identity.push((
                    format!("http_header_url:{index}:{}", entry.0),
                    entry.1.clone(),
                ));
            }
            out.url_headers.entry(index).or_default().push(entry);
        } else if name == "bazel.auth_headers" {
            out.auth_headers = parse_auth_headers(&q.value).map_err(invalid)?;
            for (h, _) in out.auth_headers.values().flatten() {
                header_allowed(h).map_err(invalid)?;
            }
        } else {
            unknown.push(name.to_string());
        }
    }
    if !unknown.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "unsupported qualifiers {unknown:?}: kiln understands checksum.sri, bazel.canonical_id, resource_type, http_header:NAME, http_header_url:INDEX:NAME, bazel.auth_headers{}",
            if directory { " and directory" } else { "" }
        )));
    }
    out.identity.sort();
    Ok(out)
}

/// Every checksum a Push's `checksum.sri` qualifiers name.
pub(crate) fn pushed_sri(qualifiers: &[Qualifier]) -> Result<Vec<Sri>> {
    let mut out = Vec::new();
    for q in qualifiers.iter().filter(|q| q.name == "checksum.sri") {
        out.extend(
            parse_sri(&q.value)
                .map_err(|why| Error::InvalidArgument(format!("qualifier checksum.sri: {why}")))?,
        );
    }
    Ok(out)
}

/// The header a qualifier sends, if it sends one.
fn header_of(name: &str) -> Option<&str> {
    name.strip_prefix("http_header:").or_else(|| {
        name.strip_prefix("http_header_url:")?
            .split_once(':')
            .map(|(_, h)| h)
    })
}

/// Headers that carry credentials: they do not change what a URL serves,
/// so they are no part of a record's identity (and are never stored).
fn is_credential(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    )
}

/// Refuses headers a client could use to make the origin answer with
/// something other than the URL's whole content (a range, another
/// encoding, a conditional answer) or to reach another site than the URL
/// names (Host, which the egress policy does not see). Every other header
/// but credentials is part of the record's identity, so what it changes is
/// recorded only for requests that send it.
fn header_allowed(name: &str) -> std::result::Result<(), String> {
    let lower = name.to_ascii_lowercase();
    let refused = matches!(
        lower.as_str(),
        "host"
            | "range"
            | "if-range"
            | "accept-encoding"
            | "te"
            | "connection"
            | "upgrade"
            | "transfer-encoding"
            | "content-length"
            | "expect"
            | "keep-alive"
    ) || lower.starts_with("if-")
        || lower.starts_with("proxy-") && lower != "proxy-authorization";
    if refused {
        return Err(format!(
            "the header {name:?} changes what the origin answers (or where it is asked), and kiln records only a URL's whole content"
        ));
    }
    Ok(())
}

/// The identity of a Push's qualifiers: all of them but credentials (the
/// spec lets servers trust pushed qualifiers without understanding them);
/// headers count as a Fetch counts them.
pub(crate) fn pushed_identity(qualifiers: &[Qualifier]) -> Vec<(String, String)> {
    let mut identity: Vec<(String, String)> = qualifiers
        .iter()
        .filter(|q| {
            q.name != "bazel.auth_headers" && !header_of(&q.name).is_some_and(is_credential)
        })
        .map(|q| {
            // Header names compare as a Fetch's do: lowercase.
            let name = match header_of(&q.name) {
                Some(h) => format!(
                    "{}{}",
                    &q.name[..q.name.len() - h.len()],
                    h.to_ascii_lowercase()
                ),
                None => q.name.clone(),
            };
            (name, q.value.clone())
        })
        .collect();
    identity.sort();
    identity
}

/// `sha256-BASE64 sha512-BASE64 ...`; options after `?` are ignored, as SRI
/// says, and so are algorithms SRI does not define... unless none is known.
fn parse_sri(value: &str) -> std::result::Result<Vec<Sri>, String> {
    let mut out = Vec::new();
    for token in value.split_whitespace() {
        let token = token.split('?').next().unwrap_or(token);
        let Some((algorithm, encoded)) = token.split_once('-') else {
            return Err(format!("{token:?} is not ALGORITHM-BASE64"));
        };
        let Some(algorithm) = SriAlgorithm::parse(algorithm) else {
            continue;
        };
        let expected = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("{token:?}: the hash is not base64"))?;
        if expected.len() != algorithm.ring().output_len() {
            return Err(format!(
                "{token:?}: a {} hash has {} bytes, got {}",
                algorithm.name(),
                algorithm.ring().output_len(),
                expected.len()
            ));
        }
        out.push(Sri {
            algorithm,
            expected,
        });
    }
    if out.is_empty() {
        return Err(format!(
            "{value:?} holds no sha256, sha384 or sha512 checksum"
        ));
    }
    Ok(out)
}

/// Bazel's `bazel.auth_headers`: `{"URL": {"Header": ["value", ...]}}`.
fn parse_auth_headers(
    value: &str,
) -> std::result::Result<BTreeMap<String, Vec<(String, String)>>, String> {
    let parsed: BTreeMap<String, BTreeMap<String, Vec<String>>> = serde_json::from_str(value)
        .map_err(|e| format!("not a JSON map of URL to headers: {e}"))?;
    Ok(parsed
        .into_iter()
        .map(|(url, headers)| {
            let list = headers
                .into_iter()
                .flat_map(|(h, values)| {
                    values.into_iter().map(move |v| (h.to_ascii_lowercase(), v))
                })
                .collect();
            (url, list)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, value: &str) -> Qualifier {
        Qualifier {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn understood_qualifiers_parse_and_unknown_ones_are_named() {
        let sha = Sri::format(SriAlgorithm::Sha256, &[7u8; 32]);
        let parsed = parse(
            &[
                q("checksum.sri", &sha),
                q("bazel.canonical_id", "x"),
                q("http_header:Authorization", "Bearer t"),
                q("http_header_url:1:X-Mirror", "yes"),
            ],
            false,
        )
        .unwrap();
        assert_eq!(parsed.sri.len(), 1);
        assert_eq!(
            parsed.headers,
            vec![("authorization".into(), "Bearer t".into())]
        );
        assert_eq!(
            parsed.url_headers[&1],
            vec![("x-mirror".into(), "yes".into())]
        );
        assert_eq!(
            parsed.identity.len(),
            3,
            "credentials are not identity, other headers are"
        );

        let err = parse(&[q("git.ref", "abc"), q("vcs.thing", "")], false).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(
            text.contains("git.ref") && text.contains("vcs.thing"),
            "{text}"
        );
        assert!(
            parse(&[q("directory", "a")], false).is_err(),
            "FetchBlob has no directory"
        );
        assert!(parse(&[q("directory", "../a")], true).is_err());
        assert_eq!(
            parse(&[q("directory", "a/b/")], true)
                .unwrap()
                .directory
                .as_deref(),
            Some("a/b")
        );
    }

    #[test]
    fn sri_values() {
        let good = Sri::format(SriAlgorithm::Sha384, &[1u8; 48]);
        let two = format!("{good} {}", Sri::format(SriAlgorithm::Sha512, &[2u8; 64]));
        assert_eq!(parse_sri(&two).unwrap().len(), 2);
        assert_eq!(parse_sri(&format!("md5-AAAA {good}?opt")).unwrap().len(), 1);
        assert!(parse_sri("md5-AAAA").is_err(), "nothing known");
        assert!(parse_sri("sha256-AAAA").is_err(), "wrong length");
        assert!(parse_sri("sha256-!!!").is_err(), "not base64");
        assert!(parse_sri("nodash").is_err());
    }

    #[test]
    fn headers_that_change_the_answer_are_refused() {
        for h in [
            "Range",
            "accept-encoding",
            "Host",
            "If-None-Match",
            "Transfer-Encoding",
        ] {
            let e = parse(&[q(&format!("http_header:{h}"), "x")], false).unwrap_err();
            assert!(e.to_string().contains("whole content"), "{h}: {e}");
            let e = parse(&[q(&format!("http_header_url:0:{h}"), "x")], false).unwrap_err();
            assert!(e.to_string().contains("whole content"), "{h}: {e}");
        }
        let e = parse(
            &[q(
                "bazel.auth_headers",
                r#"{"https://a/": {"Range": ["bytes=0-1"]}}"#,
            )],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("whole content"), "{e}");
        // The same Accept in a Fetch and a Push makes the same identity.
        let fetched = parse(&[q("http_header:Accept", "application/x")], false).unwrap();
        let pushed = pushed_identity(&[q("http_header:ACCEPT", "application/x")]);
        assert_eq!(fetched.identity, pushed);
    }

    #[test]
    fn auth_headers_json() {
        let parsed = parse(
            &[q(
                "bazel.auth_headers",
                r#"{"https://h/x": {"Authorization": ["Basic a", "Basic b"]}}"#,
            )],
            false,
        )
        .unwrap();
        assert_eq!(parsed.auth_headers["https://h/x"].len(), 2);
        assert!(parse(&[q("bazel.auth_headers", "[1]")], false).is_err());
    }
}
