//! The `exec` workload: no-op actions (`/bin/true`) through the whole
//! remote-execution path: Execute, queueing, a worker's lease, its run and
//! report, the action-cache write and the operation's completion. Needs
//! workers connected to the target (`kiln worker`).
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

/// Runs the workload.
pub(super) async fn exec(ctx: &Ctx) -> Result<Vec<Stats>> {
    let command = Bytes::from(
        Command {
            arguments: vec!["/bin/true".into()],
            environment_variables: vec![command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let root = Bytes::from(Directory::default().encode_to_vec());
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
    blobs.extend(actions);
    upload(ctx, blobs).await?;
    let next = Arc::new(AtomicU64::new(0));
    let channels: Vec<_> = (0..ctx.concurrency).map(|w| ctx.channel(w)).collect();
    let instance = ctx.instance.clone();
    let phases = Arc::new(std::sync::Mutex::new(Phases::default()));
    let phases_in = phases.clone();
    let mut stats = drive(
        "exec",
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
