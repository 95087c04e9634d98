//! Building an action's input root: directories from one GetTree, files
//! from a local content-addressed cache hard-linked into place, so an input
//! shared by many actions is downloaded once per machine, not per action.
//!
//! Cached files are read-only (0444, or 0555 when executable: the two are
//! separate cache entries because hard links share their mode). The cache
//! keeps to `--cache-size`, evicting the least recently used files; an
//! evicted file still lives on in the input roots linked to it.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;

use super::cas::Cas;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::reapi::Directory;

/// The machine's file cache under `--work-dir`.
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
    limit: u64,
    state: Arc<Mutex<CacheState>>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Cached file → (size, last use).
    entries: HashMap<PathBuf, (u64, u64)>,
    total: u64,
    clock: u64,
}

impl FileCache {
    /// A cache in `dir` (created if needed) holding up to `limit` bytes;
    /// what a previous run left there is adopted.
    pub fn new(dir: PathBuf, limit: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut state = CacheState::default();
        for entry in std::fs::read_dir(&dir)
            .map_err(io("listing", &dir))?
            .flatten()
        {
            let path = entry.path();
            if path.to_string_lossy().contains(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                state.total += meta.len();
                state.entries.insert(path, (meta.len(), 0));
            }
        }
        let cache = FileCache {
            dir,
            limit,
            state: Arc::new(Mutex::new(state)),
        };
        cache.evict();
        Ok(cache)
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

    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Links each file into place from the cache, marking its use; returns
    /// the files whose cache entry is gone (evicted since it was checked).
    fn link_all(
        &self,
        files: Vec<(Digest, bool, PathBuf)>,
    ) -> Result<Vec<(Digest, bool, PathBuf)>> {
        let mut state = self.state();
        let mut gone = Vec::new();
        for (d, x, path) in files {
            let cached = self.path(&d, x);
            let linked = match std::fs::hard_link(&cached, &path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                // Another file system: copy instead.
                Err(_) => match std::fs::copy(&cached, &path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    other => other.map(|_| true).map_err(io("copying to", &path))?,
                },
                Ok(()) => true,
            };
            if !linked {
                state.entries.remove(&cached);
                gone.push((d, x, path));
                continue;
            }
            state.clock += 1;
            let clock = state.clock;
            match state.entries.get_mut(&cached) {
                Some(entry) => entry.1 = clock,
                None => {
                    state.total += d.size;
                    state.entries.insert(cached, (d.size, clock));
                }
            }
        }
        Ok(gone)
    }

    /// Deletes the least recently used files until the cache fits its
    /// limit (down to 90% of it, so eviction runs now and then, not always).
    fn evict(&self) {
        let mut state = self.state();
        if state.total <= self.limit {
            return;
        }
        let mut by_age: Vec<(u64, PathBuf, u64)> = state
            .entries
            .iter()
            .map(|(p, (size, used))| (*used, p.clone(), *size))
            .collect();
        by_age.sort();
        let target = self.limit / 10 * 9;
        for (_, path, size) in by_age {
            if state.total <= target {
                break;
            }
            let _ = std::fs::remove_file(&path);
            state.entries.remove(&path);
            state.total = state.total.saturating_sub(size);
        }
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
    // Fetch what the cache lacks, then link everything; files evicted by a
    // concurrent action in between are fetched again.
    for _ in 0..3 {
        fetch_missing(cas, cache, &files).await?;
        files = cache.link_all(files)?;
        if files.is_empty() {
            cache.evict();
            return Ok(());
        }
    }
    Err(Error::Unavailable(
        "the input cache keeps evicting this action's inputs: raise --cache-size".into(),
    ))
}

/// Downloads into the cache those of `files` it lacks.
async fn fetch_missing(
    cas: &Cas,
    cache: &FileCache,
    files: &[(Digest, bool, PathBuf)],
) -> Result<()> {
    let mut wanted: Vec<(Digest, PathBuf)> = Vec::new();
    let mut planned = std::collections::HashSet::new();
    for (d, x, _) in files {
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
