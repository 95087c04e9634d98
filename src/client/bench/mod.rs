//! `kiln bench`: a REAPI load generator, so speed claims are measured, not
//! guessed. It drives any endpoint (kiln, BuildGrid, ...) with the same
//! workloads and reports ops/s, MB/s, latency percentiles and errors.
//!
//! Every run is bounded in time and in count, and refuses non-loopback
//! targets unless told otherwise.

mod bes;
mod bytestream;
mod chunking;
mod data;
mod exec;
mod pages;
mod runner;
mod tree;
mod workloads;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use runner::{Limit, Report};

use crate::error::{Error, Result};

/// The workloads `kiln bench` knows.
pub const WORKLOADS: [&str; 14] = [
    "fmb",
    "fmb_present",
    "batch",
    "bytestream",
    "chunking",
    "tree",
    "ac",
    "ac_write",
    "bes",
    "hash",
    "exec",
    "compile",
    "cancel",
    "pages",
];

/// Command-line options of `kiln bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The REAPI endpoint, e.g. grpc://127.0.0.1:50051.
    #[arg(long, default_value = "grpc://127.0.0.1:50051")]
    pub target: String,
    /// The instance_name to send.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Workloads, comma-separated: fmb, batch, bytestream, chunking (three
    /// 1 KiB-edited versions of a --blob-size artifact, then reads and
    /// SplitBlobs of it), tree, ac (updates and gets of fresh actions),
    /// ac_write (the updates only), bes,
    /// exec (no-op actions; needs `kiln worker`s connected), compile (a C
    /// compile per action), cancel (cancel to the action's processes gone;
    /// needs a worker on this host), pages (the
    /// web UI on a 1,000-target invocation; needs --http-target), hash
    /// (local hashing speed; needs no server), or all.
    #[arg(long, default_value = "fmb,batch,ac")]
    pub workload: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long each workload's timed phase runs (e.g. 10s).
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop each timed phase after this many calls.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Issue calls at this many per second in all instead of as fast as
    /// the server answers (so two servers' CPU per call compare at the
    /// same load).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print one JSON object per workload and nothing else.
    #[arg(long)]
    pub json: bool,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// bytestream: size of each blob (e.g. 256MiB).
    #[arg(long, default_value = "256MiB")]
    pub blob_size: String,
    /// tree: number of directories in the synthetic tree.
    #[arg(long, default_value_t = 10_000)]
    pub tree_dirs: usize,
    /// kiln's /metrics URL (e.g. http://127.0.0.1:8080/metrics): adds the
    /// object-storage requests per call to each report.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The server's process id on this machine: adds the server's CPU time
    /// per call (user + system, from /proc/PID/stat) to each report.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// bes: build events published in all (split over --concurrency streams).
    #[arg(long, default_value_t = 100_000)]
    pub bes_events: u64,
    /// tree: files per directory.
    #[arg(long, default_value_t = 5)]
    pub tree_files: usize,
    /// pages: kiln's HTTP listener (the web UI), e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http_target: String,
}

/// Hard caps so no run is unbounded, whatever the flags say.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_REQUESTS: u64 = 10_000_000;

impl BenchArgs {
    fn limit(&self) -> Result<Limit> {
        let duration = match &self.duration {
            Some(d) => Some(
                crate::config::Duration::parse(d)
                    .map_err(Error::InvalidArgument)?
                    .0
                    .min(MAX_DURATION),
            ),
            None if self.requests.is_none() => Some(Duration::from_secs(10)),
            None => Some(MAX_DURATION),
        };
        Ok(Limit {
            duration,
            requests: Some(self.requests.unwrap_or(MAX_REQUESTS).min(MAX_REQUESTS)),
            rate: self.rate.filter(|r| r.is_finite() && *r > 0.0),
        })
    }

    fn workloads(&self) -> Result<Vec<&str>> {
        if self.workload == "all" {
            return Ok(WORKLOADS.to_vec());
        }
        let list: Vec<&str> = self.workload.split(',').map(str::trim).collect();
        if let Some(bad) = list.iter().find(|w| !WORKLOADS.contains(w)) {
            return Err(Error::InvalidArgument(format!(
                "unknown workload {bad:?} (known: {})",
                WORKLOADS.join(", ")
            )));
        }
        Ok(list)
    }
}

/// The http:// URI of a grpc:// target, refusing remote hosts unless allowed.
pub fn target_uri(target: &str, allow_remote: bool) -> Result<String> {
    let rest = target
        .strip_prefix("grpc://")
        .or_else(|| target.strip_prefix("http://"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!("target {target:?} must start with grpc://"))
        })?;
    let host = match rest.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => rest,
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && !allow_remote {
        return Err(Error::InvalidArgument(format!(
            "target {target:?} is not on this machine; pass --allow-remote to load it anyway"
        )));
    }
    Ok(format!("http://{rest}"))
}

/// What a workload needs to reach the server.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub channels: Vec<Channel>,
    pub instance: String,
    pub concurrency: usize,
    pub limit: Limit,
    pub progress: bool,
    pub metrics_url: Option<String>,
    pub server_pid: Option<u32>,
}

impl Ctx {
    /// CPU time the server process has used so far (user + system).
    pub fn server_cpu(&self) -> Option<std::time::Duration> {
        process_cpu(self.server_pid?)
    }

    pub fn channel(&self, worker: usize) -> Channel {
        self.channels[worker % self.channels.len()].clone()
    }

    /// The server's object-storage requests so far: S3 gets and puts plus
    /// one HEAD per digest of each find_missing.
    pub async fn backend_calls(&self) -> Option<f64> {
        let text = scrape(self.metrics_url.as_deref()?).await.ok()?;
        let sum = |metric: &str, op: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with(metric)
                        && l.contains("kind=\"s3\"")
                        && l.contains(&format!("op=\"{op}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Some(
            sum("kiln_store_calls_total{", "get")
                + sum("kiln_store_calls_total{", "put")
                + sum("kiln_store_digests_total{", "find_missing"),
        )
    }
}

/// GETs a plain-HTTP URL (the metrics endpoint) and returns the body.
async fn scrape(url: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut conn = tokio::net::TcpStream::connect(host).await?;
    conn.write_all(
        format!(
            "GET /{} HTTP/1.0\r\nHost: {host}\r\n\r\n",
            path.trim_start_matches('/')
        )
        .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

async fn connect(uri: &str, count: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..count {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| Error::InvalidArgument(format!("bad target {uri}: {e}")))?
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to {uri}: {e}")))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs the requested workloads in order and returns one report per timed phase.
pub async fn run(args: &BenchArgs, progress: bool) -> Result<Vec<Report>> {
    let workloads = args.workloads()?;
    let limit = args.limit()?;
    let concurrency = args.concurrency.clamp(1, 1024);
    let needs_server = workloads.iter().any(|w| *w != "hash");
    let channels = if needs_server {
        let uri = target_uri(&args.target, args.allow_remote)?;
        connect(&uri, concurrency.min(4)).await?
    } else {
        Vec::new()
    };
    let ctx = Ctx {
        channels,
        instance: args.instance.clone(),
        concurrency,
        limit,
        progress,
        metrics_url: args.metrics_url.clone(),
        server_pid: args.server_pid,
    };
    let blob_size = crate::config::ByteSize::parse(&args.blob_size)
        .map_err(Error::InvalidArgument)?
        .0;
    let mut reports = Vec::new();
    for w in workloads {
        let stats = match w {
            "fmb" => workloads::fmb(&ctx).await?,
            "fmb_present" => workloads::fmb_present(&ctx).await?,
            "batch" => workloads::batch(&ctx).await?,
            "bytestream" => bytestream::bytestream(&ctx, blob_size).await?,
            "chunking" => chunking::chunking(&ctx, blob_size).await?,
            "tree" => tree::tree(&ctx, args.tree_dirs, args.tree_files).await?,
            "ac" => workloads::ac(&ctx, false).await?,
            "ac_write" => workloads::ac(&ctx, true).await?,
            "bes" => bes::bes(&ctx, args.bes_events).await?,
            "hash" => workloads::hash(&ctx).await?,
            "exec" => exec::exec(&ctx).await?,
            "compile" => exec::compile(&ctx).await?,
            "cancel" => exec::cancel(&ctx).await?,
            "pages" => pages::pages(&ctx, &args.http_target, args.bes_events).await?,
            _ => unreachable!("checked in workloads()"),
        };
        reports.extend(stats.into_iter().map(|s| s.report()));
    }
    Ok(reports)
}

/// Reports as the aligned text table `kiln bench` prints.
pub fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<18} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "workload", "ops", "ops/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for r in reports {
        out.push_str(&format!(
            "{:<18} {:>9} {:>11.1} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}\n",
            r.workload,
            r.ops,
            r.ops_per_sec,
            r.bytes_per_sec / 1e6,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.errors
        ));
        if let Some(e) = &r.first_error {
            out.push_str(&format!("  first error: {e}\n"));
        }
    }
    out
}

/// The CPU time (user + system) process `pid` has used, from its
/// /proc/PID/stat (fields 14 and 15, in clock ticks).
fn process_cpu(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as u64;
    Some(std::time::Duration::from_micros(ticks * 1_000_000 / hz))
}

#[cfg(test)]
mod cpu_tests {
    #[test]
    fn reads_this_process_cpu_time() {
        let before = super::process_cpu(std::process::id()).expect("own /proc stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = super::process_cpu(std::process::id()).unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
