//! `Instrumented`: wraps every node of the store graph (the builder does it,
//! stores never do it themselves) so each call gets a tracing span and counts
//! in the server's metrics: calls, errors, digests asked and latency, labelled
//! with the node's config path and kind.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::{BlobStore, Body, Range, Store};
use crate::digest::Digest;
use crate::error::Result;
use crate::metrics::{Metrics, StoreLabels};

/// A transparent wrapper that records spans and metrics for one named node.
#[derive(Debug)]
pub struct Instrumented {
    name: String,
    kind: &'static str,
    inner: Store,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    /// Wraps `inner`, a node of kind `kind` (e.g. `fs`) called `name` in config.
    pub fn new(
        name: impl Into<String>,
        kind: &'static str,
        inner: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        Instrumented {
            name: name.into(),
            kind,
            inner,
            metrics,
        }
    }

    fn labels(&self, op: &'static str) -> StoreLabels {
        StoreLabels {
            node: self.name.clone(),
            kind: self.kind.to_string(),
            op,
        }
    }

    fn record<T>(&self, op: &'static str, result: &Result<T>, started: Instant) {
        let labels = self.labels(op);
        let elapsed = started.elapsed();
        self.metrics.store_calls.get_or_create(&labels).inc();
        self.metrics
            .store_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(_) => tracing::trace!(micros = elapsed.as_micros() as u64, "ok"),
            Err(e) => {
                self.metrics.store_errors.get_or_create(&labels).inc();
                tracing::debug!(micros = elapsed.as_micros() as u64, error = %e, "failed");
            }
        }
    }
}

#[async_trait]
impl BlobStore for Instrumented {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let span = tracing::info_span!("store.find_missing", node = %self.name, kind = self.kind, count = digests.len());
        self.metrics
            .store_digests
            .get_or_create(&self.labels("find_missing"))
            .inc_by(digests.len() as u64);
        let started = Instant::now();
        let result = self
            .inner
            .find_missing(digests)
            .instrument(span.clone())
            .await;
        if let Ok(missing) = &result {
            let labels = self.labels("find_missing");
            let missing_count = missing.len().min(digests.len()) as u64;
            self.metrics
                .store_misses
                .get_or_create(&labels)
                .inc_by(missing_count);
            self.metrics
                .store_hits
                .get_or_create(&labels)
                .inc_by(digests.len() as u64 - missing_count);
        }
        span.in_scope(|| self.record("find_missing", &result, started));
        result
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let span = tracing::info_span!("store.get", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self.inner.get(digest, range).instrument(span.clone()).await;
        match &result {
            Ok(_) => self
                .metrics
                .store_hits
                .get_or_create(&self.labels("get"))
                .inc(),
            Err(crate::error::Error::NotFound(_)) => self
                .metrics
                .store_misses
                .get_or_create(&self.labels("get"))
                .inc(),
            Err(_) => 0,
        };
        span.in_scope(|| self.record("get", &result, started));
        result
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        let span = tracing::info_span!("store.put", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self.inner.put(digest, body).instrument(span.clone()).await;
        span.in_scope(|| self.record("put", &result, started));
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::contract;
    use crate::store::memory::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        let metrics = crate::metrics::Metrics::new();
        contract::run_all(Arc::new(Instrumented::new(
            "test", "memory", inner, metrics,
        )))
        .await;
    }
}
