//! The input paths whose content differs between two versions of an
//! action: both input trees walked side by side from the roots, a
//! subdirectory entered only where its digests differ, so an unchanged
//! subtree costs nothing. Bounded in directories read and causes found.

use std::collections::{BTreeMap, VecDeque};

use prost::Message;

use super::diff::Cause;
use crate::digest::Digest;
use crate::error::Result;
use crate::proto::reapi::Directory;
use crate::store::{BlobStore, get_parsed_blob};

/// Directory pairs read at most per comparison.
const MAX_DIRECTORIES: usize = 4096;

/// Causes collected at most (the caller keeps fewer and counts the rest).
const MAX_FOUND: usize = 64;

/// Largest Directory blob read.
const MAX_DIRECTORY: u64 = 4 << 20;

/// What one side of a directory holds, by name: a file's digest and
/// executable bit, a symlink's target, or a subdirectory's digest.
#[derive(PartialEq, Eq, Clone)]
enum Entry {
    File(Digest, bool),
    Link(String),
    Dir(Digest),
}

fn entries(dir: &Directory, function: crate::digest::DigestFunction) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for f in &dir.files {
        if let Ok(d) = Digest::from_proto(function, f.digest.as_ref(), "file") {
            out.insert(f.name.clone(), Entry::File(d, f.is_executable));
        }
    }
    for l in &dir.symlinks {
        out.insert(l.name.clone(), Entry::Link(l.target.clone()));
    }
    for s in &dir.directories {
        if let Ok(d) = Digest::from_proto(function, s.digest.as_ref(), "directory") {
            out.insert(s.name.clone(), Entry::Dir(d));
        }
    }
    out
}

/// A directory of one tree, or None when it cannot be compared: absent,
/// larger than [`MAX_DIRECTORY`] or not a Directory. Only a failing store
/// is an error.
async fn read(cas: &dyn BlobStore, digest: &Digest) -> Result<Option<Directory>> {
    use crate::error::Error;
    match get_parsed_blob(cas, digest, MAX_DIRECTORY).await {
        Ok(bytes) => Ok(Directory::decode(bytes).ok()),
        Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn input(path: &str, change: &str) -> Cause {
    Cause::new(
        "input",
        path,
        format!("input {} {change}", super::diff::cut(path)),
    )
}

/// The differing input paths of two input roots, or one `inputs` cause
/// when a tree is not in the CAS to compare (a client that only caches
/// uploads its Action and Command, not its input tree).
pub(crate) async fn compare(
    cas: &dyn BlobStore,
    before: Digest,
    after: Digest,
) -> Result<Vec<Cause>> {
    let function = after.function;
    let mut causes = Vec::new();
    let mut queue = VecDeque::from([(String::new(), before, after)]);
    let mut read_pairs = 0;
    while let Some((path, old, new)) = queue.pop_front() {
        if causes.len() >= MAX_FOUND {
            break;
        }
        if read_pairs >= MAX_DIRECTORIES {
            causes.push(Cause::new(
                "input",
                &path,
                format!(
                    "inputs under {} and more changed (comparison stopped)",
                    display(&path)
                ),
            ));
            break;
        }
        read_pairs += 1;
        let (Some(a), Some(b)) = (read(cas, &old).await?, read(cas, &new).await?) else {
            causes.push(Cause::new(
                "inputs",
                &path,
                format!(
                    "inputs under {} changed (input tree {} → {}; not stored to compare)",
                    display(&path),
                    short(&old),
                    short(&new)
                ),
            ));
            continue;
        };
        let (a, b) = (entries(&a, function), entries(&b, function));
        for (name, was) in &a {
            let at = join(&path, name);
            match (was, b.get(name)) {
                (_, None) => causes.push(input(&at, "removed")),
                (Entry::Dir(x), Some(Entry::Dir(y))) if x != y => {
                    queue.push_back((at, *x, *y));
                }
                (was, Some(now)) if was != now => causes.push(input(&at, "changed")),
                _ => {}
            }
        }
        for name in b.keys().filter(|n| !a.contains_key(*n)) {
            causes.push(input(&join(&path, name), "added"));
        }
    }
    Ok(causes)
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "the input root"
    } else {
        path
    }
}

/// The first 12 hex digits, enough to tell two trees apart on a page.
fn short(d: &Digest) -> String {
    d.hash_hex()[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::{DirectoryNode, FileNode};
    use crate::store::memory::MemoryStore;

    async fn put(cas: &MemoryStore, dir: &Directory) -> Digest {
        let bytes = bytes::Bytes::from(dir.encode_to_vec());
        let d = DigestFunction::Sha256.digest_of(&bytes);
        cas.put(&d, bytes.into()).await.unwrap();
        d
    }

    fn file(name: &str, content: &[u8]) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(DigestFunction::Sha256.digest_of(content).to_proto()),
            ..Default::default()
        }
    }

    async fn tree(cas: &MemoryStore, header: &[u8], extra: bool) -> Digest {
        let mut lib = Directory {
            files: vec![file("util.cc", b"cc"), file("util.h", header)],
            ..Default::default()
        };
        if extra {
            lib.files.push(file("zz.h", b"new"));
        }
        let lib = put(cas, &lib).await;
        let same = put(
            cas,
            &Directory {
                files: vec![file("big.txt", b"unchanged")],
                ..Default::default()
            },
        )
        .await;
        put(
            cas,
            &Directory {
                files: vec![file("BUILD", b"build")],
                directories: vec![
                    DirectoryNode {
                        name: "lib".into(),
                        digest: Some(lib.to_proto()),
                    },
                    DirectoryNode {
                        name: "same".into(),
                        digest: Some(same.to_proto()),
                    },
                ],
                ..Default::default()
            },
        )
        .await
    }

    #[tokio::test]
    async fn names_the_changed_and_added_paths() {
        let cas = MemoryStore::new(1 << 20);
        let a = tree(&cas, b"v1", false).await;
        let b = tree(&cas, b"v2", true).await;
        let texts: Vec<String> = compare(&cas, a, b)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(texts, ["input lib/util.h changed", "input lib/zz.h added"]);
        assert!(compare(&cas, a, a).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_root_too_large_to_read_is_a_cause_not_an_error() {
        let cas = MemoryStore::new(16 << 20);
        let a = tree(&cas, b"v1", false).await;
        let big = bytes::Bytes::from(vec![7u8; (MAX_DIRECTORY + 1) as usize]);
        let d = DigestFunction::Sha256.digest_of(&big);
        cas.put(&d, big.into()).await.unwrap();
        let causes = compare(&cas, a, d).await.unwrap();
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].kind, "inputs");
    }

    #[tokio::test]
    async fn a_tree_not_stored_is_one_cause_naming_both_roots() {
        let cas = MemoryStore::new(1 << 20);
        let a = tree(&cas, b"v1", false).await;
        let absent = DigestFunction::Sha256.digest_of(b"not a stored tree");
        let causes = compare(&cas, a, absent).await.unwrap();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].kind, "inputs");
        assert!(causes[0].text.contains("the input root"), "{causes:?}");
    }
}
