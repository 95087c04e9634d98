//! The `chunking` workload: REAPI 2.12's chunking goals, measured.
//!
//! Three versions of one large artifact, each 1 KiB different from the last
//! in the middle, are uploaded plainly through ByteStream
//! (`chunking_write` is the first, a fresh blob; `chunking_versions` the
//! other two). Before each new version is uploaded, a chunk-aware client
//! cuts it with the server's advertised FastCDC parameters and asks which
//! chunks are missing: what it would have had to upload. Then the first
//! version is read back (`chunking_read`) and split (`chunking_split`).
//! With `--metrics-url`, the chunked layer's stored bytes are compared
//! with one version's size.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;

use super::Ctx;
use super::data::unique_piece;
use super::runner::Stats;
use super::workloads::{MAX_MSG, probed, run_seed};
use crate::chunking::splitter::Splitter;
use crate::chunking::{Chunker, FastCdc};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::reapi::capabilities_client::CapabilitiesClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{FindMissingBlobsRequest, GetCapabilitiesRequest, SplitBlobRequest};

const PIECE: u64 = 1 << 20;
/// SplitBlob calls timed, at most (`--requests` lowers it).
const SPLITS: u64 = 200;
/// Reads of the first version timed, at most.
const READS: u64 = 4;

/// Megabyte `i` of version `v`: version 0 plus the 1 KiB edits of versions
/// 1 to `v`, each 4 KiB after the middle of the blob.
fn piece(seed: u64, v: u64, i: u64, size: u64) -> bytes::Bytes {
    let len = (size - i * PIECE).min(PIECE) as usize;
    let mut out = unique_piece(seed, i, len);
    for k in 1..=v {
        let at = size / 2 + k * 4096;
        if at / PIECE == i {
            let start = (at % PIECE) as usize;
            let end = (start + 1024).min(out.len());
            out[start..end].copy_from_slice(&unique_piece(seed ^ 0xed17, k, end - start));
        }
    }
    out.into()
}

fn pieces(seed: u64, v: u64, size: u64) -> impl Iterator<Item = bytes::Bytes> {
    (0..size.div_ceil(PIECE)).map(move |i| piece(seed, v, i, size))
}

/// The SHA-256 digest of version `v`, and of each of its chunks.
async fn cut(seed: u64, v: u64, size: u64, chunker: &Chunker) -> Result<(Digest, Vec<Digest>)> {
    let stream = futures::stream::iter(pieces(seed, v, size).map(Ok)).boxed();
    let mut splitter = Splitter::new(chunker, stream);
    let mut whole = DigestFunction::Sha256.hasher(size);
    let mut chunks = Vec::new();
    while let Some(chunk) = splitter.next().await? {
        whole.update(&chunk);
        chunks.push(DigestFunction::Sha256.digest_of(&chunk));
    }
    Ok((whole.finish(), chunks))
}

/// The chunked layer's new bytes so far (`kiln_chunked_bytes_total`).
async fn stored_bytes(ctx: &Ctx) -> Option<f64> {
    let text = super::scrape(ctx.metrics_url.as_deref()?).await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("kiln_chunked_bytes_total{") && l.contains("kind=\"stored\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn resource(ctx: &Ctx, rest: String) -> String {
    if ctx.instance.is_empty() {
        rest
    } else {
        format!("{}/{rest}", ctx.instance)
    }
}

async fn upload(ctx: &Ctx, seed: u64, v: u64, size: u64, digest: &Digest) -> Result<()> {
    let name = resource(
        ctx,
        format!("uploads/{}/blobs/{digest}", uuid::Uuid::new_v4()),
    );
    let mut offset = 0u64;
    let msgs = pieces(seed, v, size).map(move |data| {
        let msg = WriteRequest {
            resource_name: if offset == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write: offset + data.len() as u64 == size,
            data,
        };
        offset += msg.data.len() as u64;
        msg
    });
    let mut client = ByteStreamClient::new(ctx.channel(0)).max_encoding_message_size(MAX_MSG);
    let resp = client
        .write(futures::stream::iter(msgs))
        .await
        .map_err(|s| Error::Unavailable(format!("upload of version {v}: {s}")))?;
    if resp.get_ref().committed_size != size as i64 {
        return Err(Error::internal(format!(
            "version {v}: committed {} of {size}",
            resp.get_ref().committed_size
        )));
    }
    Ok(())
}

/// Times one call into `stats`.
fn timed(stats: &mut Stats, started: Instant, bytes: u64) {
    stats.ops += 1;
    stats.bytes += bytes;
    stats.elapsed += started.elapsed();
    stats
        .latencies_us
        .push(started.elapsed().as_micros() as u64);
}

/// The workload; see the module docs.
pub(crate) async fn chunking(ctx: &Ctx, size: u64) -> Result<Vec<Stats>> {
    let seed = run_seed();
    let caps = CapabilitiesClient::new(ctx.channel(0))
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: ctx.instance.clone(),
        })
        .await
        .map_err(|s| Error::Unavailable(format!("GetCapabilities: {s}")))?
        .into_inner();
    let params = caps
        .cache_capabilities
        .and_then(|c| c.fast_cdc_2020_params)
        .ok_or_else(|| Error::InvalidArgument("the server does not advertise FastCDC".into()))?;
    let chunker = Chunker::FastCdc(FastCdc::new(params.avg_chunk_size_bytes, params.seed)?);
    let mut cas = ContentAddressableStorageClient::new(ctx.channel(0))
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG);

    let mut counts = BTreeMap::new();
    let stored_before = stored_bytes(ctx).await;
    let mut write = Stats::new("chunking_write");
    let mut versions = Stats::new("chunking_versions");
    let mut first = None;
    for v in 0..3u64 {
        let (digest, chunks) = cut(seed, v, size, &chunker).await?;
        if v > 0 {
            let missing = cas
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: ctx.instance.clone(),
                    blob_digests: chunks.iter().map(Digest::to_proto).collect(),
                    digest_function: 0,
                })
                .await
                .map_err(|s| Error::Unavailable(format!("FindMissingBlobs: {s}")))?
                .into_inner()
                .missing_blob_digests;
            let name = if v == 1 {
                "client_chunks_v2"
            } else {
                "client_chunks_v3"
            };
            counts.insert(name, missing.len() as f64);
            counts.insert("chunks_per_version", chunks.len() as f64);
        }
        let phase = if v == 0 { &mut write } else { &mut versions };
        let calls = ctx.backend_calls().await;
        let cpu = ctx.server_cpu();
        let started = Instant::now();
        upload(ctx, seed, v, size, &digest).await?;
        timed(phase, started, size);
        if let (Some(before), Some(after)) = (cpu, ctx.server_cpu()) {
            phase.server_cpu = Some(phase.server_cpu.unwrap_or_default() + (after - before));
        }
        if let (Some(before), Some(after)) = (calls, ctx.backend_calls().await) {
            phase.backend_calls = Some(phase.backend_calls.unwrap_or_default() + (after - before));
        }
        first.get_or_insert(digest);
    }
    let first = first.expect("three versions");
    if let (Some(before), Some(after)) = (stored_before, stored_bytes(ctx).await) {
        counts.insert("stored_per_version", (after - before) / size as f64);
    }
    write.counts = Some(counts);

    // --requests lowers these (its default is a cap, not a count).
    let reads = ctx.limit.requests.unwrap_or(READS).clamp(1, READS);
    let read = probed(ctx, async {
        let mut stats = Stats::new("chunking_read");
        for _ in 0..reads {
            let started = Instant::now();
            let mut client =
                ByteStreamClient::new(ctx.channel(0)).max_decoding_message_size(MAX_MSG);
            let result = async {
                let mut stream = client
                    .read(ReadRequest {
                        resource_name: resource(ctx, format!("blobs/{first}")),
                        read_offset: 0,
                        read_limit: 0,
                    })
                    .await?
                    .into_inner();
                let mut got = 0u64;
                while let Some(msg) = stream.message().await? {
                    got += msg.data.len() as u64;
                }
                Ok::<_, tonic::Status>(got)
            }
            .await;
            match result {
                Ok(got) if got == size => timed(&mut stats, started, size),
                Ok(got) => stats.fail(format!("read {got} of {size} bytes")),
                Err(s) => stats.fail(s.to_string()),
            }
        }
        stats
    })
    .await;

    let splits = ctx.limit.requests.unwrap_or(SPLITS).clamp(1, SPLITS);
    let split = probed(ctx, async {
        let mut stats = Stats::new("chunking_split");
        for _ in 0..splits {
            let started = Instant::now();
            let result = cas
                .split_blob(SplitBlobRequest {
                    instance_name: ctx.instance.clone(),
                    blob_digest: Some(first.to_proto()),
                    ..Default::default()
                })
                .await;
            match result {
                Ok(r) => {
                    let n = r.get_ref().chunk_digests.len() as u64;
                    timed(&mut stats, started, 0);
                    stats.items += n;
                }
                Err(s) => stats.fail(s.to_string()),
            }
        }
        stats
    })
    .await;
    Ok(vec![write, versions, read, split])
}
