//! The workloads: each sets up what it needs (untimed), then runs one or more
//! timed phases through [`drive`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tonic::Status;

use super::Ctx;
use super::data::{Gen, blob, stream_digest};
use super::runner::{Done, Limit, Stats, drive};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::reapi::action_cache_client::ActionCacheClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode,
    FileNode, FindMissingBlobsRequest, GetActionResultRequest, GetTreeRequest, OutputFile,
    UpdateActionResultRequest, batch_update_blobs_request,
};

const MAX_MSG: usize = 64 << 20;

fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// A seed unique to this run, so repeated runs never find their blobs present.
fn run_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

fn cas(ctx: &Ctx, worker: usize) -> ContentAddressableStorageClient<tonic::transport::Channel> {
    ContentAddressableStorageClient::new(ctx.channel(worker))
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

/// Uploads blobs in batches of at most ~3 MiB (setup, untimed).
async fn upload(ctx: &Ctx, blobs: Vec<Bytes>) -> Result<()> {
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
                return Err(Error::Internal(format!(
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
/// `--metrics-url` is given.
async fn probed(ctx: &Ctx, phase: impl std::future::Future<Output = Stats>) -> Stats {
    let before = ctx.backend_calls().await;
    let mut stats = phase.await;
    if let (Some(b), Some(a)) = (before, ctx.backend_calls().await) {
        stats.backend_calls = Some(a - b);
    }
    stats
}

/// FindMissingBlobs with 1,000 digests per call, half of them present.
pub(crate) async fn fmb(ctx: &Ctx) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let present: Vec<Bytes> = (0..500).map(|i| blob(seed + i, 64)).collect();
    let present_digests: Arc<Vec<reapi::Digest>> =
        Arc::new(present.iter().map(|b| sha(b).to_proto()).collect());
    upload(ctx, present).await?;
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let stats = probed(
        ctx,
        drive(
            "fmb",
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, seq| {
                let mut client = cas(&ctx2, w);
                let mut digests = (*present_digests).clone();
                let salt = seed ^ ((w as u64) << 40) ^ (seq << 8);
                digests.extend((0..500u64).map(|i| sha(&(salt + i).to_le_bytes()).to_proto()));
                let instance = instance.clone();
                async move {
                    let resp = client
                        .find_missing_blobs(FindMissingBlobsRequest {
                            instance_name: instance,
                            blob_digests: digests,
                            digest_function: 0,
                        })
                        .await?;
                    let missing = resp.get_ref().missing_blob_digests.len();
                    if missing != 500 {
                        return Err(Status::internal(format!(
                            "expected 500 missing, got {missing}"
                        )));
                    }
                    Ok(Done {
                        bytes: 0,
                        items: 1000,
                    })
                }
            },
        ),
    )
    .await;
    Ok(vec![stats])
}

/// FindMissingBlobs of the same 1,000 present digests on every call: the
/// steady state of repeated builds, where a warm existence cache should spare
/// the backend almost every lookup.
pub(crate) async fn fmb_present(ctx: &Ctx) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let present: Vec<Bytes> = (0..1000).map(|i| blob(seed + i, 64)).collect();
    let digests: Arc<Vec<reapi::Digest>> =
        Arc::new(present.iter().map(|b| sha(b).to_proto()).collect());
    upload(ctx, present).await?;
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let stats = probed(
        ctx,
        drive(
            "fmb_present",
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, _| {
                let mut client = cas(&ctx2, w);
                let req = FindMissingBlobsRequest {
                    instance_name: instance.clone(),
                    blob_digests: (*digests).clone(),
                    digest_function: 0,
                };
                async move {
                    let missing = client
                        .find_missing_blobs(req)
                        .await?
                        .into_inner()
                        .missing_blob_digests
                        .len();
                    if missing != 0 {
                        return Err(Status::internal(format!(
                            "{missing} uploaded blobs reported missing"
                        )));
                    }
                    Ok(Done {
                        bytes: 0,
                        items: 1000,
                    })
                }
            },
        ),
    )
    .await;
    Ok(vec![stats])
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

/// ByteStream: writes of fresh large blobs, then reads of them.
pub(crate) async fn bytestream(ctx: &Ctx, size: u64) -> Result<Vec<Stats>> {
    let seed = run_seed();
    // Two blobs per worker by default: enough write time to measure, bounded.
    let pool = ctx
        .limit
        .requests
        .unwrap_or(u64::MAX)
        .min(ctx.concurrency as u64 * 2)
        .max(1);
    let digests: Vec<Digest> = futures::stream::iter(0..pool)
        .map(|i| tokio::task::spawn_blocking(move || stream_digest(seed + i, size)))
        .buffered(2)
        .map(|r| r.map_err(Error::from))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let digests = Arc::new(digests);
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let (ds, inst) = (digests.clone(), instance.clone());
    let write_limit = Limit {
        duration: None,
        requests: Some(pool),
    };
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let write = probed(
        ctx,
        drive(
            "bytestream_write",
            ctx.concurrency,
            write_limit,
            ctx.progress,
            move |w, _| {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % pool;
                let digest = ds[i as usize];
                let mut client =
                    ByteStreamClient::new(ctx2.channel(w)).max_encoding_message_size(MAX_MSG);
                let name = format!(
                    "{}uploads/{}/blobs/{digest}",
                    prefix(&inst),
                    uuid::Uuid::new_v4()
                );
                async move {
                    let mut g = Gen::new(seed + i);
                    let chunks = (0..size.div_ceil(1 << 20)).map(move |c| {
                        let offset = c << 20;
                        let n = (size - offset).min(1 << 20) as usize;
                        WriteRequest {
                            resource_name: if c == 0 { name.clone() } else { String::new() },
                            write_offset: offset as i64,
                            finish_write: offset + n as u64 == size,
                            data: g.chunk(n),
                        }
                    });
                    let resp = client.write(futures::stream::iter(chunks)).await?;
                    if resp.get_ref().committed_size != size as i64 {
                        return Err(Status::internal(format!(
                            "committed {} of {size}",
                            resp.get_ref().committed_size
                        )));
                    }
                    Ok(Done {
                        bytes: size,
                        items: 1,
                    })
                }
            },
        ),
    )
    .await;
    let ctx3 = ctx.clone();
    let read = probed(
        ctx,
        drive(
            "bytestream_read",
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, seq| {
                let digest = digests[(w + seq as usize) % digests.len()];
                let mut client =
                    ByteStreamClient::new(ctx3.channel(w)).max_decoding_message_size(MAX_MSG);
                let name = format!("{}blobs/{digest}", prefix(&instance));
                async move {
                    let mut stream = client
                        .read(ReadRequest {
                            resource_name: name,
                            read_offset: 0,
                            read_limit: 0,
                        })
                        .await?
                        .into_inner();
                    let mut got = 0u64;
                    while let Some(msg) = stream.message().await? {
                        got += msg.data.len() as u64;
                    }
                    if got != size {
                        return Err(Status::internal(format!("read {got} of {size} bytes")));
                    }
                    Ok(Done {
                        bytes: size,
                        items: 1,
                    })
                }
            },
        ),
    )
    .await;
    Ok(vec![write, read])
}

fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

/// A synthetic tree of `dirs` directories with `files` files each; returns
/// the encoded directories (root last) and the root digest.
fn synthetic_tree(seed: u64, dirs: usize, files: usize) -> (Vec<Bytes>, Digest) {
    let dirs = dirs.max(1);
    let fanout = ((dirs as f64).sqrt().ceil() as usize).max(1);
    let mut next_id = 0u64;
    let mut make = |children: Vec<DirectoryNode>| -> (Bytes, Digest) {
        next_id += 1;
        let id = next_id;
        let dir = Directory {
            files: (0..files)
                .map(|f| FileNode {
                    name: format!("file{f}.txt"),
                    digest: Some(sha(&(seed ^ (id << 16) ^ f as u64).to_le_bytes()).to_proto()),
                    is_executable: false,
                    node_properties: None,
                })
                .collect(),
            directories: children,
            ..Default::default()
        };
        let bytes = Bytes::from(dir.encode_to_vec());
        let d = sha(&bytes);
        (bytes, d)
    };
    let mut encoded = Vec::with_capacity(dirs);
    let mut remaining = dirs - 1;
    let mut top = Vec::new();
    while remaining > 0 {
        let leaves = remaining.saturating_sub(1).min(fanout - 1);
        let mut children = Vec::new();
        for l in 0..leaves {
            let (b, d) = make(Vec::new());
            encoded.push(b);
            children.push(DirectoryNode {
                name: format!("leaf{l:04}"),
                digest: Some(d.to_proto()),
            });
        }
        let (b, d) = make(children);
        encoded.push(b);
        top.push(DirectoryNode {
            name: format!("dir{:05}", top.len()),
            digest: Some(d.to_proto()),
        });
        remaining -= leaves + 1;
    }
    let (b, root) = make(top);
    encoded.push(b);
    (encoded, root)
}

/// GetTree of a fresh tree (cold), then repeatedly of one tree (warm).
pub(crate) async fn tree(ctx: &Ctx, dirs: usize, files: usize) -> Result<Vec<Stats>> {
    const COLD_TREES: u64 = 3;
    let seed = run_seed();
    let mut roots = Vec::new();
    for t in 0..COLD_TREES {
        let (encoded, root) = synthetic_tree(seed + t, dirs, files);
        upload(ctx, encoded).await?;
        roots.push(root);
    }
    let roots = Arc::new(roots);
    let get_tree = move |ctx: Ctx, instance: String, root: Digest, w: usize| async move {
        let mut client = cas(&ctx, w);
        let req = GetTreeRequest {
            instance_name: instance,
            root_digest: Some(root.to_proto()),
            ..Default::default()
        };
        let mut stream = client.get_tree(req).await?.into_inner();
        let mut n = 0;
        while let Some(page) = stream.message().await? {
            n += page.directories.len() as u64;
        }
        if n != dirs as u64 {
            return Err(Status::internal(format!(
                "GetTree returned {n} of {dirs} directories"
            )));
        }
        Ok(Done { bytes: 0, items: n })
    };
    let (c, i, r) = (ctx.clone(), ctx.instance.clone(), roots.clone());
    let cold_limit = Limit {
        duration: None,
        requests: Some(COLD_TREES),
    };
    let cold = probed(
        ctx,
        drive("tree_cold", 1, cold_limit, ctx.progress, move |w, seq| {
            get_tree(c.clone(), i.clone(), r[seq as usize], w)
        }),
    )
    .await;
    let (c, i) = (ctx.clone(), ctx.instance.clone());
    // One call at a time, like the cold phase, so the two compare latencies.
    let warm = probed(
        ctx,
        drive("tree_warm", 1, ctx.limit, ctx.progress, move |w, _| {
            get_tree(c.clone(), i.clone(), roots[0], w)
        }),
    )
    .await;
    Ok(vec![cold, warm])
}

/// UpdateActionResult of a fresh action, then GetActionResult of it.
pub(crate) async fn ac(ctx: &Ctx) -> Result<Vec<Stats>> {
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
    let (ctx2, instance) = (ctx.clone(), ctx.instance.clone());
    let stats = probed(
        ctx,
        drive(
            "ac",
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |w, seq| {
                let mut client = ActionCacheClient::new(ctx2.channel(w));
                let action = sha(&(seed ^ ((w as u64) << 40) ^ (seq / 2)).to_le_bytes()).to_proto();
                let (instance, result) = (instance.clone(), result.clone());
                async move {
                    if seq % 2 == 0 {
                        let req = UpdateActionResultRequest {
                            instance_name: instance,
                            action_digest: Some(action),
                            action_result: Some(result),
                            ..Default::default()
                        };
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
            }
        })
        .await?;
        out.push(stats);
    }
    Ok(out)
}
