//! `MergedPuts`: concurrent puts of one content-addressed blob within a pod
//! become one upload to the inner store; the others wait for it and return
//! its outcome (their bodies are dropped unread). If the leading upload fails,
//! each waiter uploads its own body, so one broken client cannot fail another.
//!
//! Only for content-addressed data, where equal digests mean equal bytes; the
//! builder places it above remote backends (S3) in a CAS.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{BlobStore, Body, Range, Store};
use crate::digest::{Digest, HashKey};
use crate::error::Result;

/// Merges concurrent puts of one digest.
pub struct MergedPuts {
    inner: Store,
    /// Uploads in flight; the value turns `Some(success)` when one ends.
    in_flight: Mutex<HashMap<Digest, watch::Receiver<Option<bool>>>>,
}

impl std::fmt::Debug for MergedPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedPuts")
            .field("inner", &self.inner)
            .finish()
    }
}

impl MergedPuts {
    /// Wraps `inner`.
    pub fn new(inner: Store) -> Self {
        MergedPuts {
            inner,
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes a lead's entry from the in-flight map when dropped.
struct Release<'a> {
    in_flight: &'a Mutex<HashMap<Digest, watch::Receiver<Option<bool>>>>,
    digest: Digest,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }
}

#[async_trait]
impl BlobStore for MergedPuts {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(digests).await
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.inner.get(digest, range).await
    }

    async fn get_passing(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.inner.get_passing(digest, range).await
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        self.inner.resolve(key).await
    }

    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        // Its callers (the chunked layer) already take turns per digest.
        self.inner.put_if_absent(digest, body).await
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        let lead = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(digest) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(*digest, rx);
                    Ok(tx)
                }
            }
        };
        match lead {
            Ok(tx) => {
                // Releases the entry however the lead ends, dropped included
                // (its client went away): waiters then see the sender gone
                // and upload their own bodies.
                let _release = Release {
                    in_flight: &self.in_flight,
                    digest: *digest,
                };
                let result = self.inner.put(digest, body).await;
                let _ = tx.send(Some(result.is_ok()));
                result
            }
            Err(mut rx) => {
                let succeeded = rx
                    .wait_for(Option::is_some)
                    .await
                    .is_ok_and(|v| *v == Some(true));
                if succeeded {
                    return Ok(());
                }
                self.inner.put(digest, body).await
            }
        }
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        self.inner.staging(digest)
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        // Adopting a file costs a rename: nothing worth merging.
        self.inner.put_file(digest, file).await
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
    use crate::store::testing::Gated;

    async fn race(fail_first: bool) -> (usize, Vec<Result<()>>) {
        let gated = Arc::new(Gated::new(fail_first));
        let merged = Arc::new(MergedPuts::new(gated.clone()));
        let data = Bytes::from_static(b"same content");
        let d = DigestFunction::Sha256.digest_of(&data);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (m, data) = (merged.clone(), data.clone());
                tokio::spawn(async move { m.put(&d, data.into()).await })
            })
            .collect();
        // The lead waits at the gate; on this single-threaded runtime the
        // other four have subscribed to it by the time the main task runs.
        gated.wait_entered(1).await;
        tokio::task::yield_now().await;
        gated.open();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        (gated.inner.puts(), results)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        contract::run_all(Arc::new(MergedPuts::new(Arc::new(MemoryStore::new(
            64 << 20,
        )))))
        .await;
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_blob_upload_once() {
        let (puts, results) = race(false).await;
        assert_eq!(puts, 1);
        assert!(results.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_dropped_lead_releases_its_entry() {
        let merged = MergedPuts::new(Arc::new(MemoryStore::new(1 << 20)));
        let data = Bytes::from_static(b"abandoned");
        let d = DigestFunction::Sha256.digest_of(&data);
        // A lead whose body never ends, dropped as a reset client's would be.
        let pending = futures::stream::pending::<Result<Bytes>>();
        let body = Body::Stream(futures::StreamExt::boxed(pending));
        {
            let lead = merged.put(&d, body);
            futures::pin_mut!(lead);
            assert!(futures::poll!(lead.as_mut()).is_pending());
            assert_eq!(merged.in_flight.lock().unwrap().len(), 1);
        }
        assert!(merged.in_flight.lock().unwrap().is_empty());
        merged.put(&d, data.into()).await.unwrap();
        assert!(merged.find_missing(&[d]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_lead_does_not_fail_the_others() {
        let (puts, results) = race(true).await;
        assert_eq!(
            results.iter().filter(|r| r.is_err()).count(),
            1,
            "only the broken upload fails"
        );
        assert!(puts >= 2, "a waiter retried with its own body");
    }
}
