//! Applying an image's layers: each tar (plain, gzip or zstd) read as
//! hostile input (an image from the CAS is anyone's upload), checked
//! against its digest, applied in order with OCI whiteouts, without device
//! nodes, FIFOs or sockets, within a size and entry allowance.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{Descriptor, Manifest, blob_path, read_small};
use crate::error::{Error, Result};

/// Most bytes (apparent sizes) one image or layout tarball unpacks to.
const MAX_IMAGE_BYTES: u64 = 32 << 30;

/// Most entries one image or layout tarball unpacks to.
const MAX_IMAGE_ENTRIES: u64 = 1_000_000;

/// What is left of an unpack's allowance.
pub(super) struct Allowance {
    bytes: u64,
    entries: u64,
}

impl Allowance {
    pub(super) fn new() -> Allowance {
        Allowance {
            bytes: MAX_IMAGE_BYTES,
            entries: MAX_IMAGE_ENTRIES,
        }
    }

    pub(super) fn take(&mut self, size: u64) -> Result<()> {
        self.entries = self.entries.checked_sub(1).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the image has more than {MAX_IMAGE_ENTRIES} entries"
            ))
        })?;
        self.bytes = self.bytes.checked_sub(size).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the image unpacks to more than {MAX_IMAGE_BYTES} bytes"
            ))
        })?;
        Ok(())
    }
}

/// Whether a tar entry is one an image may hold (no devices, FIFOs or
/// sockets: a CAS upload must not put device nodes on the worker's disk).
pub(super) fn allowed_kind(kind: tar::EntryType) -> bool {
    matches!(
        kind,
        tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link
    )
}

/// Directories every image root gets, as the sandbox's mount points.
const MOUNT_POINTS: &[&str] = &["proc", "dev", "tmp", "kiln/exec"];

/// Reads through, hashing what passes.
struct Hashing<R> {
    inner: R,
    hasher: crate::digest::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn verify(d: &Descriptor, hasher: crate::digest::Hasher) -> Result<()> {
    let got = format!("sha256:{}", hasher.finish().hash_hex());
    if got != d.digest {
        return Err(Error::InvalidArgument(format!(
            "image blob {} does not hash to its digest (got {got})",
            d.digest
        )));
    }
    Ok(())
}

/// Unpacks `manifest`'s layers, in order, into `cache/HEX/rootfs`.
pub(super) fn unpack(layout: &Path, manifest: &Descriptor, cache: &Path, hex: &str) -> Result<()> {
    let bytes = read_small(&blob_path(layout, manifest)?)?;
    let mut hasher = crate::digest::DigestFunction::Sha256.hasher(bytes.len() as u64);
    hasher.update(&bytes);
    verify(manifest, hasher)?;
    let parsed: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidArgument(format!(
            "image manifest {} does not parse: {e}",
            manifest.digest
        ))
    })?;
    let tmp = cache.join(format!("{hex}.tmp-{}", uuid::Uuid::new_v4()));
    let root = tmp.join("rootfs");
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let result = (|| {
        let mut allowance = Allowance::new();
        for layer in &parsed.layers {
            apply_layer(layout, layer, &root, &mut allowance)?;
        }
        for m in MOUNT_POINTS {
            let p = root.join(m);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&p)
                    .map_err(|e| Error::io(format!("replacing {}", p.display()), e))?;
            }
            std::fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting the image root's mode", e))?;
        std::fs::rename(&tmp, cache.join(hex))
            .map_err(|e| Error::io(format!("placing image {hex}"), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Applies one layer (tar, tar+gzip or tar+zstd) with OCI whiteouts.
fn apply_layer(
    layout: &Path,
    layer: &Descriptor,
    root: &Path,
    allowance: &mut Allowance,
) -> Result<()> {
    let path = blob_path(layout, layer)?;
    let file = std::fs::File::open(&path)
        .map_err(|e| Error::io(format!("opening image layer {}", layer.digest), e))?;
    let mut hashing = Hashing {
        inner: std::io::BufReader::new(file),
        hasher: crate::digest::DigestFunction::Sha256.hasher(layer.size),
    };
    {
        let decoded: Box<dyn Read + '_> =
            if layer.media_type.ends_with("+gzip") || layer.media_type.ends_with(".gzip") {
                Box::new(flate2::read::GzDecoder::new(&mut hashing))
            } else if layer.media_type.ends_with("+zstd") || layer.media_type.ends_with(".zstd") {
                Box::new(
                    zstd::stream::read::Decoder::new(&mut hashing)
                        .map_err(|e| Error::io("reading a zstd layer", e))?,
                )
            } else {
                Box::new(&mut hashing)
            };
        let mut archive = tar::Archive::new(decoded);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(false);
        archive.set_overwrite(true);
        let entries = archive
            .entries()
            .map_err(|e| Error::io(format!("reading image layer {}", layer.digest), e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::io(format!("reading image layer {}", layer.digest), e))?;
            let name = entry
                .path()
                .map_err(|e| Error::io("reading a layer entry's name", e))?
                .into_owned();
            if name.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(Error::InvalidArgument(format!(
                    "image layer {} names {}: outside the image",
                    layer.digest,
                    name.display()
                )));
            }
            let file_name = name.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(f) = file_name.as_deref().and_then(|f| f.strip_prefix(".wh.")) {
                whiteout(root, name.parent().unwrap_or(Path::new("")), f)?;
                continue;
            }
            if !allowed_kind(entry.header().entry_type()) {
                continue;
            }
            allowance.take(entry.header().size().unwrap_or(0))?;
            entry.unpack_in(root).map_err(|e| {
                Error::io(
                    format!(
                        "unpacking {} of image layer {}",
                        name.display(),
                        layer.digest
                    ),
                    e,
                )
            })?;
        }
    }
    // The digest covers the whole blob, past the tar's end blocks too.
    std::io::copy(&mut hashing, &mut std::io::sink())
        .map_err(|e| Error::io(format!("reading image layer {}", layer.digest), e))?;
    verify(layer, hashing.hasher)
}

/// An OCI whiteout: `.wh..wh..opq` empties its directory (of what lower
/// layers put there), `.wh.NAME` removes NAME.
fn whiteout(root: &Path, dir: &Path, name: &str) -> Result<()> {
    let inside = |p: &Path| -> Result<PathBuf> {
        // Never through a symlink a lower layer made.
        let mut at = root.to_path_buf();
        for c in p.components() {
            let Component::Normal(part) = c else { continue };
            at = at.join(part);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Error::InvalidArgument(format!(
                    "an image whiteout under the symlink {}",
                    at.display()
                )));
            }
        }
        Ok(at)
    };
    let dir = inside(dir)?;
    let remove = |p: &Path| {
        let _ = match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
            Ok(_) => std::fs::remove_file(p),
            Err(_) => Ok(()),
        };
    };
    if name == ".wh..opq" {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                remove(&e.path());
            }
        }
    } else if !name.contains('/') && name != "." && name != ".." {
        remove(&dir.join(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_puts_no_device_node_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_mode(0o666);
        h.set_size(0);
        b.append_data(&mut h, "dev-sda", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, "file", &b"ok"[..]).unwrap();
        let layer = b.into_inner().unwrap();
        let hex = crate::digest::DigestFunction::Sha256
            .digest_of(&layer)
            .hash_hex();
        std::fs::write(layout.join("blobs/sha256").join(&hex), &layer).unwrap();
        let descriptor = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: format!("sha256:{hex}"),
            size: layer.len() as u64,
            annotations: std::collections::HashMap::new(),
        };
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        apply_layer(&layout, &descriptor, &root, &mut Allowance::new()).unwrap();
        assert!(root.join("file").is_file());
        assert!(std::fs::symlink_metadata(root.join("dev-sda")).is_err());
        // A layer whose bytes are not its digest's is refused.
        std::fs::write(layout.join("blobs/sha256").join(&hex), b"tampered").unwrap();
        let tampered = Descriptor {
            size: 0,
            ..descriptor
        };
        assert!(apply_layer(&layout, &tampered, &root, &mut Allowance::new()).is_err());
    }
}
