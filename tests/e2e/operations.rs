//! Operational behaviour: a full disk and a graceful stop.

use std::process::Command;

use bytes::Bytes;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::reapi::{
    BatchUpdateBlobsRequest, FindMissingBlobsRequest, batch_update_blobs_request,
};
use tonic::Code;

use crate::common::{Kiln, MEMORY, blob, disk, sha};

/// A tiny tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (README's test command runs as root)"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_loses_nothing() {
    let fs = Tmpfs::new("6m");
    let kiln = Kiln::start_in(&disk(), fs.0.path()).await;
    let small = blob(1, 1000);
    let ds = sha(&small);
    let up = |d: &kiln::digest::Digest, data: Bytes| BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data,
            compressor: 0,
        }],
        ..Default::default()
    };
    let mut cas = kiln.cas().await;
    let r = cas
        .batch_update_blobs(up(&ds, small.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);

    let big = blob(2, 8 << 20);
    let db = sha(&big);
    let msgs: Vec<WriteRequest> = (0..8)
        .map(|i| WriteRequest {
            resource_name: if i == 0 {
                format!("uploads/u/blobs/{db}")
            } else {
                String::new()
            },
            write_offset: (i as i64) << 20,
            finish_write: i == 7,
            data: big.slice(i << 20..(i + 1) << 20),
        })
        .collect();
    let err = kiln
        .bytestream()
        .await
        .write(tokio_stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // The earlier blob is intact, the big one absent, and small writes work again.
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![ds.to_proto(), db.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![db.to_proto()]);
    let other = blob(3, 1000);
    let r = cas
        .batch_update_blobs(up(&sha(&other), other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
    kiln.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones() {
    let kiln = Kiln::start(MEMORY).await;
    let data = blob(4, 2 << 20);
    let d = sha(&data);
    let mut bs = kiln.bytestream().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move {
        bs.write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(WriteRequest {
        resource_name: format!("uploads/u/blobs/{d}"),
        write_offset: 0,
        finish_write: false,
        data: data.slice(..1 << 20),
    })
    .await
    .unwrap();
    // The server holds the first half (seen through QueryWriteStatus).
    let mut status = kiln.bytestream().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let q = status
            .query_write_status(kiln::proto::bytestream::QueryWriteStatusRequest {
                resource_name: format!("uploads/u/blobs/{d}"),
            })
            .await;
        if q.is_ok_and(|r| r.into_inner().committed_size == 1 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first half never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(status);

    let url = kiln.url.clone();
    let stopping = tokio::spawn(kiln.server.stop());
    // The stop has begun once new connections are refused...
    loop {
        let refused = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await;
        if refused.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new connections are still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // ...and it cannot end while the upload is open.
    assert!(
        !stopping.is_finished(),
        "the stop waits for the in-flight upload"
    );

    tx.send(WriteRequest {
        resource_name: String::new(),
        write_offset: 1 << 20,
        finish_write: true,
        data: data.slice(1 << 20..),
    })
    .await
    .unwrap();
    let resp = call
        .await
        .unwrap()
        .expect("the in-flight upload completes")
        .into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
    stopping.await.unwrap().unwrap();
}
