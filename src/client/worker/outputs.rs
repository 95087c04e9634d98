//! Collecting an action's outputs into an ActionResult: files by digest,
//! directories as Tree messages, symlinks as symlinks, then one upload of
//! whatever the CAS lacks.
//!
//! Nothing here can be raced into reading outside the exec root: every
//! path is resolved from the root's file descriptor by the kernel
//! (`openat2` with `RESOLVE_BENEATH`), directories are walked one
//! descriptor at a time without following symlinks, files are opened with
//! `O_NOFOLLOW | O_NONBLOCK` and checked with `fstat` on the descriptor
//! that is then hashed, and only regular files, directories and symlinks
//! are accepted (a FIFO, socket or device is an error naming it). Output
//! bytes are capped by apparent size, so a sparse terabyte is refused
//! before a byte of it is read. Collection starts only after every process
//! of the action is gone (see `run.rs`).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use prost::Message;

use super::cas::{Cas, Source};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};

/// Most files, directories and symlinks one action's outputs may hold.
const MAX_OUTPUT_ENTRIES: u64 = 1_000_000;

/// What is left of an action's output allowance.
#[derive(Debug)]
pub struct Budget {
    bytes: u64,
    entries: u64,
    limit: u64,
}

impl Budget {
    /// An allowance of `bytes` (apparent sizes) of outputs and logs.
    pub fn new(bytes: u64) -> Budget {
        Budget {
            bytes,
            entries: MAX_OUTPUT_ENTRIES,
            limit: bytes,
        }
    }

    fn spend(&mut self, path: &Path, size: u64) -> Result<()> {
        self.entries = self.entries.checked_sub(1).ok_or_else(|| {
            Error::exhausted(format!(
                "the action left more than {MAX_OUTPUT_ENTRIES} output files, directories and symlinks"
            ))
        })?;
        self.bytes = self.bytes.checked_sub(size).ok_or_else(|| {
            Error::exhausted(format!(
                "the action's outputs exceed {} bytes (kiln worker --max-output-size) at {} ({size} bytes)",
                self.limit,
                path.display()
            ))
        })?;
        Ok(())
    }
}

/// The exec root, opened once; every output is resolved beneath it.
#[derive(Debug)]
pub struct Root(OwnedFd);

impl Root {
    /// Opens the exec root (which the worker created: not a symlink).
    pub fn open(path: &Path) -> Result<Root> {
        nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Root)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e.into()))
    }

    /// Opens `rel` beneath the root; symlinks are followed only while they
    /// stay beneath it (and not at all with `no_symlinks`).
    fn open_beneath(&self, rel: &Path, flags: OFlag, no_symlinks: bool) -> nix::Result<OwnedFd> {
        let mut resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if no_symlinks {
            resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
        }
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
            .resolve(resolve);
        nix::fcntl::openat2(self.0.as_fd(), rel, how)
    }

    /// Opens the regular file `rel` beneath the root for reading (uploads
    /// read files again through this, never by plain path).
    pub fn open_file(&self, rel: &Path) -> Result<std::fs::File> {
        let fd = self
            .open_beneath(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, false)
            .map_err(|e| Error::io(format!("opening output {}", rel.display()), e.into()))?;
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| Error::io(format!("reading output {}", rel.display()), e.into()))?;
        if kind(&st) != SFlag::S_IFREG {
            return Err(Error::InvalidArgument(format!(
                "output {} is no longer a regular file",
                rel.display()
            )));
        }
        Ok(std::fs::File::from(fd))
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn kind_name(k: SFlag) -> &'static str {
    match k {
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
}

fn not_allowed(rel: &Path, k: SFlag) -> Error {
    Error::InvalidArgument(format!(
        "output {} is a {}: only regular files, directories and symlinks can be outputs",
        rel.display(),
        kind_name(k)
    ))
}

fn io_err<'a>(what: &'a str, rel: &'a Path) -> impl Fn(Errno) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", rel.display()), e.into())
}

/// Hashes what an open descriptor holds.
fn hash_fd(function: DigestFunction, file: OwnedFd, rel: &Path) -> Result<Digest> {
    let mut file = std::fs::File::from(file);
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", rel.display()), e))?
        .len();
    let mut hasher = function.hasher(len);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading output {}", rel.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Opens `name` in `dir` for reading without following a symlink or
/// blocking on a FIFO.
fn open_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The opened descriptor's own status, which must be a regular file's.
fn regular_file(opened: nix::Result<OwnedFd>, rel: &Path) -> Result<(OwnedFd, FileStat)> {
    let fd = opened.map_err(io_err("opening", rel))?;
    let st = nix::sys::stat::fstat(&fd).map_err(io_err("reading", rel))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(not_allowed(rel, kind(&st)));
    }
    Ok((fd, st))
}

fn is_executable(st: &FileStat) -> bool {
    st.st_mode & 0o111 != 0
}

/// Everything collected, before the upload.
struct Collected {
    result: ActionResult,
    uploads: Vec<(Digest, Source)>,
}

struct Walk<'a> {
    root: &'a Arc<Root>,
    function: DigestFunction,
    budget: &'a mut Budget,
    uploads: Vec<(Digest, Source)>,
}

impl Walk<'_> {
    /// A regular file at `rel`, open as `fd` with `st`: hashed and noted.
    fn file(&mut self, rel: &Path, fd: OwnedFd, st: &FileStat) -> Result<Digest> {
        self.budget.spend(rel, st.st_size.max(0) as u64)?;
        let digest = hash_fd(self.function, fd, rel)?;
        self.uploads.push((
            digest,
            Source::Beneath(self.root.clone(), rel.to_path_buf()),
        ));
        Ok(digest)
    }

    /// The directory at `rel` (already known to be one), walked level by
    /// level without following symlinks: its Directory and every one below.
    fn tree(&mut self, rel: &Path) -> Result<(Directory, Vec<Directory>)> {
        struct Node {
            parent: usize,
            name: String,
            dir: Directory,
        }
        let mut nodes = vec![Node {
            parent: usize::MAX,
            name: String::new(),
            dir: Directory::default(),
        }];
        let mut queue = VecDeque::from([(0usize, rel.to_path_buf())]);
        while let Some((at, path)) = queue.pop_front() {
            let fd = self
                .root
                .open_beneath(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, true)
                .map_err(io_err("opening output directory", &path))?;
            let listing = nix::dir::Dir::from_fd(
                fd.try_clone()
                    .map_err(|e| Error::io(format!("listing {}", path.display()), e))?,
            )
            .map_err(io_err("listing", &path))?;
            let mut names: Vec<std::ffi::OsString> = Vec::new();
            for entry in listing {
                let entry = entry.map_err(io_err("listing", &path))?;
                let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
                if name != "." && name != ".." {
                    names.push(name.to_os_string());
                }
            }
            names.sort();
            for name in names {
                let child = path.join(&name);
                let st = nix::sys::stat::fstatat(
                    &fd,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(io_err("reading", &child))?;
                let text = name.to_string_lossy().into_owned();
                match kind(&st) {
                    SFlag::S_IFLNK => {
                        self.budget.spend(&child, 0)?;
                        let target = nix::fcntl::readlinkat(&fd, name.as_os_str())
                            .map_err(io_err("reading", &child))?;
                        nodes[at].dir.symlinks.push(SymlinkNode {
                            name: text,
                            target: target.to_string_lossy().into_owned(),
                            node_properties: None,
                        });
                    }
                    SFlag::S_IFDIR => {
                        self.budget.spend(&child, 0)?;
                        nodes.push(Node {
                            parent: at,
                            name: text,
                            dir: Directory::default(),
                        });
                        queue.push_back((nodes.len() - 1, child));
                    }
                    SFlag::S_IFREG => {
                        let (file, st) = regular_file(open_at(&fd, name.as_os_str()), &child)?;
                        let digest = self.file(&child, file, &st)?;
                        nodes[at].dir.files.push(FileNode {
                            name: text,
                            digest: Some(digest.to_proto()),
                            is_executable: is_executable(&st),
                            node_properties: None,
                        });
                    }
                    other => return Err(not_allowed(&child, other)),
                }
            }
        }
        // Children come after their parents: finish them last to first.
        let mut children = Vec::with_capacity(nodes.len().saturating_sub(1));
        for i in (1..nodes.len()).rev() {
            let mut dir = std::mem::take(&mut nodes[i].dir);
            sort_directory(&mut dir);
            let digest = self.function.digest_of(&dir.encode_to_vec());
            let (parent, name) = (nodes[i].parent, std::mem::take(&mut nodes[i].name));
            nodes[parent].dir.directories.push(DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            });
            children.push(dir);
        }
        let mut root = std::mem::take(&mut nodes[0].dir);
        sort_directory(&mut root);
        Ok((root, children))
    }
}

/// Directory nodes were added children-last; REAPI wants each list sorted.
fn sort_directory(dir: &mut Directory) {
    dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
}

use std::os::unix::ffi::OsStrExt;

/// Collects the outputs `command` declares (REAPI 2.0's output_files and
/// output_directories, or 2.1's output_paths) under `cwd` (relative to the
/// exec root) into `result` and uploads their content. Missing outputs are
/// left out, as REAPI says; an output whose parent leads out of the root
/// is an error; one that is itself a symlink is followed only while it
/// stays inside, and otherwise reported as a symlink.
pub async fn collect(
    cas: &Cas,
    command: &Command,
    root: Arc<Root>,
    cwd: &Path,
    budget: Budget,
    result: &mut ActionResult,
) -> Result<Budget> {
    let function = cas.function();
    let format = DirFormat::of(command);
    let declared: Vec<String> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .cloned()
            .collect()
    } else {
        command.output_paths.clone()
    };
    let cwd = cwd.to_path_buf();
    let (collected, budget) = tokio::task::spawn_blocking(move || {
        let mut budget = budget;
        let collected = walk_outputs(function, format, &root, &cwd, &declared, &mut budget)?;
        Ok::<_, Error>((collected, budget))
    })
    .await
    .map_err(|e| Error::internal(format!("collecting outputs: {e}")))??;
    result.output_files.extend(collected.result.output_files);
    result
        .output_directories
        .extend(collected.result.output_directories);
    result
        .output_file_symlinks
        .extend(collected.result.output_file_symlinks);
    result
        .output_symlinks
        .extend(collected.result.output_symlinks);
    cas.upload(collected.uploads).await?;
    Ok(budget)
}

/// How output directories are stored (REAPI 2.8's
/// `Command.output_directory_format`): as one Tree message, as Directory
/// messages (each its own blob, found from `root_directory_digest`), or both.
#[derive(Debug, Clone, Copy)]
struct DirFormat {
    tree: bool,
    directories: bool,
}

impl DirFormat {
    /// The format `command` asks for; a value this worker does not know is
    /// read as TREE_ONLY, as the protocol says.
    fn of(command: &Command) -> Self {
        use crate::proto::reapi::command::OutputDirectoryFormat as F;
        match command.output_directory_format() {
            F::TreeOnly => DirFormat {
                tree: true,
                directories: false,
            },
            F::DirectoryOnly => DirFormat {
                tree: false,
                directories: true,
            },
            F::TreeAndDirectory => DirFormat {
                tree: true,
                directories: true,
            },
        }
    }
}

fn walk_outputs(
    function: DigestFunction,
    format: DirFormat,
    root: &Arc<Root>,
    cwd: &Path,
    declared: &[String],
    budget: &mut Budget,
) -> Result<Collected> {
    let mut walk = Walk {
        root,
        function,
        budget,
        uploads: Vec::new(),
    };
    let mut result = ActionResult::default();
    for out in declared {
        let rel = cwd.join(out);
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => continue,
        };
        let parent_fd = match root.open_beneath(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY, false)
        {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(Errno::EXDEV | Errno::ELOOP) => {
                return Err(Error::InvalidArgument(format!(
                    "output {out:?} lies under a symlink leading outside the input root"
                )));
            }
            Err(e) => return Err(io_err("opening", parent)(e)),
        };
        let st = match nix::sys::stat::fstatat(
            &parent_fd,
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io_err("reading", &rel)(e)),
        };
        // A symlink is followed while it resolves beneath the root.
        let (fd, st) = if kind(&st) == SFlag::S_IFLNK {
            match root.open_beneath(&rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, false) {
                Ok(fd) => {
                    let st = nix::sys::stat::fstat(&fd).map_err(io_err("reading", &rel))?;
                    (Some(fd), st)
                }
                Err(_) => {
                    walk.budget.spend(&rel, 0)?;
                    let target = nix::fcntl::readlinkat(&parent_fd, name)
                        .map_err(io_err("reading", &rel))?;
                    let symlink = OutputSymlink {
                        path: out.clone(),
                        target: target.to_string_lossy().into_owned(),
                        node_properties: None,
                    };
                    result.output_file_symlinks.push(symlink.clone());
                    result.output_symlinks.push(symlink);
                    continue;
                }
            }
        } else {
            (None, st)
        };
        match kind(&st) {
            SFlag::S_IFDIR => {
                drop(fd);
                let (root_dir, children) = walk.tree(&rel)?;
                let mut output = OutputDirectory {
                    path: out.clone(),
                    ..Default::default()
                };
                if format.directories {
                    // Each Directory as a blob of its own (equal subtrees
                    // once), the root's digest the entry point.
                    let mut seen = std::collections::HashSet::new();
                    for dir in std::iter::once(&root_dir).chain(&children) {
                        let bytes = bytes::Bytes::from(dir.encode_to_vec());
                        let digest = function.digest_of(&bytes);
                        // The root comes first: its digest is the entry point.
                        output
                            .root_directory_digest
                            .get_or_insert(digest.to_proto());
                        if seen.insert(digest) {
                            walk.uploads.push((digest, Source::Bytes(bytes)));
                        }
                    }
                }
                if format.tree {
                    let tree = Tree {
                        root: Some(root_dir),
                        children,
                    };
                    let bytes = bytes::Bytes::from(tree.encode_to_vec());
                    let tree_digest = function.digest_of(&bytes);
                    walk.uploads.push((tree_digest, Source::Bytes(bytes)));
                    output.tree_digest = Some(tree_digest.to_proto());
                }
                result.output_directories.push(output);
            }
            SFlag::S_IFREG => {
                let opened = match fd {
                    Some(fd) => Ok(fd),
                    None => open_at(&parent_fd, name),
                };
                let (fd, st) = regular_file(opened, &rel)?;
                let digest = walk.file(&rel, fd, &st)?;
                result.output_files.push(OutputFile {
                    path: out.clone(),
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&st),
                    contents: bytes::Bytes::new(),
                    node_properties: None,
                });
            }
            other => return Err(not_allowed(&rel, other)),
        }
    }
    Ok(Collected {
        result,
        uploads: walk.uploads,
    })
}

/// Uploads a log file (the worker's own, outside the exec root) and returns
/// its digest; its size counts against the output allowance.
pub async fn log(cas: &Cas, path: &Path, budget: &mut Budget) -> Result<Digest> {
    let path_owned: PathBuf = path.to_path_buf();
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    budget.spend(path, size)?;
    let function = cas.function();
    let digest = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path_owned)
            .map_err(|e| Error::io(format!("opening {}", path_owned.display()), e))?;
        hash_fd(function, OwnedFd::from(file), &path_owned)
    })
    .await
    .map_err(|e| Error::internal(format!("hashing a log: {e}")))??;
    cas.upload(vec![(digest, Source::File(path.to_path_buf()))])
        .await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect_here(root: &Path, outs: &[&str], budget: u64) -> Result<Collected> {
        let r = Arc::new(Root::open(root).unwrap());
        let outs: Vec<String> = outs.iter().map(|s| s.to_string()).collect();
        walk_outputs(
            DigestFunction::Sha256,
            DirFormat {
                tree: true,
                directories: false,
            },
            &r,
            Path::new(""),
            &outs,
            &mut Budget::new(budget),
        )
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("out"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = collect_here(dir.path(), &["out"], 1 << 20).err().unwrap();
        assert!(e.to_string().contains("FIFO"), "{e}");
        std::fs::create_dir(dir.path().join("d")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("d/f"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = collect_here(dir.path(), &["d"], 1 << 20).err().unwrap();
        assert!(e.to_string().contains("d/f"), "{e}");
    }

    #[test]
    fn a_sparse_file_counts_at_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("big")).unwrap();
        f.set_len(1 << 40).unwrap();
        let e = collect_here(dir.path(), &["big"], 1 << 30).err().unwrap();
        assert!(matches!(e, Error::ResourceExhausted { .. }), "{e}");
    }

    #[test]
    fn nothing_outside_the_root_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(dir.path().join("secret")).unwrap();
        std::fs::write(dir.path().join("secret/key"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("../secret/key", root.join("file")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("d/link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("via")).unwrap();
        let c = collect_here(&root, &["out", "file", "d"], 1 << 20).unwrap();
        assert!(c.result.output_files.is_empty());
        assert_eq!(c.result.output_symlinks.len(), 2, "reported, not followed");
        assert_eq!(c.result.output_directories.len(), 1);
        assert!(
            c.uploads
                .iter()
                .all(|(_, s)| !matches!(s, Source::Beneath(..))),
            "no file was read"
        );
        let e = collect_here(&root, &["via/key"], 1 << 20).err().unwrap();
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn a_deep_tree_is_walked_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = dir.path().join("out");
        for _ in 0..200 {
            p = p.join("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("f"), b"x").unwrap();
        let c = collect_here(dir.path(), &["out"], 1 << 20).unwrap();
        let tree = c
            .uploads
            .iter()
            .find_map(|(_, s)| match s {
                Source::Bytes(b) => Some(Tree::decode(&b[..]).unwrap()),
                _ => None,
            })
            .unwrap();
        assert_eq!(tree.children.len(), 200);
    }
}
