//! Requests whose declared sizes would make kiln allocate or read far more
//! than they carry: zstd bombs in batches, sizes that wrap around 2^64,
//! oversized queries. kiln runs as its own process so its peak RSS (VmHWM)
//! is its own.

use bytes::Bytes;
use kiln::proto::reapi::batch_update_blobs_request::Request as Upload;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, Digest as ProtoDigest, FindMissingBlobsRequest,
    compressor,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{MEMORY, sha, spawn_kiln};

/// Peak resident memory of a process, in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// One zstd frame of `len` zero bytes, made without holding them.
fn zstd_zeros(len: u64, window_log: Option<u32>) -> Bytes {
    use std::io::Write;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    if let Some(w) = window_log {
        encoder
            .set_parameter(zstd::stream::raw::CParameter::WindowLog(w))
            .unwrap();
    }
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        encoder.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    Bytes::from(encoder.finish().unwrap())
}

fn zstd_entry(hash: &str, declared: i64, data: Bytes) -> Upload {
    Upload {
        digest: Some(ProtoDigest {
            hash: hash.into(),
            size_bytes: declared,
        }),
        data,
        compressor: compressor::Value::Zstd as i32,
    }
}

async fn still_serving(channel: &Channel) {
    let data = Bytes::from_static(b"still here");
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let up = crate::common::upload_request(std::slice::from_ref(&data));
    let r = cas.batch_update_blobs(up).await.unwrap().into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_and_wrapping_sizes_are_refused_within_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url, channel) = spawn_kiln(MEMORY, dir.path()).await;
    let pid = child.id();
    let mut cas =
        ContentAddressableStorageClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let before = vm_hwm(pid);
    let hash = "ab".repeat(32);

    // A declared size of 2^62 once made kiln pre-allocate it and abort.
    let tiny = zstd_zeros(10, None);
    let err = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![zstd_entry(&hash, 1 << 62, tiny)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("expected at most"),
        "{}",
        err.message()
    );

    // Four frames of 1 GiB of zeros declaring 1 GiB each: the declared
    // sizes count toward the batch limit.
    let gib = zstd_zeros(1 << 30, None);
    let four = (0..4)
        .map(|_| zstd_entry(&hash, 1 << 30, gib.clone()))
        .collect();
    let err = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: four,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The same frames declaring 1 MiB each: every entry stops decoding at
    // its declared size and fails on its own.
    let lying = (0..4)
        .map(|_| zstd_entry(&hash, 1 << 20, gib.clone()))
        .collect();
    let r = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: lying,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for entry in &r.responses {
        let status = entry.status.as_ref().unwrap();
        assert_eq!(
            status.code,
            Code::InvalidArgument as i32,
            "{}",
            status.message
        );
        assert!(status.message.contains("more than"), "{}", status.message);
    }

    // A frame asking for a 1 GiB window is refused before the decoder
    // reserves it.
    let wide = zstd_zeros(4 << 20, Some(30));
    let r = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![zstd_entry(&hash, 1 << 20, wide)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.responses[0].status.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );

    // Sizes that add up to exactly 2^64 once wrapped to 0 and passed.
    let stored = crate::common::blob(1, 3 << 20);
    let d = sha(&stored);
    cas.batch_update_blobs(crate::common::upload_request(&[stored]))
        .await
        .unwrap();
    let wrap = |size: i64| ProtoDigest {
        hash: "cd".repeat(32),
        size_bytes: size,
    };
    let err = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![
                d.to_proto(),
                d.to_proto(),
                wrap(i64::MAX),
                wrap(i64::MAX),
                wrap(2),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    still_serving(&channel).await;
    let rise = vm_hwm(pid).saturating_sub(before);
    assert!(rise < 256 << 20, "peak RSS rose by {} MiB", rise >> 20);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn find_missing_is_capped_per_call() {
    let config = MEMORY.replace(
        "    action_cache: { memory: { max_size: 16MiB } }",
        "    action_cache: { memory: { max_size: 16MiB } }\n    max_find_missing: 1000",
    );
    let kiln = crate::common::Kiln::start(&config).await;
    let mut cas = kiln.cas().await;
    let digests = |n: usize| -> Vec<ProtoDigest> {
        (0..n)
            .map(|i| sha(format!("blob {i}").as_bytes()).to_proto())
            .collect()
    };
    let ok = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.missing_blob_digests.len(), 1000);
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests(1001),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("expected at most 1000"),
        "{}",
        err.message()
    );
}
