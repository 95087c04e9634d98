//! `ExistenceCache`: remembers, for a TTL, which digests the inner store is
//! known to hold, so a warm FindMissingBlobs costs close to zero backend calls
//! (one HEAD per digest otherwise, on S3).
//!
//! Contract: only positive answers are cached (a blob uploaded a moment ago
//! is never reported missing because of a stale "missing"); entries come from
//! find_missing, get and put. The TTL must stay well below the backend's
//! expiry (e.g. an S3 lifecycle rule), or the cache may vouch for a blob that
//! was deleted underneath it.

use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache;

use super::{BlobStore, Body, Range, Store};
use crate::digest::{Digest, HashKey};
use crate::error::Result;

/// A positive-only, bounded, TTL cache of existence in front of `inner`.
pub struct ExistenceCache {
    inner: Store,
    known: Cache<Digest, (), crate::digest::KeyHasher>,
}

impl std::fmt::Debug for ExistenceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistenceCache")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ExistenceCache {
    /// Remembers up to `max_entries` digests for `ttl` each.
    pub fn new(inner: Store, ttl: Duration, max_entries: u64) -> Self {
        let known = Cache::builder()
            .max_capacity(max_entries)
            .time_to_live(ttl)
            .build_with_hasher(crate::digest::KeyHasher::default());
        ExistenceCache { inner, known }
    }
}

#[async_trait]
impl BlobStore for ExistenceCache {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let unknown: Vec<Digest> = digests
            .iter()
            .filter(|d| !self.known.contains_key(*d))
            .copied()
            .collect();
        if unknown.is_empty() {
            return Ok(unknown);
        }
        let missing = self.inner.find_missing(&unknown).await?;
        let absent: std::collections::HashSet<&Digest> = missing.iter().collect();
        for d in &unknown {
            if !absent.contains(d) {
                self.known.insert(*d, ()).await;
            }
        }
        Ok(missing)
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        if let Some(found) = self.inner.resolve(key).await? {
            self.known.insert(found, ()).await;
            return Ok(Some(found));
        }
        Ok(None)
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let body = self.inner.get(digest, range).await?;
        self.known.insert(*digest, ()).await;
        Ok(body)
    }

    async fn get_passing(&self, digest: &Digest, range: Range) -> Result<Body> {
        let body = self.inner.get_passing(digest, range).await?;
        self.known.insert(*digest, ()).await;
        Ok(body)
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        self.inner.put(digest, body).await?;
        self.known.insert(*digest, ()).await;
        Ok(())
    }

    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        if self.known.contains_key(digest) {
            return Ok(false);
        }
        let stored = self.inner.put_if_absent(digest, body).await?;
        self.known.insert(*digest, ()).await;
        Ok(stored)
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        self.inner.staging(digest)
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        self.inner.put_file(digest, file).await?;
        self.known.insert(*digest, ()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::digest::DigestFunction;
    use crate::store::contract;
    use crate::store::memory::MemoryStore;
    use crate::store::testing::Counting;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        contract::run_all(Arc::new(ExistenceCache::new(
            inner,
            Duration::from_secs(60),
            10_000,
        )))
        .await;
    }

    #[tokio::test]
    async fn warm_lookups_skip_the_inner_store_and_misses_are_not_cached() {
        let counting = Arc::new(Counting::new());
        let f = DigestFunction::Sha256;
        let present: Vec<Digest> = (0..10u8).map(|i| f.digest_of(&[i])).collect();
        for (i, d) in present.iter().enumerate() {
            counting
                .put(d, Bytes::from(vec![i as u8]).into())
                .await
                .unwrap();
        }
        let absent = f.digest_of(b"absent");
        let cache = ExistenceCache::new(counting.clone(), Duration::from_secs(60), 1000);
        let mut all = present.clone();
        all.push(absent);
        assert_eq!(cache.find_missing(&all).await.unwrap(), vec![absent]);
        assert_eq!(counting.asked(), 11);
        assert_eq!(cache.find_missing(&all).await.unwrap(), vec![absent]);
        assert_eq!(
            counting.asked(),
            12,
            "only the absent digest is asked again"
        );
        // Once uploaded through the cache, it is known.
        cache
            .put(&absent, Bytes::from_static(b"absent").into())
            .await
            .unwrap();
        assert!(cache.find_missing(&all).await.unwrap().is_empty());
        assert_eq!(counting.asked(), 12);
    }

    #[tokio::test]
    async fn entries_expire() {
        let counting = Arc::new(Counting::new());
        let d = DigestFunction::Sha256.digest_of(b"x");
        counting
            .put(&d, Bytes::from_static(b"x").into())
            .await
            .unwrap();
        let cache = ExistenceCache::new(counting.clone(), Duration::from_millis(50), 1000);
        cache.find_missing(&[d]).await.unwrap();
        cache.find_missing(&[d]).await.unwrap();
        assert_eq!(counting.asked(), 1);
        // Expiry runs on moka's own clock: poll until the entry is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counting.asked() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the entry never expired"
            );
            cache.find_missing(&[d]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(counting.asked(), 2, "expired entries are asked again, once");
    }
}
