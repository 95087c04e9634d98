//! Prometheus metrics, served as text at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per server (not a global), so tests that run several
//! servers in one process see exact per-server counts. Store metrics come from
//! the builder's instrumented wrapper around every node, which is how the
//! figure operators ask for first, backend calls per client call, is read:
//! `kiln_store_calls_total{kind="s3"}` against the RPC counts.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Labels of a gRPC call: its full method path, the instance it addressed
/// and its status code name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// E.g. `/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs`.
    pub method: String,
    /// The instance name (empty for the default instance, or when the call
    /// failed before naming one).
    pub instance: String,
    /// E.g. `OK`, `NOT_FOUND` (empty on latency, which is per method).
    pub code: String,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Calls into each store node.
    pub store_calls: Family<StoreLabels, Counter>,
    /// Failed calls per node (NOT_FOUND included: misses are answers).
    pub store_errors: Family<StoreLabels, Counter>,
    /// Digests asked of each node by find_missing.
    pub store_digests: Family<StoreLabels, Counter>,
    /// Answers that found the blob: gets served and digests present.
    pub store_hits: Family<StoreLabels, Counter>,
    /// Answers that did not: NOT_FOUND gets and missing digests.
    pub store_misses: Family<StoreLabels, Counter>,
    /// Latency of store calls, in seconds.
    pub store_latency: LatencyFamily,
    /// gRPC calls by method and status code.
    pub rpc_calls: Family<RpcLabels, Counter>,
    /// gRPC call latency by method, until the response ends, in seconds.
    pub rpc_latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    /// gRPC message bytes by direction (in, out).
    pub rpc_bytes: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// gRPC calls being served.
    pub rpc_in_flight: prometheus_client::metrics::gauge::Gauge,
    /// Build events stored (the ingestion rate is its rate()).
    pub bes_events: Counter,
    /// Resident memory of the process, refreshed at each scrape.
    pub resident_bytes: prometheus_client::metrics::gauge::Gauge,
    /// Webhook deliveries by outcome: delivered, retried, failed, dropped.
    pub webhook_deliveries: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Jobs waiting for a worker (all pods' jobs, refreshed by this pod).
    pub exec_queued: prometheus_client::metrics::gauge::Gauge,
    /// Jobs by event: queued, merged, cached, completed, failed, cancelled,
    /// requeued, timed_out.
    pub exec_jobs: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Time from queueing to a worker taking the job, in seconds.
    pub exec_queue_wait: Histogram,
    /// Time from a worker taking the job to its result, in seconds.
    pub exec_run: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kiln");
        let store_calls = Family::<StoreLabels, Counter>::default();
        let store_errors = Family::<StoreLabels, Counter>::default();
        let store_digests = Family::<StoreLabels, Counter>::default();
        let store_hits = Family::<StoreLabels, Counter>::default();
        let store_misses = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_hits",
            "Blobs a store node had (gets served, digests present)",
            store_hits.clone(),
        );
        registry.register(
            "store_misses",
            "Blobs a store node lacked (NOT_FOUND gets, missing digests)",
            store_misses.clone(),
        );
        let store_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_calls",
            "Calls into each store node",
            store_calls.clone(),
        );
        registry.register(
            "store_errors",
            "Failed calls into each store node",
            store_errors.clone(),
        );
        registry.register(
            "store_digests",
            "Digests asked of each store node by find_missing",
            store_digests.clone(),
        );
        registry.register(
            "store_latency_seconds",
            "Latency of store calls",
            store_latency.clone(),
        );
        let rpc_calls = Family::<RpcLabels, Counter>::default();
        let rpc_latency: Family<RpcLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let rpc_bytes = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        let rpc_in_flight = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "grpc_calls",
            "gRPC calls by method and status code",
            rpc_calls.clone(),
        );
        registry.register(
            "grpc_latency_seconds",
            "gRPC call latency by method",
            rpc_latency.clone(),
        );
        registry.register(
            "grpc_bytes",
            "gRPC message bytes by direction",
            rpc_bytes.clone(),
        );
        registry.register(
            "grpc_in_flight",
            "gRPC calls being served",
            rpc_in_flight.clone(),
        );
        let resident_bytes = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "process_resident_bytes",
            "Resident memory of the process",
            resident_bytes.clone(),
        );
        let bes_events = Counter::default();
        let webhook_deliveries = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register("bes_events", "Build events stored", bes_events.clone());
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome",
            webhook_deliveries.clone(),
        );
        let exec_queued = prometheus_client::metrics::gauge::Gauge::default();
        let exec_jobs = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        let exec_queue_wait = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        let exec_run = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        registry.register(
            "exec_queued",
            "Jobs waiting for a worker",
            exec_queued.clone(),
        );
        registry.register("exec_jobs", "Execution jobs by event", exec_jobs.clone());
        registry.register(
            "exec_queue_wait_seconds",
            "Time from queueing to a worker taking the job",
            exec_queue_wait.clone(),
        );
        registry.register(
            "exec_run_seconds",
            "Time from a worker taking a job to its result",
            exec_run.clone(),
        );
        Arc::new(Metrics {
            exec_queued,
            exec_jobs,
            exec_queue_wait,
            exec_run,
            resident_bytes,
            rpc_calls,
            rpc_latency,
            rpc_bytes,
            rpc_in_flight,
            bes_events,
            webhook_deliveries,
            registry,
            store_calls,
            store_errors,
            store_digests,
            store_hits,
            store_misses,
            store_latency,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        // statm's second field is resident pages.
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident_bytes.set(pages * 4096);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
