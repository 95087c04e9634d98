//! The workloads: each sets up what it needs (untimed), then runs one or more
//! timed phases through [`drive`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::Status;

use super::Ctx;
use super::data::blob;
use super::runner::{Done, Stats, drive};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi::action_cache_client::ActionCacheClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, OutputFile, UpdateActionResultRequest, batch_update_blobs_request,
};

pub(super) const MAX_MSG: usize = 64 << 20;

pub(super) fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// A seed unique to this run, so repeated runs never find their blobs present.
pub(super) fn run_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

pub(super) fn cas(
    ctx: &Ctx,
    worker: usize,
) -> ContentAddressableStorageClient<tonic::transport::Channel> {
    ContentAddressableStorageClient::new(ctx.channel(worker))
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

/// Uploads blobs in batches of at most ~3 MiB (setup, untimed).
pub(super) async fn upload(ctx: &Ctx, blobs: Vec<Bytes>) -> Result<()> {
    let mut client = cas(ctx, 0);
    let mut batch = Vec::new();
    let mut size = 0;
    let mut blobs = blobs.into_iter().peekable();
    while let Some(b) = blobs.next() {
        size += b.len();
        batch.push(batch_update_blobs_request::Request {
            digest: Some(sha(&b).to_proto()),
            data: b,
            compressor: 0,
        });
        if size > (3 << 20) || blobs.peek().is_none() {
            let req = BatchUpdateBlobsRequest {
                instance_name: ctx.instance.clone(),
                requests: std::mem::take(&mut batch),
                digest_function: 0,
            };
            let resp = client
                .batch_update_blobs(req)
                .await
                .map_err(|s| Error::Unavailable(format!("setup upload: {}", s.message())))?;
            if let Some(bad) = resp
                .get_ref()
                .responses
                .iter()
                .find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
            {
                return Err(Error::internal(format!(
                    "setup upload refused: {:?}",
                    bad.status
                )));
            }
            size = 0;
        }
    }
    Ok(())
}

/// Runs a timed phase, adding the server's backend calls during it when
/// `--metrics-url` is given, and its CPU time with `--server-pid`.
pub(super) async fn probed(ctx: &Ctx, phase: impl std::future::Future<Output = Stats>) -> Stats {
    let before = ctx.backend_calls().await;
    let cpu_before = ctx.server_cpu();
    let mut stats = phase.await;
    if let (Some(b), Some(a)) = (cpu_before, ctx.server_cpu()) {
        stats.server_cpu = Some(a.saturating_sub(b));
    }
    if let (Some(b), Some(a)) = (before, ctx.backend_calls().await) {
        stats.backend_calls = Some(a - b);
    }
    stats
}

/// FindMissingBlobs with 1,000 digests per call, half of them present and
/// half fresh (never uploaded, so never cached as present).
pub(crate) async fn fmb(ctx: &Ctx) -> Result<Vec<Stats>> {
    find_missing(ctx, "fmb", 500, 500).await
}

/// FindMissingBlobs of the same 1,000 present digests on every call: the
/// steady state of repeated builds, where a warm existence cache should spare
/// the backend almost every lookup.
pub(crate) async fn fmb_present(ctx: &Ctx) -> Result<Vec<Stats>> {
    find_missing(ctx, "fmb_present", 1000, 0).await
}

/// Uploads `present` blobs, then asks about them plus `absent` fresh digests
/// per call, checking that exactly the fresh ones are reported missing.
async fn find_missing(ctx: &Ctx, name: &str, present: u64, absent: u64) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let blobs: Vec<Bytes> = (0..present).map(|i| blob(seed + i, 64)).collect();
    let known: Arc<Vec<reapi::Digest>> =
        Arc::new(blobs.iter().map(|b| sha(b).to_proto()).collect());
    upload(ctx, blobs).await?;
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let phase = drive(
        name,
        ctx.concurrency,
        ctx.limit,
        ctx.progress,
        move |w, seq| {
            let mut client = cas(&ctx2, w);
            let mut digests = (*known).clone();
            let salt = seed ^ ((w as u64) << 40) ^ (seq << 8);
            digests.extend((0..absent).map(|i| sha(&(salt + i).to_le_bytes()).to_proto()));
            let req = FindMissingBlobsRequest {
                instance_name: instance.clone(),
                blob_digests: digests,
                digest_function: 0,
            };
            async move {
                let missing = client
                    .find_missing_blobs(req)
                    .await?
                    .into_inner()
                    .missing_blob_digests
                    .len() as u64;
                if missing != absent {
                    return Err(Status::internal(format!(
                        "expected {absent} missing, got {missing}"
                    )));
                }
                Ok(Done {
                    bytes: 0,
                    items: present + absent,
                })
            }
        },
    );
    Ok(vec![probed(ctx, phase).await])
}

/// BatchUpdateBlobs of 100 fresh 4 KiB blobs, then BatchReadBlobs of them.
pub(crate) async fn batch(ctx: &Ctx) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let blobs_for = move |w: usize, pair: u64| -> Vec<Bytes> {
        (0..100u64)
            .map(|i| blob(seed ^ ((w as u64) << 48) ^ (pair << 8) ^ i, 4096))
            .collect()
    };
    let stats = probed(
        ctx,
        drive(
            "batch",
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, seq| {
                let mut client = cas(&ctx2, w);
                let blobs = blobs_for(w, seq / 2);
                let instance = instance.clone();
                async move {
                    if seq % 2 == 0 {
                        let requests = blobs
                            .into_iter()
                            .map(|b| batch_update_blobs_request::Request {
                                digest: Some(sha(&b).to_proto()),
                                data: b,
                                compressor: 0,
                            })
                            .collect();
                        let resp = client
                            .batch_update_blobs(BatchUpdateBlobsRequest {
                                instance_name: instance,
                                requests,
                                digest_function: 0,
                            })
                            .await?;
                        if resp
                            .get_ref()
                            .responses
                            .iter()
                            .any(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
                        {
                            return Err(Status::internal("a blob of the batch was refused"));
                        }
                    } else {
                        let digests = blobs.iter().map(|b| sha(b).to_proto()).collect();
                        let resp = client
                            .batch_read_blobs(BatchReadBlobsRequest {
                                instance_name: instance,
                                digests,
                                ..Default::default()
                            })
                            .await?;
                        if resp.get_ref().responses.iter().any(|r| {
                            r.status.as_ref().is_some_and(|s| s.code != 0) || r.data.len() != 4096
                        }) {
                            return Err(Status::internal("a blob of the batch could not be read"));
                        }
                    }
                    Ok(Done {
                        bytes: 100 * 4096,
                        items: 100,
                    })
                }
            },
        ),
    )
    .await;
    Ok(vec![stats])
}

/// UpdateActionResult of a fresh action, then GetActionResult of it; with
/// `writes_only`, only the updates (the write path's own cost per call).
pub(crate) async fn ac(ctx: &Ctx, writes_only: bool) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let output = blob(seed, 1000);
    let log = blob(seed + 1, 200);
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out/bin".into(),
            digest: Some(sha(&output).to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(sha(&log).to_proto()),
        ..Default::default()
    };
    upload(ctx, vec![output, log]).await?;
    let invocation = uuid::Uuid::new_v4().to_string();
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let stats = probed(
        ctx,
        drive(
            if writes_only { "ac_write" } else { "ac" },
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, seq| {
                let mut client = ActionCacheClient::new(ctx2.channel(w));
                let n = if writes_only { seq } else { seq / 2 };
                let action = sha(&(seed ^ ((w as u64) << 40) ^ n).to_le_bytes()).to_proto();
                let (instance, mut result) = (instance.clone(), result.clone());
                // As in a build, each action is its own target's with its
                // own output path, and its write carries what Bazel sends
                // with each: the RequestMetadata naming them.
                result.output_files[0].path = format!("out/bench/w{w}/t{n}.o");
                let metadata = {
                    use prost::Message;
                    let m = crate::proto::reapi::RequestMetadata {
                        tool_invocation_id: invocation.clone(),
                        action_mnemonic: "CppCompile".into(),
                        target_id: format!("//bench/w{w}:t{n}"),
                        configuration_id: "k8-fastbuild".into(),
                        ..Default::default()
                    };
                    tonic::metadata::BinaryMetadataValue::from_bytes(&m.encode_to_vec())
                };
                async move {
                    if writes_only || seq % 2 == 0 {
                        let mut req = tonic::Request::new(UpdateActionResultRequest {
                            instance_name: instance,
                            action_digest: Some(action),
                            action_result: Some(result),
                            ..Default::default()
                        });
                        req.metadata_mut()
                            .insert_bin(crate::edge::trace::METADATA_HEADER, metadata);
                        client.update_action_result(req).await?;
                    } else {
                        let req = GetActionResultRequest {
                            instance_name: instance,
                            action_digest: Some(action),
                            ..Default::default()
                        };
                        client.get_action_result(req).await?;
                    }
                    Ok(Done { bytes: 0, items: 1 })
                }
            },
        ),
    )
    .await;
    Ok(vec![stats])
}

/// One core's SHA-256 and BLAKE3 speed on this machine: the ceiling for
/// verified writes.
pub(crate) async fn hash(ctx: &Ctx) -> Result<Vec<Stats>> {
    let mut out = Vec::new();
    for f in DigestFunction::ALL {
        let name = format!("hash_{}", f.name());
        let max_rounds = ctx.limit.requests.unwrap_or(u64::MAX).max(1) as usize;
        let budget = ctx
            .limit
            .duration
            .unwrap_or(Duration::from_secs(2))
            .min(Duration::from_secs(3));
        let stats = tokio::task::spawn_blocking(move || {
            let data = blob(1, 16 << 20);
            let started = Instant::now();
            let mut latencies = Vec::new();
            while (started.elapsed() < budget && latencies.len() < max_rounds)
                || latencies.is_empty()
            {
                let t = Instant::now();
                std::hint::black_box(f.digest_of(&data));
                latencies.push(t.elapsed().as_micros() as u64);
            }
            Stats {
                workload: name,
                ops: latencies.len() as u64,
                errors: 0,
                bytes: latencies.len() as u64 * data.len() as u64,
                items: 0,
                elapsed: started.elapsed(),
                latencies_us: latencies,
                first_error: None,
                backend_calls: None,
                server_cpu: None,
                phases_ms: None,
                counts: None,
            }
        })
        .await?;
        out.push(stats);
    }
    Ok(out)
}
