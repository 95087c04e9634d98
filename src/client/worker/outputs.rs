//! Collecting an action's outputs into an ActionResult: files by digest,
//! directories as Tree messages, dangling symlinks as symlinks, then one
//! upload of whatever the CAS lacks.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use prost::Message;
use tokio::io::AsyncReadExt;

use super::cas::{Cas, Source};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};

/// Hashes a file by streaming it.
pub async fn hash_file(function: DigestFunction, path: &Path) -> Result<Digest> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut hasher = function.hasher();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

fn is_executable(meta: &std::fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Builds the Directory for `dir` (and every one below it, into `children`),
/// noting each file to upload. Symlinks inside are kept as symlinks.
fn directory<'a>(
    function: DigestFunction,
    dir: &'a Path,
    children: &'a mut Vec<Directory>,
    uploads: &'a mut Vec<(Digest, Source)>,
) -> futures::future::BoxFuture<'a, Result<Directory>> {
    Box::pin(async move {
        let mut out = Directory::default();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                out.symlinks.push(SymlinkNode {
                    name,
                    target: target.to_string_lossy().into_owned(),
                    node_properties: None,
                });
            } else if meta.is_dir() {
                let sub = directory(function, &path, children, uploads).await?;
                let bytes = sub.encode_to_vec();
                let digest = function.digest_of(&bytes);
                children.push(sub);
                out.directories.push(DirectoryNode {
                    name,
                    digest: Some(digest.to_proto()),
                });
            } else {
                let digest = hash_file(function, &path).await?;
                uploads.push((digest, Source::File(path.clone())));
                out.files.push(FileNode {
                    name,
                    digest: Some(digest.to_proto()),
                    is_executable: is_executable(&meta),
                    node_properties: None,
                });
            }
        }
        Ok(out)
    })
}

/// Collects the outputs `command` declares (REAPI 2.0's output_files and
/// output_directories, or 2.1's output_paths) from `cwd` into `result` and
/// uploads their content. Missing outputs are left out, as REAPI says.
/// Nothing outside `root` (canonical) is ever read: an output whose parent
/// leads out is an error, one that is itself a symlink leading out is
/// reported as a symlink, never followed.
pub async fn collect(
    cas: &Cas,
    command: &Command,
    root: &Path,
    cwd: &Path,
    result: &mut ActionResult,
) -> Result<()> {
    let function = cas.function();
    let mut uploads: Vec<(Digest, Source)> = Vec::new();
    let declared: Vec<&String> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .collect()
    } else {
        command.output_paths.iter().collect()
    };
    for rel in declared {
        let path = cwd.join(rel);
        if let Some(parent) = path.parent() {
            match std::fs::canonicalize(parent) {
                Ok(real) if real.starts_with(root) => {}
                Ok(real) => {
                    return Err(Error::InvalidArgument(format!(
                        "output {rel:?} lies under {}, outside the input root",
                        real.display()
                    )));
                }
                Err(_) => continue,
            }
        }
        let Ok(link_meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // Symlinks are followed when they resolve inside the root; a
        // dangling one, or one leading out, is reported as a symlink.
        let inside = std::fs::canonicalize(&path).is_ok_and(|real| real.starts_with(root));
        let meta = match std::fs::metadata(&path) {
            Ok(m) if inside => m,
            _ if link_meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let symlink = OutputSymlink {
                    path: rel.clone(),
                    target: target.to_string_lossy().into_owned(),
                    node_properties: None,
                };
                result.output_file_symlinks.push(symlink.clone());
                result.output_symlinks.push(symlink);
                continue;
            }
            Ok(_) => continue,
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        if meta.is_dir() {
            let mut children = Vec::new();
            let root_dir = directory(function, &path, &mut children, &mut uploads).await?;
            let root_digest = function.digest_of(&root_dir.encode_to_vec());
            let tree = Tree {
                root: Some(root_dir),
                children,
            };
            let bytes = bytes::Bytes::from(tree.encode_to_vec());
            let tree_digest = function.digest_of(&bytes);
            uploads.push((tree_digest, Source::Bytes(bytes)));
            result.output_directories.push(OutputDirectory {
                path: rel.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                is_topologically_sorted: false,
                root_directory_digest: Some(root_digest.to_proto()),
            });
        } else {
            let digest = hash_file(function, &path).await?;
            uploads.push((digest, Source::File(path.clone())));
            result.output_files.push(OutputFile {
                path: rel.clone(),
                digest: Some(digest.to_proto()),
                is_executable: is_executable(&meta),
                contents: bytes::Bytes::new(),
                node_properties: None,
            });
        }
    }
    cas.upload(uploads).await
}

/// Uploads a log file and returns its digest.
pub async fn log(cas: &Cas, path: &Path) -> Result<Digest> {
    let digest = hash_file(cas.function(), path).await?;
    cas.upload(vec![(digest, Source::File(path.to_path_buf()))])
        .await?;
    Ok(digest)
}
