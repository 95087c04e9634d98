//! Metrics of what finished actions cost (kiln.v1.ResourceUsage, as
//! their workers measured it).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::execution::usage::{bytes, cpu_seconds, seconds};
use crate::metrics::Metrics;
use crate::proto::kiln_v1::ResourceUsage;

/// Resource usage of finished actions (kiln.v1.ResourceUsage).
#[derive(Debug)]
pub(in crate::execution) struct UsageMetrics {
    /// User plus system CPU per action, in seconds.
    cpu: Histogram,
    /// Peak resident memory per action, in bytes.
    max_rss: Histogram,
    /// Block-device bytes, by direction (read, written).
    io: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Input-root building per action, in seconds.
    input_fetch: Histogram,
    /// Output upload per action, in seconds.
    output_upload: Histogram,
}

impl UsageMetrics {
    /// Records one action's usage.
    pub(in crate::execution) fn observe(&self, u: &ResourceUsage) {
        self.cpu.observe(cpu_seconds(u));
        self.max_rss.observe(bytes(u.max_rss_bytes) as f64);
        for (direction, n) in [("read", u.read_bytes), ("written", u.written_bytes)] {
            self.io
                .get_or_create(&vec![("direction", direction)])
                .inc_by(bytes(n));
        }
        self.input_fetch.observe(seconds(&u.input_fetch));
        self.output_upload.observe(seconds(&u.output_upload));
    }

    /// Registers the metrics with `registry`.
    pub(in crate::execution) fn register(registry: &Metrics) -> UsageMetrics {
        let seconds = || Histogram::new(exponential_buckets(0.001, 4.0, 12));
        let m = UsageMetrics {
            cpu: seconds(),
            max_rss: Histogram::new(exponential_buckets(1024.0 * 1024.0, 2.0, 16)),
            io: Family::default(),
            input_fetch: seconds(),
            output_upload: seconds(),
        };
        registry.register(
            "exec_action_cpu_seconds",
            "User plus system CPU of each finished action, as its worker measured it",
            m.cpu.clone(),
        );
        registry.register(
            "exec_action_max_rss_bytes",
            "Peak resident memory of each finished action",
            m.max_rss.clone(),
        );
        registry.register(
            "exec_action_io_bytes",
            "Block-device bytes finished actions read and wrote",
            m.io.clone(),
        );
        registry.register(
            "exec_action_input_fetch_seconds",
            "Time workers spent building each action's input root",
            m.input_fetch.clone(),
        );
        registry.register(
            "exec_action_output_upload_seconds",
            "Time workers spent uploading each action's outputs",
            m.output_upload.clone(),
        );
        m
    }
}
