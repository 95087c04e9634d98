//! S3 outages and broken uploads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    batch_update_blobs_request,
};
use tonic::Code;

use crate::common::s3::{BUCKET, SeaweedFs};
use crate::common::{Kiln, blob, sha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_within_the_timeout_and_service_resumes() {
    let mut weed = SeaweedFs::start().await;
    let kiln = Kiln::start(&weed.kiln_config("outage/")).await;
    let mut cas = kiln.cas().await;
    let data = blob(1, 10_000);
    let d = sha(&data);
    let put = |data: Bytes| BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(sha(&data).to_proto()),
            data,
            compressor: 0,
        }],
        ..Default::default()
    };
    let r = cas
        .batch_update_blobs(put(data.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);

    weed.stop();
    let started = Instant::now();
    let unknown = sha(b"never seen");
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![unknown.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failed only after {:?}",
        started.elapsed()
    );
    let other = blob(2, 10_000);
    let r = cas
        .batch_update_blobs(put(other.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.responses[0].status.as_ref().unwrap().code,
        Code::Unavailable as i32
    );

    weed.resume().await;
    // Same kiln process, no restart: calls succeed again.
    let r = cas
        .batch_update_blobs(put(other.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
    let read = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto(), sha(&other).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        read.responses
            .iter()
            .all(|r| r.status.as_ref().unwrap().code == 0)
    );
    assert_eq!(read.responses[0].data, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_multipart_upload_leaves_no_visible_object() {
    let weed = SeaweedFs::start().await;
    let kiln = Kiln::start(&weed.kiln_config("abort/")).await;
    let data = blob(3, 40 << 20);
    let d = sha(&data);
    let mut bs = kiln.bytestream().await;
    // 30 of 40 MiB, then the client goes away: past the multipart threshold,
    // so parts were already uploaded when the stream broke.
    let msgs: Vec<_> = (0..30)
        .map(|i| WriteRequest {
            resource_name: if i == 0 {
                format!("uploads/u/blobs/{d}")
            } else {
                String::new()
            },
            write_offset: (i as i64) << 20,
            finish_write: false,
            data: data.slice(i << 20..(i + 1) << 20),
        })
        .collect();
    assert!(bs.write(tokio_stream::iter(msgs)).await.is_err());

    let client = weed.client().await;
    let key = format!(
        "abort/cas/sha256/{}/{}-{}",
        &d.hash_hex()[..2],
        d.hash_hex(),
        d.size
    );
    assert!(
        client
            .head_object()
            .bucket(BUCKET)
            .key(&key)
            .send()
            .await
            .is_err(),
        "no object may be visible"
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(BUCKET)
        .prefix("abort/")
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the multipart upload was aborted: {:?}",
        uploads.uploads()
    );
}
