//! The tree an archive unpacks to, before it becomes Directory protos:
//! entries by path, the check that no symlink (followed through the others)
//! leaves the tree, and the bottom-up write of Directories to the sink.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use prost::Message;

use super::archive::{Content, Sink, refused};
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

/// Symlinks followed while checking where one symlink leads.
const MAX_LINK_HOPS: usize = 40;

#[derive(Debug, Default)]
pub(super) struct Dir {
    pub(super) entries: BTreeMap<String, Node>,
}

#[derive(Debug)]
pub(super) enum Node {
    File { digest: Digest, executable: bool },
    Symlink(String),
    Dir(Dir),
}

impl Dir {
    /// Adds an entry at `path`, creating parent directories; a path that
    /// is a file in one entry and a directory in another is refused.
    pub(super) fn insert(&mut self, path: Vec<String>, node: Node) -> Result<()> {
        let Some((last, parents)) = path.split_last() else {
            // The archive's root itself ("./"): nothing to record.
            return Ok(());
        };
        let mut dir = self;
        for c in parents {
            let next = dir
                .entries
                .entry(c.clone())
                .or_insert_with(|| Node::Dir(Dir::default()));
            match next {
                Node::Dir(d) => dir = d,
                _ => {
                    return Err(refused(format!(
                        "{} is both a file and a directory",
                        path.join("/")
                    )));
                }
            }
        }
        match (dir.entries.get(last), &node) {
            (Some(Node::Dir(_)), Node::Dir(_)) => {}
            (Some(Node::Dir(_)), _) => {
                return Err(refused(format!(
                    "{} is both a directory and a file",
                    path.join("/")
                )));
            }
            _ => {
                dir.entries.insert(last.clone(), node);
            }
        }
        Ok(())
    }
}

/// Takes the directory at `path` out of `root` (its symlinks are then
/// checked against it alone: one leading above it would leave the tree).
pub(super) fn take_dir(root: &mut Dir, path: &[String]) -> Option<Dir> {
    let mut dir = root;
    for c in path {
        match dir.entries.get_mut(c) {
            Some(Node::Dir(d)) => dir = d,
            _ => return None,
        }
    }
    Some(std::mem::take(dir))
}

/// Stores `dir`'s subdirectories, then `dir` itself; returns its digest.
/// Iterative (depth-first with an explicit stack), consuming the tree as it
/// goes, so no depth of archive recurses, on the way or when dropped.
pub(super) fn store_dir(
    dir: Dir,
    function: DigestFunction,
    max_directory: u64,
    sink: &mut Sink<'_>,
) -> Result<Digest> {
    struct Frame {
        name: String,
        proto: Directory,
        entries: std::collections::btree_map::IntoIter<String, Node>,
    }
    let frame = |name: String, dir: Dir| Frame {
        name,
        proto: Directory::default(),
        entries: dir.entries.into_iter(),
    };
    let mut stack = vec![frame(String::new(), dir)];
    loop {
        let top = stack.last_mut().expect("the root frame is popped last");
        // BTreeMap order is byte order of the names, as REAPI asks.
        match top.entries.next() {
            Some((name, Node::File { digest, executable })) => top.proto.files.push(FileNode {
                name,
                digest: Some(digest.to_proto()),
                is_executable: executable,
                ..Default::default()
            }),
            Some((name, Node::Symlink(target))) => top.proto.symlinks.push(SymlinkNode {
                name,
                target,
                ..Default::default()
            }),
            Some((name, Node::Dir(sub))) => stack.push(frame(name, sub)),
            None => {
                let done = stack.pop().expect("a frame");
                let encoded = Bytes::from(done.proto.encode_to_vec());
                if encoded.len() as u64 > max_directory {
                    return Err(refused(format!(
                        "a directory of {} entries encodes to {} bytes, more than the {max_directory} a client could read back (max_message_size)",
                        done.proto.files.len()
                            + done.proto.directories.len()
                            + done.proto.symlinks.len(),
                        encoded.len()
                    )));
                }
                let digest = function.digest_of(&encoded);
                sink(digest, Content::Bytes(encoded))?;
                match stack.last_mut() {
                    Some(parent) => parent.proto.directories.push(DirectoryNode {
                        name: done.name,
                        digest: Some(digest.to_proto()),
                    }),
                    None => return Ok(digest),
                }
            }
        }
    }
}

pub(super) fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

pub(super) fn lookup<'d>(root: &'d Dir, path: &[String]) -> Option<&'d Node> {
    let (last, parents) = path.split_last()?;
    let mut dir = root;
    for c in parents {
        match dir.entries.get(c)? {
            Node::Dir(d) => dir = d,
            _ => return None,
        }
    }
    dir.entries.get(last)
}

/// Every symlink, followed through the tree's other symlinks, must stay
/// inside `root`. Depth-first, keeping one path (no copy per directory).
pub(super) fn check_links(root: &Dir) -> Result<()> {
    let mut pending: Vec<(usize, Option<&String>, &Dir)> = vec![(0, None, root)];
    let mut at: Vec<String> = Vec::new();
    while let Some((depth, name, dir)) = pending.pop() {
        at.truncate(depth.saturating_sub(1));
        if let Some(n) = name {
            at.push(n.clone());
        }
        for (name, node) in &dir.entries {
            match node {
                Node::Dir(d) => pending.push((depth + 1, Some(name), d)),
                Node::Symlink(target) if !stays_inside(root, at.clone(), target) => {
                    let mut path = at.clone();
                    path.push(name.clone());
                    return Err(refused(format!(
                        "symlink {} -> {target:?} leads outside the archive",
                        path.join("/")
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether `target`, followed from the directory `at`, stays inside `root`
/// (symlinks met on the way are followed, up to [`MAX_LINK_HOPS`]).
fn stays_inside(root: &Dir, mut at: Vec<String>, target: &str) -> bool {
    let mut pending: VecDeque<String> = components(target).into();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if at.pop().is_none() {
                return false;
            }
            continue;
        }
        at.push(c);
        if let Some(Node::Symlink(next)) = lookup(root, &at) {
            hops += 1;
            if hops > MAX_LINK_HOPS || next.starts_with('/') {
                return false;
            }
            at.pop();
            for c in components(next).into_iter().rev() {
                pending.push_front(c);
            }
        }
    }
    true
}
