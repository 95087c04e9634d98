//! The execution workloads, through the whole remote-execution path:
//! Execute, queueing, a worker's lease, its run and report, the
//! action-cache write and the operation's completion. Need workers
//! connected to the target (`kiln worker`).
//! - `exec`: no-op actions (`/bin/true`);
//! - `compile`: a real C compile (`cc -O2 -c` of a generated ~2,000-line
//!   file, its object file an output), a compile-sized action;
//! - `cancel`: long actions cancelled once their process runs, timed from
//!   CancelOperation to the last process of the action gone (read from
//!   /proc: the worker must run on the bench's host).
//!
//! Every call executes a distinct, cacheable action (distinct salts,
//! uploaded in setup) with `skip_cache_lookup`, so nothing is merged or
//! served from the cache: each call is one full scheduling round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use super::Ctx;
use super::runner::{Done, Stats, drive};
use super::workloads::{sha, upload};
use crate::error::Result;
use crate::proto::reapi::execution_client::ExecutionClient;
use crate::proto::reapi::{Action, Command, Directory, ExecuteRequest, ExecuteResponse, command};

/// Distinct actions uploaded in setup; calls beyond this reuse them.
const ACTIONS: u64 = 20_000;
/// A call that takes longer fails (no worker connected, most likely).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn command(arguments: &[&str], outputs: &[&str]) -> Bytes {
    Bytes::from(
        Command {
            arguments: arguments.iter().map(|a| a.to_string()).collect(),
            environment_variables: vec![command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            output_files: outputs.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// The `exec` workload: no-op actions.
pub(super) async fn exec(ctx: &Ctx) -> Result<Vec<Stats>> {
    let root = Bytes::from(Directory::default().encode_to_vec());
    run_actions(ctx, "exec", command(&["/bin/true"], &[]), root, Vec::new()).await
}

/// A C file that takes an optimising compiler a few hundred milliseconds.
fn c_source() -> String {
    let mut src = String::from("#include <stddef.h>\n");
    for i in 0..400 {
        src.push_str(&format!(
            "int f{i}(const int *v, size_t n) {{ int s = {i}; for (size_t k = 0; k < n; k++) {{ s = s * 31 + v[k] * (k % {m} + 1); if (s > 1000000) s -= 999983; }} return s; }}\n",
            m = i % 7 + 2
        ));
    }
    src
}

/// The `compile` workload: a real C compile per action.
pub(super) async fn compile(ctx: &Ctx) -> Result<Vec<Stats>> {
    let source = Bytes::from(c_source());
    let root = Bytes::from(
        Directory {
            files: vec![crate::proto::reapi::FileNode {
                name: "src.c".into(),
                digest: Some(sha(&source).to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let cc = command(&["cc", "-O2", "-c", "src.c", "-o", "src.o"], &["src.o"]);
    run_actions(ctx, "compile", cc, root, vec![source]).await
}

/// Runs distinct actions of one command and input root (`extra`: its files).
async fn run_actions(
    ctx: &Ctx,
    name: &str,
    command: Bytes,
    root: Bytes,
    extra: Vec<Bytes>,
) -> Result<Vec<Stats>> {
    let run = super::workloads::run_seed();
    let count = ctx.limit.requests.unwrap_or(ACTIONS).min(ACTIONS);
    let actions: Vec<Bytes> = (0..count)
        .map(|n| {
            Bytes::from(
                Action {
                    command_digest: Some(sha(&command).to_proto()),
                    input_root_digest: Some(sha(&root).to_proto()),
                    salt: Bytes::from(format!("{run}-{n}")),
                    ..Default::default()
                }
                .encode_to_vec(),
            )
        })
        .collect();
    let digests: Arc<Vec<_>> = Arc::new(actions.iter().map(|a| sha(a).to_proto()).collect());
    let mut blobs = vec![command, root];
    blobs.extend(extra);
    blobs.extend(actions);
    upload(ctx, blobs).await?;
    let next = Arc::new(AtomicU64::new(0));
    let channels: Vec<_> = (0..ctx.concurrency).map(|w| ctx.channel(w)).collect();
    let instance = ctx.instance.clone();
    let phases = Arc::new(std::sync::Mutex::new(Phases::default()));
    let phases_in = phases.clone();
    let mut stats = drive(
        name,
        ctx.concurrency,
        ctx.limit,
        ctx.progress,
        move |w, _| {
            let n = next.fetch_add(1, Ordering::Relaxed) % digests.len() as u64;
            let request = ExecuteRequest {
                instance_name: instance.clone(),
                skip_cache_lookup: true,
                action_digest: Some(digests[n as usize].clone()),
                ..Default::default()
            };
            let mut client = ExecutionClient::new(channels[w].clone());
            let phases = phases_in.clone();
            async move {
                let call = async {
                    let mut stream = client.execute(request).await?.into_inner();
                    let mut last = None;
                    while let Some(op) = stream.next().await {
                        last = Some(op?);
                    }
                    let op =
                        last.ok_or_else(|| tonic::Status::internal("empty operation stream"))?;
                    let response = match op.result {
                        Some(crate::proto::longrunning::operation::Result::Response(any)) => {
                            ExecuteResponse::decode(&any.value[..])
                                .map_err(|e| tonic::Status::internal(e.to_string()))?
                        }
                        _ => {
                            return Err(tonic::Status::internal(
                                "operation ended without a response",
                            ));
                        }
                    };
                    match response.status {
                        Some(s) if s.code != 0 => Err(tonic::Status::new(s.code.into(), s.message)),
                        _ => {
                            if let Some(meta) = response.result.and_then(|r| r.execution_metadata) {
                                phases.lock().expect("phases lock").add(&meta);
                            }
                            Ok(Done { bytes: 0, items: 1 })
                        }
                    }
                };
                tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .map_err(|_| {
                        tonic::Status::deadline_exceeded(
                            "no result within 30s: is a worker connected?",
                        )
                    })?
            }
        },
    )
    .await;
    stats.phases_ms = phases.lock().expect("phases lock").means();
    Ok(vec![stats])
}

/// The `cancel` workload: one long action at a time, cancelled as soon as
/// its process runs; each sample is CancelOperation to the action's last
/// process gone.
pub(super) async fn cancel(ctx: &Ctx) -> Result<Vec<Stats>> {
    use crate::proto::longrunning::CancelOperationRequest;
    use crate::proto::longrunning::operations_client::OperationsClient;
    let run = super::workloads::run_seed() % 1_000_000;
    let root = Bytes::from(Directory::default().encode_to_vec());
    upload(ctx, vec![root.clone()]).await?;
    let channel = ctx.channel(0);
    let mut stats = Stats::new("cancel");
    let started = std::time::Instant::now();
    let deadline = ctx.limit.duration.map(|d| started + d);
    let most = ctx.limit.requests.unwrap_or(u64::MAX);
    for n in 0..most {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        // A child in a session of its own and the command itself.
        let marker = format!("600.{run}{n:06}");
        let script = format!("setsid -f sleep {marker}1; sleep {marker}2");
        let cmd = command(&["/bin/sh", "-c", &script], &[]);
        let action = Bytes::from(
            Action {
                command_digest: Some(sha(&cmd).to_proto()),
                input_root_digest: Some(sha(&root).to_proto()),
                do_not_cache: true,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let digest = sha(&action);
        upload(ctx, vec![cmd, action]).await?;
        let sample = async {
            let mut stream = ExecutionClient::new(channel.clone())
                .execute(ExecuteRequest {
                    instance_name: ctx.instance.clone(),
                    skip_cache_lookup: true,
                    action_digest: Some(digest.to_proto()),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let first = stream
                .next()
                .await
                .ok_or_else(|| tonic::Status::internal("empty operation stream"))??;
            let pattern = format!("sleep\0{marker}");
            wait_until(|| !processes_with(&pattern).is_empty()).await?;
            let at = std::time::Instant::now();
            OperationsClient::new(channel.clone())
                .cancel_operation(CancelOperationRequest { name: first.name })
                .await?;
            wait_until(|| processes_with(&pattern).is_empty()).await?;
            let took = at.elapsed();
            while stream.next().await.is_some() {}
            Ok::<_, tonic::Status>(took)
        };
        match tokio::time::timeout(CALL_TIMEOUT, sample).await {
            Ok(Ok(took)) => {
                stats.ops += 1;
                stats.latencies_us.push(took.as_micros() as u64);
            }
            Ok(Err(e)) => stats.fail(e.to_string()),
            Err(_) => {
                stats.fail("no result within 30s: is a worker connected on this host?".into())
            }
        }
    }
    stats.elapsed = started.elapsed();
    Ok(vec![stats])
}

/// Polls `done` every millisecond.
async fn wait_until(done: impl Fn() -> bool) -> std::result::Result<(), tonic::Status> {
    while !done() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Running processes whose command line contains `pattern`.
fn processes_with(pattern: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            (state != "Z" && String::from_utf8_lossy(&cmdline).contains(pattern)).then_some(pid)
        })
        .collect()
}

/// Sums of the worker's phases over the calls, from the timestamps it
/// reports in ExecutedActionMetadata: where an action's time goes.
#[derive(Debug, Default)]
struct Phases {
    calls: u64,
    input_fetch: f64,
    execution: f64,
    output_upload: f64,
    worker_total: f64,
}

fn millis_between(
    start: &Option<prost_types::Timestamp>,
    end: &Option<prost_types::Timestamp>,
) -> f64 {
    let ms = |t: &prost_types::Timestamp| t.seconds as f64 * 1e3 + t.nanos as f64 / 1e6;
    match (start, end) {
        (Some(s), Some(e)) => (ms(e) - ms(s)).max(0.0),
        _ => 0.0,
    }
}

impl Phases {
    fn add(&mut self, m: &crate::proto::reapi::ExecutedActionMetadata) {
        self.calls += 1;
        self.input_fetch += millis_between(
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
        );
        self.execution += millis_between(
            &m.execution_start_timestamp,
            &m.execution_completed_timestamp,
        );
        self.output_upload += millis_between(
            &m.output_upload_start_timestamp,
            &m.output_upload_completed_timestamp,
        );
        self.worker_total +=
            millis_between(&m.worker_start_timestamp, &m.worker_completed_timestamp);
    }

    fn means(&self) -> Option<std::collections::BTreeMap<&'static str, f64>> {
        if self.calls == 0 {
            return None;
        }
        let n = self.calls as f64;
        Some(
            [
                ("input_fetch", self.input_fetch),
                ("execution", self.execution),
                ("output_upload", self.output_upload),
                ("worker_total", self.worker_total),
            ]
            .into_iter()
            .map(|(k, v)| (k, v / n))
            .collect(),
        )
    }
}
