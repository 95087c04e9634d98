//! The `tree` workload: GetTree over a synthetic tree, cold (fresh trees,
//! nothing cached) and warm (one tree, over and over).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::Status;

use super::Ctx;
use super::runner::{Done, Limit, Stats, drive};
use super::workloads::{cas, probed, run_seed, sha, upload};
use crate::digest::Digest;
use crate::error::Result;
use crate::proto::reapi::{Directory, DirectoryNode, FileNode, GetTreeRequest};

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
        rate: None,
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
