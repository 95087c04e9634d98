//! The `bytestream` workload: ByteStream writes of fresh large blobs (made on
//! the fly, never whole in the client's memory), then reads of them.

use std::sync::Arc;

use futures::StreamExt;
use tonic::Status;

use super::Ctx;
use super::data::{Gen, stream_digest};
use super::runner::{Done, Limit, Stats, drive};
use super::workloads::{MAX_MSG, probed, run_seed};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};

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
        rate: None,
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
