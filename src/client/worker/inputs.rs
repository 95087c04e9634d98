//! Building an action's input root: directories from one GetTree, files
//! from a local content-addressed cache hard-linked into place, so an input
//! shared by many actions is downloaded once per machine, not per action.
//!
//! Cached files are read-only (0444, or 0555 when executable: the two are
//! separate cache entries because hard links share their mode). The cache
//! keeps to `--cache-size`, evicting the least recently used files; an
//! evicted file still lives on in the input roots linked to it.
//!
//! Hard links are only safe when actions run as another user than the
//! cache's owner (see [`super::confine`]); otherwise files are copied out
//! and re-hashed on the way, so a tampered cache file is never served.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;

use super::cas::Cas;
use super::confine::{self, ActionUser};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::execution::validate::check_directory;
use crate::proto::reapi::Directory;

/// Most files, directories and symlinks one input root may have: a small
/// Merkle tree can name one directory many times, and each is made anew.
pub const MAX_INPUT_ENTRIES: usize = 1_000_000;

/// The machine's file cache under `--work-dir`.
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
    limit: u64,
    state: Arc<Mutex<CacheState>>,
    /// Hard-link inputs (actions run as another user, who cannot change
    /// them); otherwise copy them out, re-verifying each copy.
    link: bool,
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
    pub fn new(dir: PathBuf, limit: u64, link: bool) -> Result<Self> {
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
            link,
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

    /// The cache directory, for setting its mode.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Puts one cached file at `path`, which must not exist (nothing is
    /// ever written through an existing name). False when the cache entry
    /// is gone or, when copying, no longer matches its digest.
    fn place(&self, digest: &Digest, cached: &Path, path: &Path) -> Result<bool> {
        if self.link {
            match std::fs::hard_link(cached, path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                // Another file system: copy instead.
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
                Err(e) => return Err(io("linking", path)(e)),
            }
        }
        copy_verified(digest, cached, path, !self.link)
    }

    /// Places each file from the cache, marking its use; returns the files
    /// whose cache entry is gone (evicted since it was checked, or found
    /// damaged and removed).
    fn link_all(
        &self,
        files: Vec<(Digest, bool, PathBuf)>,
    ) -> Result<Vec<(Digest, bool, PathBuf)>> {
        let mut gone = Vec::new();
        for (d, x, path) in files {
            let cached = self.path(&d, x);
            // Copies hash the file: outside the lock.
            let placed = self.place(&d, &cached, &path)?;
            let mut state = self.state();
            if !placed {
                if let Some((size, _)) = state.entries.remove(&cached) {
                    state.total = state.total.saturating_sub(size);
                }
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

/// Creates the tree under `root` in `dest` (which must not exist), every
/// directory handed to `user`; refuses a tree whose directories are
/// malformed or that expands past [`MAX_INPUT_ENTRIES`] or past the cache.
pub async fn materialize(
    cas: &Cas,
    cache: &FileCache,
    root: &Digest,
    dest: &Path,
    user: Option<ActionUser>,
) -> Result<()> {
    let directories: HashMap<Digest, Directory> = cas
        .tree(root)
        .await?
        .into_iter()
        .map(|(d, bytes)| {
            let dir = Directory::decode(bytes)?;
            check_directory(&dir)?;
            Ok((d, dir))
        })
        .collect::<Result<_>>()?;
    // Counted before anything touches the disk: a small Merkle tree can
    // name one directory many times, and each is made anew.
    let expanded = expansion(cas.function(), root, &directories)?;
    if expanded.entries > MAX_INPUT_ENTRIES as u64 {
        return Err(Error::InvalidArgument(format!(
            "the input root expands to {} files, directories and symlinks: expected at most {MAX_INPUT_ENTRIES}",
            expanded.entries
        )));
    }
    // Walk the tree: create directories and symlinks, note files.
    let mut files: Vec<(Digest, bool, PathBuf)> = Vec::new();
    let mut stack = vec![(*root, dest.to_path_buf())];
    std::fs::create_dir_all(dest).map_err(io("creating", dest))?;
    confine::hand_over(dest, user)?;
    let mut entries = 0usize;
    let mut distinct = std::collections::HashSet::new();
    let mut distinct_bytes = 0u64;
    while let Some((digest, path)) = stack.pop() {
        let dir = directories.get(&digest).ok_or_else(|| {
            Error::NotFound(format!("input directory {digest} is not in the CAS"))
        })?;
        entries += dir.files.len() + dir.symlinks.len() + dir.directories.len();
        if entries > MAX_INPUT_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "the input root expands to more than {MAX_INPUT_ENTRIES} files, directories and symlinks"
            )));
        }
        for f in &dir.files {
            let d = Digest::from_proto(cas.function(), f.digest.as_ref(), "input file")?;
            if distinct.insert((d, f.is_executable)) {
                distinct_bytes = distinct_bytes.saturating_add(d.size);
            }
            files.push((d, f.is_executable, path.join(&f.name)));
        }
        for s in &dir.symlinks {
            let link = path.join(&s.name);
            std::os::unix::fs::symlink(&s.target, &link).map_err(io("creating symlink", &link))?;
        }
        for sub in &dir.directories {
            let d = Digest::from_proto(cas.function(), sub.digest.as_ref(), "input directory")?;
            let p = path.join(&sub.name);
            std::fs::create_dir(&p).map_err(io("creating", &p))?;
            confine::hand_over(&p, user)?;
            stack.push((d, p));
        }
    }
    if distinct_bytes > cache.limit {
        return Err(Error::InvalidArgument(format!(
            "the inputs hold {distinct_bytes} bytes: expected at most the {} of --cache-size",
            cache.limit
        )));
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

/// What an input root expands to on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Expansion {
    /// Files, directories and symlinks (saturating).
    entries: u64,
    /// Bytes of files, each place a file appears counted (saturating).
    bytes: u64,
}

/// Counts what `root` expands to from its Directory messages alone, each
/// distinct directory once (memoised, iteratively: no recursion to
/// overflow, no work proportional to the expansion).
fn expansion(
    function: crate::digest::DigestFunction,
    root: &Digest,
    directories: &HashMap<Digest, Directory>,
) -> Result<Expansion> {
    let mut done: HashMap<Digest, Expansion> = HashMap::new();
    let mut open = std::collections::HashSet::new();
    let mut stack = vec![*root];
    while let Some(&at) = stack.last() {
        if done.contains_key(&at) {
            stack.pop();
            continue;
        }
        let dir = directories
            .get(&at)
            .ok_or_else(|| Error::NotFound(format!("input directory {at} is not in the CAS")))?;
        let mut children = Vec::with_capacity(dir.directories.len());
        for sub in &dir.directories {
            children.push(Digest::from_proto(
                function,
                sub.digest.as_ref(),
                "input directory",
            )?);
        }
        let waiting: Vec<Digest> = children
            .iter()
            .filter(|c| !done.contains_key(*c))
            .copied()
            .collect();
        if !waiting.is_empty() {
            if !open.insert(at) {
                return Err(Error::InvalidArgument(format!(
                    "input directory {at} contains itself"
                )));
            }
            stack.extend(waiting);
            continue;
        }
        let mut total = Expansion {
            entries: (dir.files.len() + dir.symlinks.len() + dir.directories.len()) as u64,
            bytes: 0,
        };
        for f in &dir.files {
            let d = Digest::from_proto(function, f.digest.as_ref(), "input file")?;
            total.bytes = total.bytes.saturating_add(d.size);
        }
        for c in &children {
            let sub = done[c];
            total.entries = total.entries.saturating_add(sub.entries);
            total.bytes = total.bytes.saturating_add(sub.bytes);
        }
        open.remove(&at);
        done.insert(at, total);
        stack.pop();
    }
    Ok(done[root])
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

/// Copies a cached file to `dest` (created new: never through an existing
/// name), hashing it on the way when `verify`; a copy that does not match
/// its digest is removed together with the cache entry, and reported gone.
fn copy_verified(digest: &Digest, cached: &Path, dest: &Path, verify: bool) -> Result<bool> {
    use std::io::{Read, Write};
    let mut src = match std::fs::File::open(cached) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("opening", cached)(e)),
    };
    let mode = src
        .metadata()
        .map_err(io("reading", cached))?
        .permissions()
        .mode();
    let mut out = std::fs::File::create_new(dest).map_err(io("creating", dest))?;
    let mut hasher = digest.function.hasher(digest.size);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = src.read(&mut buf).map_err(io("reading", cached))?;
        if n == 0 {
            break;
        }
        if verify {
            hasher.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(io("writing", dest))?;
    }
    if verify && hasher.finish() != *digest {
        tracing::warn!(path = %cached.display(), "a cached input no longer matches its digest; fetching it again");
        drop(out);
        let _ = std::fs::remove_file(dest);
        let _ = std::fs::remove_file(cached);
        return Ok(false);
    }
    out.set_permissions(std::fs::Permissions::from_mode(mode & 0o555))
        .map_err(io("setting the mode of", dest))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn a_dag_bomb_is_counted_without_expanding_it() {
        let f = DigestFunction::Sha256;
        let mut directories = HashMap::new();
        let leaf = Directory {
            files: vec![crate::proto::reapi::FileNode {
                name: "f".into(),
                digest: Some(f.digest_of(b"x").to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut below = f.digest_of(&leaf.encode_to_vec());
        directories.insert(below, leaf);
        // 60 levels, each naming the one below twice: 2^60 leaves.
        for _ in 0..60 {
            let node = |name: &str| crate::proto::reapi::DirectoryNode {
                name: name.into(),
                digest: Some(below.to_proto()),
            };
            let dir = Directory {
                directories: vec![node("a"), node("b")],
                ..Default::default()
            };
            below = f.digest_of(&dir.encode_to_vec());
            directories.insert(below, dir);
        }
        let started = std::time::Instant::now();
        let e = expansion(f, &below, &directories).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(e.entries > 1u64 << 60, "{e:?}");
        assert_eq!(e.bytes, 1u64 << 60);
    }

    #[test]
    fn a_tampered_cache_file_is_never_copied_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"the real input";
        let d = DigestFunction::Sha256.digest_of(data);
        let cached = dir.path().join("cached");
        std::fs::write(&cached, data).unwrap();
        assert!(copy_verified(&d, &cached, &dir.path().join("a"), true).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), data);
        std::fs::write(&cached, b"tampered!!!!!!").unwrap();
        assert!(!copy_verified(&d, &cached, &dir.path().join("b"), true).unwrap());
        assert!(!dir.path().join("b").exists(), "no tampered copy is left");
        assert!(!cached.exists(), "the damaged entry is dropped");
    }

    #[test]
    fn nothing_is_written_through_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"input";
        let d = DigestFunction::Sha256.digest_of(data);
        let cached = dir.path().join("cached");
        std::fs::write(&cached, data).unwrap();
        let target = dir.path().join("host-file");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(copy_verified(&d, &cached, &link, true).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
