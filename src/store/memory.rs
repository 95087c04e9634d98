//! `MemoryStore`: blobs in process memory, bounded by bytes, least recently
//! used evicted first. For tests, benchmarks and small ephemeral caches; it
//! loses everything on restart.

use async_trait::async_trait;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use super::chunk_list::ChunkList;
use super::{BlobStore, Body, Range, Staging};
use crate::digest::{Digest, HashKey};
use crate::error::{Error, Result};
use bytes::Bytes;

/// A bounded in-memory store. LRU rather than moka's default TinyLFU: a store
/// must keep what it just accepted, and TinyLFU may refuse a new entry.
#[derive(Clone)]
pub struct MemoryStore {
    blobs: Cache<Digest, Stored, crate::digest::KeyHasher>,
    max_size: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryStore(max_size={})", self.max_size)
    }
}

/// A value and the size its key declares (an action cache's key is the
/// action's digest, not the value's), so a lookup by hash alone can return
/// the whole key.
#[derive(Clone)]
struct Stored {
    key_size: u64,
    value: ChunkList,
}

/// The weight of one entry: its bytes plus a fixed overhead, so that many
/// empty-ish entries still count against the budget.
pub(crate) fn weigh(_: &Digest, value: &Bytes) -> u32 {
    weight(value.len() as u64, 1)
}

fn weight(len: u64, chunks: usize) -> u32 {
    u32::try_from(len + 64 + 32 * chunks as u64).unwrap_or(u32::MAX)
}

impl MemoryStore {
    /// A store holding at most `max_size` bytes. Its table starts sized for
    /// 4 KiB blobs filling it (at most 4M): moka's table probes by pointer,
    /// so every doubling while a store fills rehashed all it held, and a
    /// fuller table costs a cache miss more per lookup (memory batch: -5-7%
    /// CPU per call, for ~30 MiB of table in a 4 GiB store).
    pub fn new(max_size: u64) -> Self {
        let blobs = Cache::builder()
            .max_capacity(max_size)
            .initial_capacity(
                usize::try_from(max_size / 4096)
                    .unwrap_or(usize::MAX)
                    .min(1 << 22),
            )
            .weigher(|_, v: &Stored| weight(v.value.len(), v.value.count()))
            .eviction_policy(EvictionPolicy::lru())
            .build_with_hasher(crate::digest::KeyHasher::default());
        MemoryStore { blobs, max_size }
    }
}

#[cfg(test)]
impl MemoryStore {
    /// The bytes of every stored value.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, v)| v.value.len()).sum()
    }

    /// Drops a value, as eviction would.
    pub(crate) async fn remove(&self, digest: &Digest) {
        self.blobs.invalidate(digest).await;
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        Ok(digests
            .iter()
            .filter(|d| !self.blobs.contains_key(*d))
            .copied()
            .collect())
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let bytes = self
            .blobs
            .get(digest)
            .await
            .ok_or_else(|| Error::NotFound(format!("blob {digest} not found")))?;
        bytes.value.read(range)
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        Ok(self.blobs.get(key).await.map(|v| key.with_size(v.key_size)))
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        // Checked while collecting: a stream is never buffered past what
        // the store could hold anyway.
        let room = self.max_size.saturating_sub(64);
        let value = ChunkList::gather(body, digest.size, room)
            .await
            .map_err(|e| match e {
                Error::ResourceExhausted { .. } => Error::exhausted(format!(
                    "blob {digest} is larger than the memory store ({} bytes)",
                    self.max_size
                )),
                other => other,
            })?;
        let stored = Stored {
            key_size: digest.size,
            value,
        };
        self.blobs.insert(*digest, stored).await;
        Ok(())
    }

    async fn swap(&self, key: &Digest, value: Bytes, max_old: u64) -> Result<Option<Bytes>> {
        // Looked up only if present: a get that misses is recorded for the
        // cache's popularity estimate (a message to its housekeeping) on
        // every fresh action result, where nothing is there to read.
        let stored = if self.blobs.contains_key(key) {
            self.blobs.get(key).await
        } else {
            None
        };
        let old = match stored {
            Some(s) if s.value.len() <= max_old => s.value.read(Range::FULL)?.collect().await.ok(),
            _ => None,
        };
        self.put(key, value.into()).await?;
        Ok(old)
    }

    fn is_local(&self) -> bool {
        true
    }

    fn staging(&self, _: &Digest) -> Staging {
        Staging::Memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        super::super::contract::run_all(std::sync::Arc::new(MemoryStore::new(64 << 20))).await;
        super::super::contract::swap_returns_the_replaced_value(&MemoryStore::new(1 << 20)).await;
    }

    #[tokio::test]
    async fn evicts_least_recently_used_beyond_its_budget() {
        let store = MemoryStore::new(10_000);
        let f = crate::digest::DigestFunction::Sha256;
        let blobs: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 3000])).collect();
        for b in &blobs {
            store.put(&f.digest_of(b), b.clone().into()).await.unwrap();
        }
        store.blobs.run_pending_tasks().await;
        let all: Vec<Digest> = blobs.iter().map(|b| f.digest_of(b)).collect();
        let missing = store.find_missing(&all).await.unwrap();
        assert!(!missing.is_empty(), "over budget, something must go");
        assert!(
            !missing.contains(&all[4]),
            "the newest blob must stay: {missing:?}"
        );
        assert!(store.blobs.weighted_size() <= 10_000);
    }

    /// A small blob sliced out of a big request buffer is stored in an
    /// allocation of its own, so the store's budget counts what it holds
    /// (a regression: 4 KiB batch entries pinned whole 4 MiB requests).
    #[tokio::test]
    async fn a_slice_of_a_request_buffer_does_not_pin_the_buffer() {
        let request = Bytes::from(vec![7u8; 4 << 20]);
        let entry = request.slice(4096..8192);
        let d = crate::digest::DigestFunction::Sha256.digest_of(&entry);
        let store = MemoryStore::new(1 << 20);
        store.put(&d, entry.into()).await.unwrap();
        let stored = crate::store::get_bytes(&store, &d).await.unwrap();
        let range = request.as_ptr_range();
        assert!(
            !range.contains(&stored.as_ptr()),
            "the stored blob is a view into the request buffer"
        );
    }

    #[tokio::test]
    async fn a_stream_larger_than_the_store_is_refused_while_it_arrives() {
        use futures::StreamExt;
        let store = MemoryStore::new(1 << 20);
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"x");
        // An endless stream: refused once it passes the budget, never collected.
        let endless = futures::stream::repeat_with(|| Ok(Bytes::from(vec![0u8; 64 << 10]))).boxed();
        let err = store.put(&d, Body::Stream(endless)).await.unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted { .. }), "{err:?}");
    }
}
