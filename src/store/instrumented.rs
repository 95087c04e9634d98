//! `Instrumented`: wraps every node of the store graph (the builder does it,
//! stores never do it themselves) so each call gets a tracing span and counts
//! in the server's metrics: calls, errors, digests asked and latency, labelled
//! with the node's config path and kind.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tracing::Instrument;

use super::{BlobStore, Body, Range, Store};
use crate::digest::{Digest, HashKey};
use crate::error::Result;
use crate::metrics::{Metrics, latency_histogram};

/// Labels of a store call: the node's config path, its kind and the method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// Config path or store name, e.g. `instances[0].cas.inner`.
    pub node: String,
    /// Store kind, e.g. `s3`, `memory_cache`.
    pub kind: String,
    /// `find_missing`, `get` or `put`.
    pub op: &'static str,
}

type LatencyFamily = Family<StoreLabels, Histogram, fn() -> Histogram>;

/// Labels of a store node's capacity metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Config path or store name.
    pub node: String,
}

/// Labels of evictions: the node, and `lru` (an unleased blob) or `forced`
/// (a blob still leased by `min_retention`, evicted past the hard limit).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// Config path or store name.
    pub node: String,
    /// `lru` or `forced`.
    pub reason: &'static str,
}

/// Labels of what a chunked layer wrote: the node, and which count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChunkedLabels {
    /// Config path, e.g. `instances[0].cas.chunked`.
    pub node: String,
    /// `logical` or `stored` (bytes); `stored` or `present` (chunks).
    pub kind: &'static str,
}

/// A chunked layer's counters, handed to it by the builder: what uploads
/// of large blobs sent against what they added, so the space chunking
/// saves is visible.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkedMetrics {
    /// Bytes of the blobs stored as chunks.
    pub(crate) logical_bytes: Counter,
    /// Bytes of the chunks among them that were new.
    pub(crate) stored_bytes: Counter,
    /// Chunks stored.
    pub(crate) chunks_stored: Counter,
    /// Chunks already present, not stored again.
    pub(crate) chunks_present: Counter,
}

/// One bounded node's capacity metrics, handed to the store by the builder.
#[derive(Debug, Clone)]
pub(crate) struct CapacityMetrics {
    lru: Counter,
    forced: Counter,
    evicted_bytes: Counter,
    /// Bytes the node holds.
    pub bytes: Gauge,
}

impl CapacityMetrics {
    /// Records one eviction pass and the total left.
    pub(crate) fn record(&self, done: &super::fs_index::Evicted, total: u64) {
        self.lru.inc_by(done.blobs - done.forced);
        self.forced.inc_by(done.forced);
        self.evicted_bytes.inc_by(done.bytes);
        self.bytes.set(total as i64);
    }
}

/// The store graph's metrics, one set per server, shared by every node:
/// backend calls per client call is `kiln_store_calls_total{kind="s3"}`
/// over the RPC counts.
#[derive(Debug)]
pub struct StoreMetrics {
    evictions: Family<EvictionLabels, Counter>,
    evicted_bytes: Family<NodeLabels, Counter>,
    bytes: Family<NodeLabels, Gauge>,
    calls: Family<StoreLabels, Counter>,
    errors: Family<StoreLabels, Counter>,
    digests: Family<StoreLabels, Counter>,
    hits: Family<StoreLabels, Counter>,
    misses: Family<StoreLabels, Counter>,
    latency: LatencyFamily,
    chunked_bytes: Family<ChunkedLabels, Counter>,
    chunked_chunks: Family<ChunkedLabels, Counter>,
    savings: crate::insights::savings::Families,
}

impl StoreMetrics {
    /// Registers the store metrics in `registry`.
    pub fn register(registry: &Metrics) -> Arc<StoreMetrics> {
        let m = StoreMetrics {
            evictions: Family::default(),
            evicted_bytes: Family::default(),
            bytes: Family::default(),
            calls: Family::default(),
            errors: Family::default(),
            digests: Family::default(),
            hits: Family::default(),
            misses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            chunked_bytes: Family::default(),
            chunked_chunks: Family::default(),
            savings: crate::insights::savings::Families::register(registry),
        };
        registry.register(
            "store_hits",
            "Blobs a store node had (gets served, digests present)",
            m.hits.clone(),
        );
        registry.register(
            "store_misses",
            "Blobs a store node lacked (NOT_FOUND gets, missing digests)",
            m.misses.clone(),
        );
        registry.register("store_calls", "Calls into each store node", m.calls.clone());
        registry.register(
            "store_errors",
            "Failed calls into each store node",
            m.errors.clone(),
        );
        registry.register(
            "store_digests",
            "Digests asked of each store node by find_missing",
            m.digests.clone(),
        );
        registry.register(
            "store_latency_seconds",
            "Latency of store calls",
            m.latency.clone(),
        );
        registry.register(
            "store_evictions",
            "Blobs evicted from a bounded store node, by reason (lru, forced)",
            m.evictions.clone(),
        );
        registry.register(
            "store_evicted_bytes",
            "Bytes evicted from a bounded store node",
            m.evicted_bytes.clone(),
        );
        registry.register("store_bytes", "Bytes a store node holds", m.bytes.clone());
        registry.register(
            "chunked_bytes",
            "Bytes of the blobs a chunked layer stored (logical) and of the new chunks they added (stored)",
            m.chunked_bytes.clone(),
        );
        registry.register(
            "chunked_chunks",
            "Chunks of the blobs a chunked layer stored: new (stored) or already there (present)",
            m.chunked_chunks.clone(),
        );
        Arc::new(m)
    }

    /// Instance `instance`'s savings counters.
    pub fn savings(&self, instance: &str) -> crate::insights::savings::SavingsMetrics {
        self.savings.of(instance)
    }

    /// The counters of chunked layer `node`.
    pub(crate) fn chunked(&self, node: &str) -> ChunkedMetrics {
        let label = |kind| ChunkedLabels {
            node: node.to_string(),
            kind,
        };
        // One statement each (see `capacity`).
        let logical_bytes = self.chunked_bytes.get_or_create(&label("logical")).clone();
        let stored_bytes = self.chunked_bytes.get_or_create(&label("stored")).clone();
        let chunks_stored = self.chunked_chunks.get_or_create(&label("stored")).clone();
        let chunks_present = self.chunked_chunks.get_or_create(&label("present")).clone();
        ChunkedMetrics {
            logical_bytes,
            stored_bytes,
            chunks_stored,
            chunks_present,
        }
    }

    /// The counter of calls `op` into node `node` of kind `kind`, for calls
    /// a store makes on its own (an S3 store's renewals).
    pub(crate) fn calls_counter(&self, node: &str, kind: &str, op: &'static str) -> Counter {
        let labels = StoreLabels {
            node: node.to_string(),
            kind: kind.to_string(),
            op,
        };
        self.calls.get_or_create(&labels).clone()
    }

    /// The capacity metrics of node `node`.
    pub(crate) fn capacity(&self, node: &str) -> CapacityMetrics {
        let reason = |reason| EvictionLabels {
            node: node.to_string(),
            reason,
        };
        let labels = NodeLabels {
            node: node.to_string(),
        };
        // One statement each: get_or_create returns a read guard, and a
        // second call on the same family while it lives would deadlock.
        let lru = self.evictions.get_or_create(&reason("lru")).clone();
        let forced = self.evictions.get_or_create(&reason("forced")).clone();
        let evicted_bytes = self.evicted_bytes.get_or_create(&labels).clone();
        let bytes = self.bytes.get_or_create(&labels).clone();
        CapacityMetrics {
            lru,
            forced,
            evicted_bytes,
            bytes,
        }
    }
}

/// One operation's metric series on one node, resolved once when the node
/// is built: a call then only bumps counters, with no label strings to
/// build or hash (a batch call makes hundreds of store calls).
#[derive(Debug, Clone)]
struct OpMetrics {
    calls: Counter,
    errors: Counter,
    latency: Histogram,
    /// Hits and misses, for the operations that have them.
    found: Option<(Counter, Counter)>,
}

impl StoreMetrics {
    fn op(&self, node: &str, kind: &str, op: &'static str, found: bool) -> OpMetrics {
        let labels = StoreLabels {
            node: node.to_string(),
            kind: kind.to_string(),
            op,
        };
        // One statement each: get_or_create returns a read guard, and a
        // second call on the same family while it lives would deadlock.
        let calls = self.calls.get_or_create(&labels).clone();
        let errors = self.errors.get_or_create(&labels).clone();
        let latency = self.latency.get_or_create(&labels).clone();
        let found = found.then(|| {
            let hits = self.hits.get_or_create(&labels).clone();
            let misses = self.misses.get_or_create(&labels).clone();
            (hits, misses)
        });
        OpMetrics {
            calls,
            errors,
            latency,
            found,
        }
    }
}

impl OpMetrics {
    fn record<T>(&self, result: &Result<T>, started: Instant) {
        let elapsed = started.elapsed();
        self.calls.inc();
        self.latency.observe(elapsed.as_secs_f64());
        match result {
            Ok(_) => tracing::trace!(micros = elapsed.as_micros() as u64, "ok"),
            Err(e) => {
                self.errors.inc();
                tracing::debug!(micros = elapsed.as_micros() as u64, error = %e, "failed");
            }
        }
    }

    fn found(&self, hits: u64, misses: u64) {
        if let Some((h, m)) = &self.found {
            h.inc_by(hits);
            m.inc_by(misses);
        }
    }
}

/// A transparent wrapper that records spans and metrics for one named node.
#[derive(Debug)]
pub struct Instrumented {
    name: String,
    kind: &'static str,
    inner: Store,
    find_missing: OpMetrics,
    digests: Counter,
    get: OpMetrics,
    put: OpMetrics,
}

impl Instrumented {
    /// Wraps `inner`, a node of kind `kind` (e.g. `fs`) called `name` in config.
    pub fn new(
        name: impl Into<String>,
        kind: &'static str,
        inner: Store,
        metrics: Arc<StoreMetrics>,
    ) -> Self {
        let name = name.into();
        let digests = metrics
            .digests
            .get_or_create(&StoreLabels {
                node: name.clone(),
                kind: kind.to_string(),
                op: "find_missing",
            })
            .clone();
        Instrumented {
            find_missing: metrics.op(&name, kind, "find_missing", true),
            digests,
            get: metrics.op(&name, kind, "get", true),
            put: metrics.op(&name, kind, "put", false),
            name,
            kind,
            inner,
        }
    }
}

impl Instrumented {
    /// Runs a read of the node below in its span and records it (found or
    /// not, latency).
    async fn counted_get(
        &self,
        digest: &Digest,
        read: impl std::future::Future<Output = Result<Body>>,
    ) -> Result<Body> {
        // Per-blob spans are debug: a batch call makes hundreds, and at
        // info every one would format its digest (a tenth of a batch call's
        // CPU). RUST_LOG=kiln=debug brings them back.
        let span = tracing::debug_span!("store.get", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = read.instrument(span.clone()).await;
        match &result {
            Ok(_) => self.get.found(1, 0),
            Err(crate::error::Error::NotFound(_)) => self.get.found(0, 1),
            Err(_) => {}
        }
        span.in_scope(|| self.get.record(&result, started));
        result
    }
}

#[async_trait]
impl BlobStore for Instrumented {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let span = tracing::info_span!("store.find_missing", node = %self.name, kind = self.kind, count = digests.len());
        self.digests.inc_by(digests.len() as u64);
        let started = Instant::now();
        let result = self
            .inner
            .find_missing(digests)
            .instrument(span.clone())
            .await;
        if let Ok(missing) = &result {
            let missing_count = missing.len().min(digests.len()) as u64;
            self.find_missing
                .found(digests.len() as u64 - missing_count, missing_count);
        }
        span.in_scope(|| self.find_missing.record(&result, started));
        result
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        let span = tracing::debug_span!("store.resolve", node = %self.name, kind = self.kind);
        self.inner.resolve(key).instrument(span).await
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.counted_get(digest, self.inner.get(digest, range))
            .await
    }

    async fn get_passing(&self, digest: &Digest, range: Range) -> Result<Body> {
        // Counted as the get it is.
        self.counted_get(digest, self.inner.get_passing(digest, range))
            .await
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        let span = tracing::debug_span!("store.put", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self.inner.put(digest, body).instrument(span.clone()).await;
        span.in_scope(|| self.put.record(&result, started));
        result
    }

    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        let span = tracing::debug_span!("store.put", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self
            .inner
            .put_if_absent(digest, body)
            .instrument(span.clone())
            .await;
        span.in_scope(|| self.put.record(&result, started));
        result
    }

    async fn swap(
        &self,
        key: &Digest,
        value: bytes::Bytes,
        max_old: u64,
    ) -> Result<Option<bytes::Bytes>> {
        // Counted as the put it is.
        let span =
            tracing::debug_span!("store.put", node = %self.name, kind = self.kind, digest = %key);
        let started = Instant::now();
        let result = self
            .inner
            .swap(key, value, max_old)
            .instrument(span.clone())
            .await;
        span.in_scope(|| self.put.record(&result, started));
        result
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        self.inner.staging(digest)
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        let span = tracing::debug_span!("store.put", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self
            .inner
            .put_file(digest, file)
            .instrument(span.clone())
            .await;
        span.in_scope(|| self.put.record(&result, started));
        result
    }

    async fn stored_chunks(&self, digest: &Digest) -> Result<Option<super::StoredChunks>> {
        self.inner.stored_chunks(digest).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::contract;
    use crate::store::memory::MemoryStore;

    #[test]
    fn capacity_metrics_of_a_new_node_are_created_without_deadlock() {
        let metrics = StoreMetrics::register(&crate::metrics::Metrics::new());
        let a = metrics.capacity("a");
        let again = metrics.capacity("a");
        a.bytes.set(5);
        assert_eq!(again.bytes.get(), 5, "one series per node");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        let metrics = StoreMetrics::register(&crate::metrics::Metrics::new());
        let store = Arc::new(Instrumented::new("test", "memory", inner, metrics));
        contract::swap_returns_the_replaced_value(store.as_ref()).await;
        contract::run_all(store).await;
    }
}
