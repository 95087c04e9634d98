//! Container images for actions: the `container-image` platform property
//! runs an action with that image's root file system as its sandbox's
//! root. Images come from OCI image layouts (`oci-layout`, `index.json`
//! and `blobs/`): directories or `.tar` files of one the operator puts under
//! `--image-dir`, or a `.tar` of one stored in the CAS. They are verified
//! blob by blob against their digests and unpacked once per manifest
//! digest under the work dir.
//!
//! A reference names an image the way Bazel's RBE platforms do,
//! `docker://NAME[:TAG]` or `docker://NAME@sha256:HEX` (the `docker://` is
//! optional): a digest is matched against the manifests' digests, a name
//! against the layouts' `io.containerd.image.name` and
//! `org.opencontainers.image.ref.name` annotations. `cas://HASH/SIZE` names
//! a layout tarball in the CAS holding one image. An image the worker does
//! not have fails the action with FAILED_PRECONDITION naming it.
//!
//! A CAS blob is anyone's upload, so every layout and layer is treated as
//! hostile: paths stay inside the image (the tar reader's `unpack_in`),
//! device nodes, FIFOs and sockets are skipped, and an image may unpack to
//! at most [`MAX_IMAGE_BYTES`] and [`MAX_IMAGE_ENTRIES`].

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use layers::{Allowance, allowed_kind, unpack};

use crate::error::{Error, Result};

mod layers;

/// The platform property naming an action's image.
pub const IMAGE_PROPERTY: &str = "container-image";

/// The images a worker can run actions in.
#[derive(Debug, Clone)]
pub struct Images {
    sources: Vec<PathBuf>,
    cache: PathBuf,
    /// One layout tarball extracted at a time.
    extracting: Arc<std::sync::Mutex<()>>,
    /// One unpack at a time per manifest digest.
    unpacking: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// What a `container-image` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// `NAME:TAG` (tag `latest` when none is given), when named.
    name: Option<String>,
    /// `sha256:HEX`, when pinned.
    digest: Option<String>,
}

fn parse(value: &str) -> Result<Reference> {
    let text = value.strip_prefix("docker://").unwrap_or(value);
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "platform property {IMAGE_PROPERTY}={value:?}: {why} (expected docker://NAME[:TAG] or docker://NAME@sha256:HEX)"
        ))
    };
    if text.is_empty()
        || text.len() > 1024
        || text.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("not an image reference"));
    }
    let (name, digest) = match text.split_once('@') {
        Some((name, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("only sha256 digests"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(bad("a sha256 digest is 64 lowercase hex digits"));
            }
            (name, Some(digest.to_string()))
        }
        None => (text, None),
    };
    let name = if name.is_empty() {
        None
    } else if name
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        Some(name.to_string())
    } else {
        Some(format!("{name}:latest"))
    };
    Ok(Reference { name, digest })
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Manifests and layers larger than this are not image metadata.
const MAX_MANIFEST: u64 = 4 << 20;

impl Images {
    /// Images from the layouts in `sources`, unpacked under `cache`.
    pub fn new(sources: Vec<PathBuf>, cache: PathBuf) -> Result<Images> {
        for s in &sources {
            if !s.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "--image-dir {}: not a directory",
                    s.display()
                )));
            }
        }
        std::fs::create_dir_all(&cache)
            .map_err(|e| Error::io(format!("creating {}", cache.display()), e))?;
        // Leftovers of an unpack a crash cut short.
        for dir in [cache.clone(), cache.join("layouts")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().contains(".tmp-") {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        Ok(Images {
            sources,
            cache,
            extracting: Arc::default(),
            unpacking: Arc::default(),
        })
    }

    /// The unpacked root file system of the image `value` names (fetching
    /// a `cas://` layout through `cas`).
    pub async fn rootfs(&self, value: &str, cas: &super::cas::Cas) -> Result<PathBuf> {
        let this = self.clone();
        let (layout, manifest) = match value.strip_prefix("cas://") {
            Some(rest) => {
                let bad = |why: String| {
                    Error::InvalidArgument(format!(
                        "platform property {IMAGE_PROPERTY}={value:?}: {why} (expected cas://HASH/SIZE)"
                    ))
                };
                let (hash, size) = rest.split_once('/').ok_or_else(|| bad("no size".into()))?;
                let size: i64 = size
                    .parse()
                    .map_err(|_| bad("the size is not a number".into()))?;
                let digest = crate::digest::Digest::parse(cas.function(), hash, size)
                    .map_err(|e| bad(e.to_string()))?;
                let blobs = self.cache.join("blobs");
                let tarball = blobs.join(format!("{}-{}.tar", digest.hash_hex(), digest.size));
                if !tarball.is_file() {
                    std::fs::create_dir_all(&blobs)
                        .map_err(|e| Error::io("creating the image blob cache", e))?;
                    cas.download(vec![(digest, tarball.clone())])
                        .await
                        .map_err(|e| match e {
                            Error::NotFound(_) => Error::FailedPrecondition(format!(
                                "the container image {value:?} is not in the CAS"
                            )),
                            other => other,
                        })?;
                }
                tokio::task::spawn_blocking(move || this.only_image(&tarball))
                    .await
                    .map_err(|e| Error::internal(format!("resolving an image: {e}")))??
            }
            None => {
                let reference = parse(value)?;
                let value = value.to_string();
                tokio::task::spawn_blocking(move || this.resolve(&reference, &value))
                    .await
                    .map_err(|e| Error::internal(format!("resolving an image: {e}")))??
            }
        };
        let hex = manifest.digest.trim_start_matches("sha256:").to_string();
        let done = self.cache.join(&hex).join("rootfs");
        if done.is_dir() {
            return Ok(done);
        }
        let lock = {
            let mut all = self.unpacking.lock().await;
            all.entry(hex.clone()).or_default().clone()
        };
        let _held = lock.lock().await;
        if done.is_dir() {
            return Ok(done);
        }
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || unpack(&layout, &manifest, &cache, &hex))
            .await
            .map_err(|e| Error::internal(format!("unpacking an image: {e}")))??;
        Ok(done)
    }

    /// The layout and manifest `reference` names.
    fn resolve(&self, reference: &Reference, value: &str) -> Result<(PathBuf, Descriptor)> {
        for source in &self.sources {
            let Ok(entries) = std::fs::read_dir(source) else {
                continue;
            };
            let mut layouts: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            layouts.sort();
            for layout in layouts {
                let layout = if layout.extension().is_some_and(|x| x == "tar") && layout.is_file() {
                    match self.extracted(&layout) {
                        Ok(dir) => dir,
                        Err(e) => {
                            tracing::warn!(path = %layout.display(), error = %e, "an image layout tarball could not be read; skipped");
                            continue;
                        }
                    }
                } else {
                    layout
                };
                let index = layout.join("index.json");
                let Ok(text) = read_small(&index) else {
                    continue;
                };
                let Ok(index) = serde_json::from_slice::<Index>(&text) else {
                    tracing::warn!(path = %index.display(), "not an OCI image index; skipped");
                    continue;
                };
                for m in index.manifests {
                    if matches(reference, &m) {
                        return Ok((layout, m));
                    }
                }
            }
        }
        Err(Error::FailedPrecondition(format!(
            "this worker does not have the container image {value:?} (it runs images from the OCI layouts under --image-dir)"
        )))
    }
}

impl Images {
    /// The one image of a layout tarball (a `cas://` image).
    fn only_image(&self, tarball: &Path) -> Result<(PathBuf, Descriptor)> {
        let layout = self.extracted(tarball)?;
        let text = read_small(&layout.join("index.json"))?;
        let index: Index = serde_json::from_slice(&text).map_err(|e| {
            Error::InvalidArgument(format!("the image's index.json does not parse: {e}"))
        })?;
        match <[Descriptor; 1]>::try_from(index.manifests) {
            Ok([m]) => Ok((layout, m)),
            Err(all) => Err(Error::InvalidArgument(format!(
                "a cas:// image layout must hold one image, not {}",
                all.len()
            ))),
        }
    }

    /// A layout tarball, extracted once into the cache (keyed by its path,
    /// size and modification time, or by its CAS digest's file name).
    fn extracted(&self, tarball: &Path) -> Result<PathBuf> {
        let meta = std::fs::metadata(tarball)
            .map_err(|e| Error::io(format!("reading {}", tarball.display()), e))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = crate::digest::DigestFunction::Sha256
            .digest_of(format!("{}\n{}\n{mtime}", tarball.display(), meta.len()).as_bytes())
            .hash_hex();
        let dir = self.cache.join("layouts").join(&key[..32]);
        if dir.is_dir() {
            return Ok(dir);
        }
        let _one = self.extracting.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_dir() {
            return Ok(dir);
        }
        let tmp =
            self.cache
                .join("layouts")
                .join(format!("{}.tmp-{}", &key[..32], uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let result = (|| {
            let file = std::fs::File::open(tarball)
                .map_err(|e| Error::io(format!("opening {}", tarball.display()), e))?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(file));
            archive.set_preserve_ownerships(false);
            let mut allowance = Allowance::new();
            for entry in archive
                .entries()
                .map_err(|e| Error::InvalidArgument(format!("not a layout tarball: {e}")))?
            {
                let mut entry = entry
                    .map_err(|e| Error::InvalidArgument(format!("not a layout tarball: {e}")))?;
                if !allowed_kind(entry.header().entry_type()) {
                    continue;
                }
                allowance.take(entry.header().size().unwrap_or(0))?;
                entry.unpack_in(&tmp).map_err(|e| {
                    Error::InvalidArgument(format!("unpacking a layout tarball: {e}"))
                })?;
            }
            std::fs::rename(&tmp, &dir).map_err(|e| Error::io("placing a layout", e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|()| dir)
    }
}

fn matches(reference: &Reference, m: &Descriptor) -> bool {
    if let Some(d) = &reference.digest {
        return &m.digest == d;
    }
    let Some(name) = &reference.name else {
        return false;
    };
    let tag = name.rsplit_once(':').map(|(_, t)| t);
    m.annotations.get("io.containerd.image.name") == Some(name)
        || m.annotations
            .get("org.opencontainers.image.ref.name")
            .is_some_and(|r| r == name || Some(r.as_str()) == tag)
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut data = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if data.len() as u64 > MAX_MANIFEST {
        return Err(Error::InvalidArgument(format!(
            "{} is larger than {MAX_MANIFEST} bytes",
            path.display()
        )));
    }
    Ok(data)
}

/// A blob of `layout`, opened after checking its name is a plain digest.
fn blob_path(layout: &Path, d: &Descriptor) -> Result<PathBuf> {
    let hex = d.digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "image blob {:?}: only sha256 digests are supported",
            d.digest
        )));
    }
    let path = layout.join("blobs/sha256").join(hex);
    let len = std::fs::metadata(&path)
        .map_err(|e| Error::io(format!("image blob {}", d.digest), e))?
        .len();
    if d.size != 0 && len != d.size {
        return Err(Error::InvalidArgument(format!(
            "image blob {} holds {len} bytes: expected {}",
            d.digest, d.size
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_rbe_writes_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse("docker://busybox").unwrap(),
            Reference {
                name: Some("busybox:latest".into()),
                digest: None
            }
        );
        assert_eq!(
            parse("docker://reg.example:5000/team/img:1.2")
                .unwrap()
                .name
                .as_deref(),
            Some("reg.example:5000/team/img:1.2")
        );
        assert_eq!(
            parse("reg.example:5000/team/img").unwrap().name.as_deref(),
            Some("reg.example:5000/team/img:latest")
        );
        let pinned = parse(&format!("docker://img@{d}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(d.as_str()));
        for bad in ["", "docker://", "img@md5:00", "img@sha256:xyz", "a b"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
