//! GetTree's domain logic: walking a Directory Merkle tree level by level with
//! bounded parallel reads, paging the result, and caching complete trees.
//!
//! Missing subtrees are omitted, as REAPI says; a tree with holes is served
//! but never cached, so a later upload of the missing part is seen at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use moka::future::Cache;
use prost::Message;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::reapi::Directory;
use crate::store::{BlobStore, get_parsed_blob};

/// The directories of a tree in breadth-first order, root first, each once,
/// encoded exactly as stored in the CAS.
pub type TreeNodes = Arc<Vec<Bytes>>;

/// The result of a walk.
#[derive(Debug)]
pub struct Walk {
    /// Every directory that could be read, as stored.
    pub directories: Vec<Bytes>,
    /// False when some subtree was missing from the CAS.
    pub complete: bool,
    /// The directories that were missing (Execute reports them to clients).
    pub missing: Vec<Digest>,
}

/// How much one walk may read: a client names the root, so these bound the
/// memory and work one request can cause whatever tree it stored.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Directories fetched in parallel per level.
    pub concurrency: usize,
    /// Largest single Directory blob read whole.
    pub max_directory: u64,
    /// Largest total of the encoded directories of one tree (each distinct
    /// directory counted once).
    pub max_total: u64,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            concurrency: 32,
            max_directory: 16 << 20,
            max_total: 128 << 20,
        }
    }
}

/// The decoded Directories of the tree under `root`, or None when the root
/// or any subtree is missing: what the completeness checks of action
/// results and Remote Asset records share.
pub async fn complete_directories(
    cas: &dyn BlobStore,
    root: Digest,
    limits: WalkLimits,
) -> Result<Option<Vec<Directory>>> {
    match walk(cas, root, limits).await {
        Ok(w) if w.complete => Ok(Some(
            w.directories
                .into_iter()
                .map(Directory::decode)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Ok(_) | Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Walks the tree under `root`, reading up to `limits.concurrency`
/// directories at once per level. The root missing is NOT_FOUND; a blob in
/// the tree that is not a Directory is INVALID_ARGUMENT; a tree past
/// `limits` is INVALID_ARGUMENT before more of it is read.
pub async fn walk(cas: &dyn BlobStore, root: Digest, limits: WalkLimits) -> Result<Walk> {
    let mut directories = Vec::new();
    let mut missing = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut level = vec![root];
    let mut total: u64 = 0;
    while !level.is_empty() {
        // Declared sizes are checked before anything is fetched.
        for d in &level {
            total = total.saturating_add(d.size);
        }
        if total > limits.max_total {
            return Err(Error::InvalidArgument(format!(
                "the tree under {root} is too large: expected at most {} bytes of directories, got at least {total}",
                limits.max_total
            )));
        }
        let max = limits.max_directory;
        let fetched: Vec<(Digest, Result<Bytes>)> = futures::stream::iter(level)
            .map(|d| async move { (d, get_parsed_blob(cas, &d, max).await) })
            .buffered(limits.concurrency.max(1))
            .collect()
            .await;
        let mut next = Vec::new();
        for (digest, result) in fetched {
            let bytes = match result {
                Ok(b) => b,
                Err(Error::NotFound(_)) if digest == root => {
                    return Err(Error::NotFound(format!(
                        "root directory {digest} not found"
                    )));
                }
                Err(Error::NotFound(_)) => {
                    missing.push(digest);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let dir = Directory::decode(bytes.clone()).map_err(|e| {
                Error::InvalidArgument(format!("blob {digest} in the tree is not a Directory: {e}"))
            })?;
            for child in &dir.directories {
                let d = Digest::from_proto(root.function, child.digest.as_ref(), "directory")?;
                if seen.insert(d) {
                    next.push(d);
                }
            }
            directories.push(bytes);
        }
        level = next;
    }
    Ok(Walk {
        directories,
        complete: missing.is_empty(),
        missing,
    })
}

/// The marker error that keeps an incomplete tree out of the cache.
const INCOMPLETE: &str = "incomplete tree";

/// A cache of complete trees by root digest, bounded by encoded bytes, with a
/// TTL so that blobs expiring underneath a tree are eventually noticed.
#[derive(Debug, Clone)]
pub struct TreeCache {
    cache: Option<Cache<Digest, TreeNodes>>,
}

impl TreeCache {
    /// A cache of up to `max_size` encoded bytes; `0` disables it.
    pub fn new(max_size: u64, ttl: Duration) -> Self {
        let cache = (max_size > 0).then(|| {
            Cache::builder()
                .max_capacity(max_size)
                .weigher(|_: &Digest, nodes: &TreeNodes| {
                    let bytes: usize = nodes.iter().map(Bytes::len).sum();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build()
        });
        TreeCache { cache }
    }

    /// The tree under `root`, from the cache or by walking `cas`; concurrent
    /// walks of one uncached root are merged into one.
    pub async fn get(
        &self,
        cas: &dyn BlobStore,
        root: Digest,
        limits: WalkLimits,
    ) -> Result<TreeNodes> {
        let Some(cache) = &self.cache else {
            return Ok(Arc::new(walk(cas, root, limits).await?.directories));
        };
        if let Some(nodes) = cache.get(&root).await {
            return Ok(nodes);
        }
        // Only complete trees go in: optionally_get_with caches `Some` only,
        // so an incomplete walk is returned through the side channel.
        let mut partial = None;
        let cached = cache
            .try_get_with(root, async {
                let walk = walk(cas, root, limits).await?;
                if walk.complete {
                    Ok(Arc::new(walk.directories))
                } else {
                    partial = Some(Arc::new(walk.directories));
                    Err(Error::FailedPrecondition(INCOMPLETE.into()))
                }
            })
            .await;
        match (cached, partial) {
            (Ok(nodes), _) => Ok(nodes),
            (Err(_), Some(nodes)) => Ok(nodes),
            // Another caller's walk found holes: walk again, uncached.
            (Err(e), None) if matches!(&*e, Error::FailedPrecondition(m) if m == INCOMPLETE) => {
                Ok(Arc::new(walk(cas, root, limits).await?.directories))
            }
            (Err(e), None) => Err((*e).clone()),
        }
    }
}

/// One page of a GetTree response.
#[derive(Debug, PartialEq)]
pub struct Page {
    /// Indexes into the tree's node list: `start..end`.
    pub start: usize,
    /// One past the last node of the page.
    pub end: usize,
    /// The token for the next page, empty on the last.
    pub next_page_token: String,
}

/// Splits `nodes` into pages starting at `page_token`, each at most
/// `page_size` directories (0: server's choice) and about `max_bytes` encoded.
pub fn pages(
    nodes: &[Bytes],
    page_token: &str,
    page_size: i32,
    max_bytes: usize,
) -> Result<Vec<Page>> {
    if page_size < 0 {
        return Err(Error::InvalidArgument(format!(
            "page_size {page_size} is negative"
        )));
    }
    let mut start = parse_token(page_token, nodes.len())?;
    let per_page = if page_size == 0 {
        usize::MAX
    } else {
        page_size as usize
    };
    let mut out = Vec::new();
    loop {
        let mut end = start;
        let mut bytes = 0;
        while end < nodes.len() && end - start < per_page {
            let len = nodes[end].len() + 8;
            if end > start && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            end += 1;
        }
        let next_page_token = if end < nodes.len() {
            end.to_string()
        } else {
            String::new()
        };
        out.push(Page {
            start,
            end,
            next_page_token,
        });
        if end >= nodes.len() {
            return Ok(out);
        }
        start = end;
    }
}

fn parse_token(token: &str, len: usize) -> Result<usize> {
    if token.is_empty() {
        return Ok(0);
    }
    match token.parse::<usize>() {
        Ok(n) if n <= len => Ok(n),
        _ => Err(Error::InvalidArgument(format!(
            "page_token {token:?} was not issued for this tree"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::{DirectoryNode, FileNode};
    use crate::store::memory::MemoryStore;

    /// Stores `dir` and returns its node under `name`.
    async fn put_dir(store: &MemoryStore, name: &str, dir: &Directory) -> (DirectoryNode, Digest) {
        let bytes = Bytes::from(dir.encode_to_vec());
        let d = DigestFunction::Sha256.digest_of(&bytes);
        store.put(&d, bytes.into()).await.unwrap();
        (
            DirectoryNode {
                name: name.into(),
                digest: Some(d.to_proto()),
            },
            d,
        )
    }

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(DigestFunction::Sha256.digest_of(name.as_bytes()).to_proto()),
            ..Default::default()
        }
    }

    /// root -> {a -> {leaf}, b -> {leaf}}: four nodes, leaf shared.
    async fn sample(store: &MemoryStore) -> Digest {
        let leaf = Directory {
            files: vec![file("f")],
            ..Default::default()
        };
        let (leaf_node, _) = put_dir(store, "leaf", &leaf).await;
        let a = Directory {
            files: vec![file("a1")],
            directories: vec![leaf_node.clone()],
            ..Default::default()
        };
        let b = Directory {
            files: vec![file("b1")],
            directories: vec![leaf_node],
            ..Default::default()
        };
        let (an, _) = put_dir(store, "a", &a).await;
        let (bn, _) = put_dir(store, "b", &b).await;
        let root = Directory {
            directories: vec![an, bn],
            ..Default::default()
        };
        put_dir(store, "", &root).await.1
    }

    fn four() -> WalkLimits {
        WalkLimits {
            concurrency: 4,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn walks_breadth_first_once_per_directory() {
        let store = MemoryStore::new(1 << 20);
        let root = sample(&store).await;
        let walk = walk(&store, root, four()).await.unwrap();
        assert!(walk.complete);
        let firsts: Vec<String> = walk
            .directories
            .iter()
            .map(|b| Directory::decode(b.clone()).unwrap())
            .map(|d| d.files.first().map_or("root".into(), |f| f.name.clone()))
            .collect();
        assert_eq!(firsts, ["root", "a1", "b1", "f"]);
    }

    #[tokio::test]
    async fn missing_root_is_not_found_and_missing_subtrees_are_omitted() {
        let store = MemoryStore::new(1 << 20);
        let absent = DigestFunction::Sha256.digest_of(b"nope");
        assert!(matches!(
            walk(&store, absent, four()).await,
            Err(Error::NotFound(_))
        ));

        let ghost = DirectoryNode {
            name: "ghost".into(),
            digest: Some(absent.to_proto()),
        };
        let root = Directory {
            directories: vec![ghost],
            files: vec![file("x")],
            ..Default::default()
        };
        let (_, root) = put_dir(&store, "", &root).await;
        let walk = walk(&store, root, four()).await.unwrap();
        assert!(!walk.complete);
        assert_eq!(walk.directories.len(), 1);

        // An incomplete tree is served but not cached.
        let cache = TreeCache::new(1 << 20, Duration::from_secs(60));
        assert_eq!(cache.get(&store, root, four()).await.unwrap().len(), 1);
        assert!(cache.cache.as_ref().unwrap().get(&root).await.is_none());
    }

    #[tokio::test]
    async fn complete_trees_are_cached() {
        let store = MemoryStore::new(1 << 20);
        let root = sample(&store).await;
        let cache = TreeCache::new(1 << 20, Duration::from_secs(60));
        let first = cache.get(&store, root, four()).await.unwrap();
        assert!(cache.cache.as_ref().unwrap().get(&root).await.is_some());
        assert!(Arc::ptr_eq(
            &first,
            &cache.get(&store, root, four()).await.unwrap()
        ));
    }

    #[test]
    fn paging() {
        let nodes: Vec<Bytes> = (0..5)
            .map(|i| {
                let d = Directory {
                    files: vec![file(&format!("f{i}"))],
                    ..Default::default()
                };
                Bytes::from(d.encode_to_vec())
            })
            .collect();
        let spans = |token: &str, size: i32, max: usize| {
            pages(&nodes, token, size, max).map(|ps| {
                ps.iter()
                    .map(|p| (p.start, p.end, p.next_page_token.clone()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(spans("", 0, 1 << 20).unwrap(), vec![(0, 5, String::new())]);
        assert_eq!(
            spans("", 2, 1 << 20).unwrap(),
            vec![
                (0, 2, "2".into()),
                (2, 4, "4".into()),
                (4, 5, String::new())
            ]
        );
        assert_eq!(spans("4", 2, 1 << 20).unwrap(), vec![(4, 5, String::new())]);
        assert_eq!(spans("5", 2, 1 << 20).unwrap(), vec![(5, 5, String::new())]);
        // A byte budget splits pages too, but every page holds at least one node.
        assert_eq!(spans("", 0, 1).unwrap().len(), 5);
        assert!(spans("6", 2, 1 << 20).is_err());
        assert!(spans("x", 2, 1 << 20).is_err());
        assert!(spans("", -1, 1 << 20).is_err());
    }
}
