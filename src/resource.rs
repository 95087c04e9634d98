//! ByteStream resource names, parsed once into a typed value:
//!
//! - read:  `{instance}/blobs/{function/}{hash}/{size}`
//!   or     `{instance}/compressed-blobs/zstd/{function/}{hash}/{size}`
//! - write: `{instance}/uploads/{uuid}/blobs/...` or `.../compressed-blobs/zstd/...`,
//!   optionally followed by `/{metadata}`.
//!
//! Instance names may hold slashes but never the reserved segments, so the
//! first reserved segment ends the instance name.

use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};

/// How the bytes on the wire are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// Plain bytes.
    Identity,
    /// Zstandard frames.
    Zstd,
}

/// A parsed resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    /// The instance (may be empty).
    pub instance: String,
    /// The client's upload id (writes only).
    pub upload_id: Option<String>,
    /// Wire encoding of the data.
    pub compressor: Compressor,
    /// The blob (uncompressed digest).
    pub digest: Digest,
}

impl ResourceName {
    /// A key identifying one upload, for resumption.
    pub fn upload_key(&self) -> String {
        format!(
            "{}/{}/{:?}",
            self.instance,
            self.upload_id.as_deref().unwrap_or(""),
            self.digest
        )
    }
}

fn bad(name: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("malformed resource name {name:?}: {why}"))
}

/// Parses a ByteStream Read resource name.
pub fn parse_read(name: &str) -> Result<ResourceName> {
    parse(name, false)
}

/// Parses a ByteStream Write resource name.
pub fn parse_write(name: &str) -> Result<ResourceName> {
    parse(name, true)
}

fn parse(name: &str, write: bool) -> Result<ResourceName> {
    let segs: Vec<&str> = name.split('/').collect();
    let first = segs
        .iter()
        .position(|s| matches!(*s, "blobs" | "compressed-blobs" | "uploads"))
        .ok_or_else(|| {
            bad(
                name,
                "expected a blobs/, compressed-blobs/ or uploads/ segment",
            )
        })?;
    let instance = segs[..first].join("/");
    let mut i = first;
    let upload_id = if write {
        if segs[i] != "uploads" {
            return Err(bad(
                name,
                "a write needs {instance}/uploads/{uuid}/blobs/{hash}/{size}",
            ));
        }
        let id = segs
            .get(i + 1)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(name, "missing upload id"))?;
        i += 2;
        Some(id.to_string())
    } else {
        None
    };
    let compressor = match segs.get(i).copied() {
        Some("blobs") => {
            i += 1;
            Compressor::Identity
        }
        Some("compressed-blobs") => {
            let c = match segs.get(i + 1).copied() {
                Some("zstd") => Compressor::Zstd,
                Some(other) => {
                    return Err(bad(
                        name,
                        &format!("unsupported compressor {other:?} (kiln supports zstd)"),
                    ));
                }
                None => return Err(bad(name, "missing compressor")),
            };
            i += 2;
            c
        }
        _ => return Err(bad(name, "expected blobs/ or compressed-blobs/")),
    };
    let mut function = DigestFunction::Sha256;
    if let Some(f) = segs.get(i).and_then(|s| DigestFunction::from_name(s)) {
        function = f;
        i += 1;
    }
    let (Some(hash), Some(size)) = (segs.get(i), segs.get(i + 1)) else {
        return Err(bad(name, "expected {hash}/{size}"));
    };
    let size: i64 = size
        .parse()
        .map_err(|_| bad(name, &format!("size {size:?} is not a number")))?;
    let digest = Digest::parse(function, hash, size).map_err(|e| bad(name, &e.to_string()))?;
    if !write && segs.len() > i + 2 {
        return Err(bad(name, "unexpected segments after the size"));
    }
    Ok(ResourceName {
        instance,
        upload_id,
        compressor,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn read_names() {
        let ok: &[(String, &str, Compressor, DigestFunction, u64)] = &[
            (
                format!("blobs/{H}/0"),
                "",
                Compressor::Identity,
                DigestFunction::Sha256,
                0,
            ),
            (
                format!("main/blobs/{H}/42"),
                "main",
                Compressor::Identity,
                DigestFunction::Sha256,
                42,
            ),
            (
                format!("a/b/c/blobs/{H}/7"),
                "a/b/c",
                Compressor::Identity,
                DigestFunction::Sha256,
                7,
            ),
            (
                format!("blobs/blake3/{H}/5"),
                "",
                Compressor::Identity,
                DigestFunction::Blake3,
                5,
            ),
            (
                format!("x/compressed-blobs/zstd/{H}/9"),
                "x",
                Compressor::Zstd,
                DigestFunction::Sha256,
                9,
            ),
            (
                format!("compressed-blobs/zstd/sha256/{H}/9"),
                "",
                Compressor::Zstd,
                DigestFunction::Sha256,
                9,
            ),
        ];
        for (name, instance, comp, f, size) in ok {
            let r = parse_read(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (
                    &r.instance[..],
                    r.compressor,
                    r.digest.function,
                    r.digest.size
                ),
                (*instance, *comp, *f, *size),
                "{name}"
            );
            assert_eq!(r.digest.hash_hex(), H);
        }
        let bad = [
            String::new(),
            "blobs".into(),
            format!("blobs/{H}"),
            format!("blobs/{H}/-1"),
            format!("blobs/{H}/ten"),
            format!("blobs/{}/1", &H[..63]),
            format!("blobs/{}/1", H.to_uppercase()),
            format!("blobs/{H}/1/extra"),
            format!("compressed-blobs/deflate/{H}/1"),
            format!("compressed-blobs/{H}/1"),
            format!("blobs/md5/{H}/1"),
            format!("main/uploads/u/blobs/{H}/1"),
        ];
        for name in bad {
            assert!(
                matches!(parse_read(&name), Err(Error::InvalidArgument(_))),
                "{name:?} should be rejected"
            );
        }
    }

    #[test]
    fn write_names() {
        let r = parse_write(&format!("inst/uploads/1234/blobs/{H}/10/some/metadata")).unwrap();
        assert_eq!(r.instance, "inst");
        assert_eq!(r.upload_id.as_deref(), Some("1234"));
        assert_eq!(r.digest.size, 10);
        let r = parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{H}/3")).unwrap();
        assert_eq!(
            (r.compressor, r.digest.function),
            (Compressor::Zstd, DigestFunction::Blake3)
        );
        for name in [
            format!("blobs/{H}/1"),
            format!("uploads//blobs/{H}/1"),
            format!("uploads/u/{H}/1"),
            format!("uploads/u/blobs/{H}"),
        ] {
            assert!(
                matches!(parse_write(&name), Err(Error::InvalidArgument(_))),
                "{name:?}"
            );
        }
    }
}
