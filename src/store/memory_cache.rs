//! `MemoryCache`: a memory tier in front of a slower store (disk, S3).
//!
//! Contract: values whose digest size is at most `max_blob_size` are kept in a
//! byte-weighted moka cache, filled on reads and writes (write-through, so an
//! action-cache update is visible at once); concurrent misses for one key are
//! merged into a single inner read. Larger blobs pass straight through, and
//! so do a chunked layer's chunks of them (`put_if_absent`; `get_passing`
//! over a local store).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;

use super::{BlobStore, Body, Range, Store, get_bytes};
use crate::digest::{Digest, HashKey};
use crate::error::{Error, Result};

/// A bounded memory tier over `inner`.
pub struct MemoryCache {
    inner: Store,
    cache: Cache<Digest, Bytes, crate::digest::KeyHasher>,
    max_blob_size: u64,
}

impl std::fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("max_blob_size", &self.max_blob_size)
            .field("inner", &self.inner)
            .finish()
    }
}

impl MemoryCache {
    /// Caches up to `max_size` bytes of blobs no larger than `max_blob_size`.
    pub fn new(inner: Store, max_size: u64, max_blob_size: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_size)
            .weigher(super::memory::weigh)
            // Least recently used goes first, and every write is kept: a
            // build reads what it just wrote (an action's outputs are the
            // next one's inputs). moka's default admission turned fresh
            // blobs away from a full tier while older ones were read more
            // often, so reads of new outputs went to the store below; the
            // disk default's batch cost 12-16% more CPU per call with it.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(crate::digest::KeyHasher::default());
        MemoryCache {
            inner,
            cache,
            max_blob_size,
        }
    }

    fn cacheable(&self, digest: &Digest) -> bool {
        digest.size <= self.max_blob_size
    }
}

#[async_trait]
impl BlobStore for MemoryCache {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        // Always the inner store's answer: there a hit renews the blob's
        // lease (a bounded fs store), so what this tier holds is never
        // vouched for while the store below is free to evict it. (Behind
        // it, an existence cache or the fs index answer without I/O.)
        self.inner.find_missing(digests).await
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        // The store below holds everything this tier does (write-through).
        self.inner.resolve(key).await
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        if !self.cacheable(digest) {
            return self.inner.get(digest, range).await;
        }
        let inner = &self.inner;
        let bytes = self
            .cache
            .try_get_with(*digest, async move {
                get_bytes(inner.as_ref(), digest).await.map(super::owned)
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone())?;
        Ok(Body::Bytes(range.slice(&bytes)?))
    }

    /// Answered from the tier when it holds the blob; else, over a local
    /// store, from it without keeping a copy (see
    /// [`BlobStore::get_passing`]), and over a remote one as any read.
    async fn get_passing(&self, digest: &Digest, range: Range) -> Result<Body> {
        if !self.inner.is_local() {
            return self.get(digest, range).await;
        }
        if let Some(bytes) = self.cache.get(digest).await {
            return Ok(Body::Bytes(range.slice(&bytes)?));
        }
        self.inner.get_passing(digest, range).await
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        if !self.cacheable(digest) {
            return self.inner.put(digest, body).await;
        }
        let bytes = body.collect().await?;
        self.inner.put(digest, Body::Bytes(bytes.clone())).await?;
        self.cache.insert(*digest, super::owned(bytes)).await;
        Ok(())
    }

    /// Passed through, not cached: this is how a chunked layer stores a
    /// large upload's chunks, which would push the tier's hot small blobs
    /// out (and cost a copy of every byte into the tier); chunks read are
    /// cached like any blob.
    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        self.inner.put_if_absent(digest, body).await
    }

    async fn swap(&self, key: &Digest, value: Bytes, max_old: u64) -> Result<Option<Bytes>> {
        if !self.cacheable(key) {
            return self.inner.swap(key, value, max_old).await;
        }
        // A value this tier holds is the one replaced: the store below is
        // only written. Otherwise the store below answers in its own way
        // (the fs store from its index) instead of through a read of this
        // tier that misses.
        let old = match self.cache.get(key).await {
            Some(cached) => {
                self.inner.put(key, Body::Bytes(value.clone())).await?;
                (cached.len() as u64 <= max_old).then_some(cached)
            }
            None => self.inner.swap(key, value.clone(), max_old).await?,
        };
        self.cache.insert(*key, super::owned(value)).await;
        Ok(old)
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        self.inner.staging(digest)
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        // Blobs small enough for the tier are not worth adopting: store
        // them as bytes, which also fills the tier.
        if self.cacheable(digest) {
            return self.put(digest, file.into_body().await?).await;
        }
        self.inner.put_file(digest, file).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::store::contract::{self, blob};
    use crate::store::memory::MemoryStore;
    use crate::store::testing::Gated;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        contract::run_all(Arc::new(MemoryCache::new(inner, 1 << 20, 64 << 10))).await;
    }

    /// The action cache's write over the default stack (this tier over
    /// the fs store): the replaced value comes from the tier when it holds
    /// it, else from the store below (which answers a fresh key from its
    /// index, without a read).
    #[tokio::test]
    async fn swap_answers_from_the_tier_or_the_store_below() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(crate::store::fs::FsStore::open(dir.path(), 64 << 10, false).unwrap());
        let cache = MemoryCache::new(fs.clone(), 1 << 20, 64 << 10);
        contract::swap_returns_the_replaced_value(&cache).await;
        let key = DigestFunction::Sha256.digest_of(b"action");
        fs.put(&key, Bytes::from_static(b"old").into())
            .await
            .unwrap();
        let old = cache.swap(&key, Bytes::from_static(b"new"), 100).await;
        assert_eq!(old.unwrap().as_deref(), Some(&b"old"[..]));
        let again = cache.swap(&key, Bytes::from_static(b"newer"), 100).await;
        assert_eq!(again.unwrap().as_deref(), Some(&b"new"[..]));
        let below = crate::store::get_bytes(fs.as_ref(), &key).await.unwrap();
        assert_eq!(&below[..], b"newer");
    }

    /// A chunked layer's chunks pass by the tier over a local store: written
    /// with `put_if_absent` and read with `get_passing`, none is kept,
    /// while a blob the tier holds still answers a passing read. Over a
    /// remote store (S3) a chunk read is kept, as any read: the tier is
    /// what spares a hot large blob's GETs.
    #[tokio::test]
    async fn chunks_pass_by_the_tier_over_a_local_store() {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        let cache = MemoryCache::new(inner.clone(), 1 << 20, 64 << 10);
        let f = DigestFunction::Sha256;
        let chunk = blob(11, 30_000);
        let c = f.digest_of(&chunk);
        assert!(cache.put_if_absent(&c, chunk.clone().into()).await.unwrap());
        let read = cache.get_passing(&c, Range::FULL).await.unwrap();
        assert_eq!(read.collect().await.unwrap(), chunk);
        cache.cache.run_pending_tasks().await;
        assert_eq!(cache.cache.entry_count(), 0, "a chunk was kept");
        let hot = blob(12, 20_000);
        let h = f.digest_of(&hot);
        cache.put(&h, hot.clone().into()).await.unwrap();
        inner.put(&h, Bytes::new().into()).await.unwrap();
        let read = cache.get_passing(&h, Range::FULL).await.unwrap();
        assert_eq!(read.collect().await.unwrap(), hot, "answered from the tier");

        let remote = Arc::new(Gated::new(false));
        remote.open();
        assert!(!remote.is_local());
        let cache = MemoryCache::new(remote, 1 << 20, 64 << 10);
        assert!(cache.put_if_absent(&c, chunk.clone().into()).await.unwrap());
        cache.cache.run_pending_tasks().await;
        assert_eq!(cache.cache.entry_count(), 0, "a chunk write was kept");
        let read = cache.get_passing(&c, Range::FULL).await.unwrap();
        assert_eq!(read.collect().await.unwrap(), chunk);
        cache.cache.run_pending_tasks().await;
        assert_eq!(
            cache.cache.entry_count(),
            1,
            "a remote chunk read was not kept"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_blob_read_the_inner_store_once() {
        let gated = Arc::new(Gated::new(false));
        let data = blob(9, 1000);
        let d = DigestFunction::Sha256.digest_of(&data);
        gated.inner.put(&d, data.clone().into()).await.unwrap();
        let cache = Arc::new(MemoryCache::new(gated.clone(), 1 << 20, 4096));
        let reads: Vec<_> = (0..10)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { get_bytes(cache.as_ref(), &d).await.unwrap() })
            })
            .collect();
        // One read waits at the gate; on this single-threaded runtime the
        // other nine have joined it by the time the main task runs again.
        gated.wait_entered(1).await;
        tokio::task::yield_now().await;
        gated.open();
        for r in reads {
            assert_eq!(r.await.unwrap(), data);
        }
        assert_eq!(gated.inner.gets(), 1);
        // Warm now: no more inner reads.
        get_bytes(cache.as_ref(), &d).await.unwrap();
        assert_eq!(gated.inner.gets(), 1);
    }

    #[tokio::test]
    async fn writes_through_and_replaces_cached_values() {
        let inner = Arc::new(MemoryStore::new(1 << 20));
        let cache = MemoryCache::new(inner.clone(), 1 << 20, 4096);
        let key = DigestFunction::Sha256.digest_of(b"action");
        cache
            .put(&key, Bytes::from_static(b"one").into())
            .await
            .unwrap();
        assert_eq!(get_bytes(&cache, &key).await.unwrap(), "one");
        cache
            .put(&key, Bytes::from_static(b"two").into())
            .await
            .unwrap();
        assert_eq!(get_bytes(&cache, &key).await.unwrap(), "two");
        assert_eq!(get_bytes(inner.as_ref(), &key).await.unwrap(), "two");
    }

    /// A full tier keeps what was just written, even while older blobs are
    /// read often: the next read of it does not reach the store below.
    #[tokio::test]
    async fn a_full_tier_keeps_a_fresh_write() {
        let inner = Arc::new(crate::store::testing::Counting::new());
        let cache = MemoryCache::new(inner.clone(), 64 << 10, 4096);
        let old: Vec<Bytes> = (0..16).map(|i| blob(100 + i, 4000)).collect();
        for b in &old {
            let d = DigestFunction::Sha256.digest_of(b);
            cache.put(&d, b.clone().into()).await.unwrap();
            for _ in 0..4 {
                get_bytes(&cache, &d).await.unwrap();
            }
        }
        for (i, fresh) in (0..8).map(|i| (i, blob(200 + i, 4000))) {
            let d = DigestFunction::Sha256.digest_of(&fresh);
            cache.put(&d, fresh.clone().into()).await.unwrap();
            cache.cache.run_pending_tasks().await;
            let before = inner.gets();
            assert_eq!(get_bytes(&cache, &d).await.unwrap(), fresh);
            assert_eq!(
                inner.gets(),
                before,
                "fresh write {i} was read from the store below"
            );
        }
    }
}
