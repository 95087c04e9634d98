//! Building an action's input root: directories from one GetTree, files
//! from a local content-addressed cache hard-linked into place, so an input
//! shared by many actions is downloaded once per machine, not per action.
//!
//! Cached files are read-only (0444, or 0555 when executable: the two are
//! separate cache entries because hard links share their mode).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::cas::Cas;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::reapi::Directory;

/// The machine's file cache under `--work-dir`.
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
}

impl FileCache {
    /// A cache in `dir` (created if needed).
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(FileCache { dir })
    }

    fn path(&self, digest: &Digest, executable: bool) -> PathBuf {
        let x = if executable { "x" } else { "r" };
        self.dir.join(format!(
            "{}-{}-{}-{x}",
            digest.function.name(),
            digest.hash_hex(),
            digest.size
        ))
    }
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

/// Creates the tree under `root` in `dest` (which must not exist).
pub async fn materialize(cas: &Cas, cache: &FileCache, root: &Digest, dest: &Path) -> Result<()> {
    let directories: HashMap<Digest, Directory> = cas
        .tree(root)
        .await?
        .into_iter()
        .map(|(d, bytes)| Ok((d, Directory::decode(bytes)?)))
        .collect::<Result<_>>()?;
    // Walk the tree: create directories and symlinks, note files.
    let mut files: Vec<(Digest, bool, PathBuf)> = Vec::new();
    let mut stack = vec![(*root, dest.to_path_buf())];
    std::fs::create_dir_all(dest).map_err(io("creating", dest))?;
    while let Some((digest, path)) = stack.pop() {
        let dir = directories.get(&digest).ok_or_else(|| {
            Error::NotFound(format!("input directory {digest} is not in the CAS"))
        })?;
        for f in &dir.files {
            check_name(&f.name)?;
            let d = Digest::from_proto(cas.function(), f.digest.as_ref(), "input file")?;
            files.push((d, f.is_executable, path.join(&f.name)));
        }
        for s in &dir.symlinks {
            check_name(&s.name)?;
            let link = path.join(&s.name);
            std::os::unix::fs::symlink(&s.target, &link).map_err(io("creating symlink", &link))?;
        }
        for sub in &dir.directories {
            check_name(&sub.name)?;
            let d = Digest::from_proto(cas.function(), sub.digest.as_ref(), "input directory")?;
            let p = path.join(&sub.name);
            std::fs::create_dir(&p).map_err(io("creating", &p))?;
            stack.push((d, p));
        }
    }
    // Fetch what the cache lacks, then link everything.
    let mut wanted: Vec<(Digest, PathBuf)> = Vec::new();
    let mut planned = std::collections::HashSet::new();
    for (d, x, _) in &files {
        let cached = cache.path(d, *x);
        if cached.exists() || !planned.insert(cached.clone()) {
            continue;
        }
        if d.is_empty_blob() {
            std::fs::write(&cached, b"").map_err(io("creating", &cached))?;
        }
        wanted.push((*d, cached));
    }
    let fetch: Vec<(Digest, PathBuf)> = wanted
        .iter()
        .filter(|(d, _)| !d.is_empty_blob())
        .cloned()
        .collect();
    cas.download(fetch).await?;
    for (_, cached) in &wanted {
        let executable = cached.to_string_lossy().ends_with("-x");
        let mode = if executable { 0o555 } else { 0o444 };
        std::fs::set_permissions(cached, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", cached))?;
    }
    for (d, x, path) in files {
        let cached = cache.path(&d, x);
        if std::fs::hard_link(&cached, &path).is_err() {
            // Another file system: copy instead.
            std::fs::copy(&cached, &path).map_err(io("copying to", &path))?;
        }
    }
    Ok(())
}

/// Refuses names that would escape the input root.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "input tree has an invalid name {name:?}"
        )));
    }
    Ok(())
}
