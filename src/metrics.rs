//! The server's Prometheus registry, served as text at `/metrics` on the
//! HTTP listener.
//!
//! One [`Metrics`] per server (not a global), so tests that run several
//! servers in one process see exact per-server counts. It only registers
//! and encodes: each component declares its own metrics beside its code and
//! registers them here once when it is built (`StoreMetrics` in
//! `store::instrumented`, `CallMetrics` in `edge::metrics`, `ExecMetrics` in
//! the scheduler, `BesMetrics` and `WebhookMetrics` in `bes`), so nothing
//! depends on a struct listing every component.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// The registry of one server.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Resident memory of the process, refreshed at each scrape.
    resident_bytes: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets from 100 µs to ~26 s, for calls.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Metrics {
    /// An empty registry (names get the `kiln_` prefix).
    pub fn new() -> Arc<Metrics> {
        let metrics = Arc::new(Metrics {
            registry: Mutex::new(Registry::with_prefix("kiln")),
            resident_bytes: Gauge::default(),
        });
        metrics.register(
            "process_resident_bytes",
            "Resident memory of the process",
            metrics.resident_bytes.clone(),
        );
        metrics
    }

    /// Registers one metric; components call this once, when built.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
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
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
