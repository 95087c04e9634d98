//! Drives one timed phase: `concurrency` workers issue calls until the
//! duration or request limit is reached, recording each call's latency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// When a timed phase stops: whichever limit comes first.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Wall-clock budget.
    pub duration: Option<Duration>,
    /// Call budget.
    pub requests: Option<u64>,
    /// Calls per second in all, spread evenly over the workers (None: each
    /// worker calls again as soon as its last call returns). A fixed rate
    /// that two servers both sustain compares their CPU per call at the
    /// same load, where a closed loop makes the slower one also pay more
    /// idle wake-ups per call.
    pub rate: Option<f64>,
}

/// The measurements of one phase.
#[derive(Debug)]
pub struct Stats {
    /// Workload (and phase) name.
    pub workload: String,
    /// Successful calls.
    pub ops: u64,
    /// Failed calls.
    pub errors: u64,
    /// Payload bytes moved by successful calls.
    pub bytes: u64,
    /// Items handled (digests checked, directories returned), if meaningful.
    pub items: u64,
    /// Wall-clock time of the phase.
    pub elapsed: Duration,
    /// Latency of every successful call, in microseconds.
    pub latencies_us: Vec<u64>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Requests the server made to its object storage during the phase.
    pub backend_calls: Option<f64>,
    /// CPU time the server used during the phase.
    pub server_cpu: Option<Duration>,
    /// Mean milliseconds of named parts of each call (exec: the worker's
    /// phases from ExecutedActionMetadata).
    pub phases_ms: Option<std::collections::BTreeMap<&'static str, f64>>,
    /// Figures a workload counts besides calls (chunking: the chunks a
    /// chunk-aware client would upload, stored bytes per version).
    pub counts: Option<std::collections::BTreeMap<&'static str, f64>>,
}

/// One line of `kiln bench` output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload (and phase) name.
    pub workload: String,
    /// Successful calls.
    pub ops: u64,
    /// Successful calls per second.
    pub ops_per_sec: f64,
    /// Payload bytes per second.
    pub bytes_per_sec: f64,
    /// Items per second (digests, directories), 0 where meaningless.
    pub items_per_sec: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile latency.
    pub p90_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest call.
    pub max_ms: f64,
    /// Failed calls.
    pub errors: u64,
    /// The first failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Object-storage requests the server made per successful call
    /// (with `--metrics-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_calls_per_op: Option<f64>,
    /// Object-storage requests per item (per digest for fmb).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_calls_per_item: Option<f64>,
    /// The server's CPU time per successful call, in microseconds (with
    /// `--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
    /// Mean milliseconds of named parts of each call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases_ms: Option<std::collections::BTreeMap<&'static str, f64>>,
    /// Workload-specific counts (see [`Stats::counts`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<std::collections::BTreeMap<&'static str, f64>>,
}

impl Stats {
    /// Nothing measured yet, for workloads that time their own samples.
    pub fn new(workload: &str) -> Stats {
        Stats {
            workload: workload.into(),
            ops: 0,
            errors: 0,
            bytes: 0,
            items: 0,
            elapsed: Duration::ZERO,
            latencies_us: Vec::new(),
            first_error: None,
            backend_calls: None,
            server_cpu: None,
            phases_ms: None,
            counts: None,
        }
    }

    /// Counts a failed call, keeping the first error.
    pub fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    /// Summarises the phase.
    pub fn report(mut self) -> Report {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies_us.len())
                - 1;
            self.latencies_us[i] as f64 / 1000.0
        };
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        Report {
            workload: self.workload.clone(),
            ops: self.ops,
            ops_per_sec: self.ops as f64 / secs,
            bytes_per_sec: self.bytes as f64 / secs,
            items_per_sec: self.items as f64 / secs,
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            errors: self.errors,
            first_error: self.first_error,
            backend_calls_per_op: self.backend_calls.map(|c| c / self.ops.max(1) as f64),
            backend_calls_per_item: self
                .backend_calls
                .filter(|_| self.items > 0)
                .map(|c| c / self.items as f64),
            server_cpu_us_per_op: self
                .server_cpu
                .map(|c| c.as_micros() as f64 / self.ops.max(1) as f64),
            phases_ms: self.phases_ms,
            counts: self.counts,
        }
    }
}

/// What one call achieved: payload bytes and items.
#[derive(Debug, Default, Clone, Copy)]
pub struct Done {
    /// Payload bytes moved.
    pub bytes: u64,
    /// Items handled.
    pub items: u64,
}

struct Worker {
    ops: u64,
    errors: u64,
    bytes: u64,
    items: u64,
    latencies: Vec<u64>,
    first_error: Option<String>,
}

/// Runs `op(worker, seq)` from `concurrency` workers until `limit`; `seq`
/// counts each worker's own calls, so a worker can pair a write with the read
/// that follows it.
pub async fn drive<F, Fut>(
    name: &str,
    concurrency: usize,
    limit: Limit,
    progress: bool,
    op: F,
) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Done, tonic::Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(name, progress);
    let started = Instant::now();
    let deadline = limit.duration.map(|d| started + d);
    let max = limit.requests.unwrap_or(u64::MAX);
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (op, issued, bar) = (op.clone(), issued.clone(), bar.clone());
            tokio::spawn(async move {
                let mut me = Worker {
                    ops: 0,
                    errors: 0,
                    bytes: 0,
                    items: 0,
                    latencies: Vec::new(),
                    first_error: None,
                };
                let mut seq = 0;
                let every = limit
                    .rate
                    .filter(|r| *r > 0.0)
                    .map(|r| Duration::from_secs_f64(concurrency as f64 / r));
                while issued.fetch_add(1, Ordering::SeqCst) < max
                    && deadline.is_none_or(|d| Instant::now() < d)
                {
                    if let Some(every) = every {
                        // This worker's seq-th call is due seq periods after
                        // the start (staggered by worker); late calls go at
                        // once.
                        let due =
                            started + every.mul_f64(seq as f64 + w as f64 / concurrency as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let t = Instant::now();
                    match op(w, seq).await {
                        Ok(done) => {
                            me.latencies.push(t.elapsed().as_micros() as u64);
                            me.ops += 1;
                            me.bytes += done.bytes;
                            me.items += done.items;
                        }
                        Err(status) => {
                            me.errors += 1;
                            me.first_error.get_or_insert_with(|| {
                                format!("{:?}: {}", status.code(), status.message())
                            });
                        }
                    }
                    seq += 1;
                    bar.inc(1);
                }
                me
            })
        })
        .collect();
    let mut stats = Stats::new(name);
    for w in workers {
        let me = match w.await {
            Ok(me) => me,
            Err(e) => {
                stats.errors += 1;
                stats
                    .first_error
                    .get_or_insert(format!("worker failed: {e}"));
                continue;
            }
        };
        stats.ops += me.ops;
        stats.errors += me.errors;
        stats.bytes += me.bytes;
        stats.items += me.items;
        stats.latencies_us.extend(me.latencies);
        if stats.first_error.is_none() {
            stats.first_error = me.first_error;
        }
    }
    stats.elapsed = started.elapsed();
    bar.finish_and_clear();
    stats
}

fn progress_bar(name: &str, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos} calls ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
