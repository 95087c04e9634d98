//! Static API tokens from a file, for CI systems that cannot mint JWTs. The
//! file holds only SHA-256 hashes of the tokens, one per line:
//!
//! ```text
//! # sha256-of-token  roles (comma-separated)  subject
//! 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 read,write,ac-write ci
//! ```
//!
//! A presented token is hashed and compared against every entry in constant
//! time, so neither the file nor timing reveals a token.

use super::{Grant, Identity};
use crate::digest::DigestFunction;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Entry {
    hash: [u8; 32],
    grants: Vec<Grant>,
    subject: String,
}

/// Tokens loaded from a file.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    entries: Vec<Entry>,
}

impl StaticTokens {
    /// Parses a token file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
    }

    /// Parses token file text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [hash, roles, subject] = parts[..] else {
                return Err(format!("line {}: expected \"SHA256 ROLES SUBJECT\"", n + 1));
            };
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes)
                .map_err(|_| format!("line {}: {hash:?} is not a SHA-256 hex digest", n + 1))?;
            let grants = roles
                .split(',')
                .map(|r| {
                    Grant::parse(r).ok_or_else(|| format!("line {}: unknown role {r:?}", n + 1))
                })
                .collect::<std::result::Result<_, _>>()?;
            entries.push(Entry {
                hash: bytes,
                grants,
                subject: subject.to_string(),
            });
        }
        Ok(StaticTokens { entries })
    }

    /// The identity of a token, if it is one of ours.
    pub fn find(&self, token: &str) -> Option<Identity> {
        let presented = DigestFunction::Sha256.digest_of(token.as_bytes()).hash;
        let mut found = None;
        for e in &self.entries {
            // Compare every entry, whatever matched, in constant time.
            if aws_lc_rs::constant_time::verify_slices_are_equal(&e.hash, &presented).is_ok() {
                found = Some(Identity::Subject {
                    name: e.subject.clone(),
                    grants: e.grants.clone(),
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_only() {
        let hash = DigestFunction::Sha256.digest_of(b"s3cret").hash_hex();
        let tokens =
            StaticTokens::parse(&format!("# comment\n{hash} read,ci:ac-write robot\n")).unwrap();
        match tokens.find("s3cret") {
            Some(Identity::Subject { name, grants }) => {
                assert_eq!(name, "robot");
                assert_eq!(grants.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(tokens.find("wrong").is_none());
        assert!(
            tokens.find(&hash).is_none(),
            "the hash itself is not a token"
        );
        assert!(StaticTokens::parse("abc read x").is_err());
        assert!(StaticTokens::parse(&format!("{hash} fly x")).is_err());
    }
}
