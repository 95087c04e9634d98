//! REAPI 2.12's SplitBlob and SpliceBlob on the memory store and on the
//! embedded default (the fs store); tests/s3 runs the same on SeaweedFS.

use tonic::Code;

use crate::common::chunking::{chunked, plain_versions_share_chunks, split, split_and_splice};
use crate::common::{Kiln, MEMORY, disk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_splice_on_the_memory_store() {
    split_and_splice(&Kiln::start(MEMORY).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_splice_on_the_embedded_default() {
    split_and_splice(&Kiln::start(&disk()).await).await;
}

#[tokio::test]
async fn switched_off_chunking_is_unimplemented_and_not_advertised() {
    let yaml = format!("{MEMORY}    chunking: {{ enabled: false }}\n");
    let kiln = Kiln::start(&yaml).await;
    let caps = kiln.server_capabilities().await.cache_capabilities.unwrap();
    assert!(!caps.split_blob_support && !caps.splice_blob_support);
    assert!(caps.fast_cdc_2020_params.is_none() && caps.rep_max_cdc_params.is_none());
    let d = crate::common::sha(b"x");
    let unknown = kiln::proto::reapi::chunking_function::Value::Unknown;
    let e = split(&mut kiln.cas().await, &d, unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_uploads_of_an_edited_blob_share_chunks_in_memory() {
    plain_versions_share_chunks(&Kiln::start(&chunked(MEMORY)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_uploads_of_an_edited_blob_share_chunks_on_disk() {
    plain_versions_share_chunks(&Kiln::start(&chunked(&disk())).await).await;
}

/// `message` with Bazel's RequestMetadata naming `invocation`.
fn from<T>(invocation: &str, message: T) -> tonic::Request<T> {
    use prost::Message;
    let m = kiln::proto::reapi::RequestMetadata {
        tool_invocation_id: invocation.into(),
        ..Default::default()
    };
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::BinaryMetadataValue::from_bytes(&m.encode_to_vec()),
    );
    r
}

/// A chunk-aware client's upload and download, named by its invocation:
/// what it did not move is on the invocation's scorecard (JSON API) and on
/// /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_clients_did_not_move_is_counted_per_invocation_and_on_metrics() {
    use kiln::proto::reapi::{
        BatchUpdateBlobsRequest, FindMissingBlobsRequest, SpliceBlobRequest, SplitBlobRequest,
        batch_update_blobs_request, chunking_function,
    };
    let kiln = Kiln::start(MEMORY).await;
    let invocation = uuid::Uuid::new_v4().to_string();
    let data = crate::common::blob(29, 3 << 20);
    let whole = crate::common::sha(&data);
    let chunks = crate::common::chunking::fastcdc_chunks(&data, 512 << 10, 0);
    let digests: Vec<_> = chunks
        .iter()
        .map(|c| crate::common::sha(c).to_proto())
        .collect();
    let mut cas = kiln.cas().await;
    let ask = FindMissingBlobsRequest {
        blob_digests: digests.clone(),
        ..Default::default()
    };
    let missing = cas
        .find_missing_blobs(from(&invocation, ask.clone()))
        .await
        .unwrap();
    assert_eq!(
        missing.into_inner().missing_blob_digests.len(),
        chunks.len()
    );
    // The first half of the chunks is stored already (another build's).
    let half = chunks.len() / 2;
    let batch = |c: &bytes::Bytes| BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(crate::common::sha(c).to_proto()),
            data: c.clone(),
            compressor: 0,
        }],
        ..Default::default()
    };
    for c in &chunks[..half] {
        cas.batch_update_blobs(batch(c)).await.unwrap();
    }
    let missing = cas
        .find_missing_blobs(from(&invocation, ask))
        .await
        .unwrap();
    assert_eq!(
        missing.into_inner().missing_blob_digests.len(),
        chunks.len() - half
    );
    let present_bytes: usize = chunks[..half].iter().map(|c| c.len()).sum();
    for c in &chunks[half..] {
        cas.batch_update_blobs(from(&invocation, batch(c)))
            .await
            .unwrap();
    }
    let splice = SpliceBlobRequest {
        blob_digest: Some(whole.to_proto()),
        chunk_digests: digests.clone(),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
        ..Default::default()
    };
    cas.splice_blob(from(&invocation, splice)).await.unwrap();
    let split = SplitBlobRequest {
        blob_digest: Some(whole.to_proto()),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
        ..Default::default()
    };
    let listed = cas.split_blob(from(&invocation, split)).await.unwrap();
    assert_eq!(listed.into_inner().chunk_digests, digests);

    let url = format!(
        "http://{}/api/v1/invocations/{invocation}/cache",
        kiln.server.http_addr
    );
    let n = chunks.len() as u64;
    let len = data.len() as u64;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let savings = loop {
        let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let card: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if card["savings"]["split_blobs"] == 1 {
            break card["savings"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted: {card}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(savings["present_blobs"], half as u64, "{savings}");
    assert_eq!(savings["present_bytes"], present_bytes as u64, "{savings}");
    assert_eq!(
        (
            &savings["spliced_blobs"],
            &savings["spliced_bytes"],
            &savings["spliced_chunks"]
        ),
        (&1.into(), &len.into(), &n.into()),
        "{savings}"
    );
    assert_eq!(
        (&savings["split_bytes"], &savings["split_chunks"]),
        (&len.into(), &n.into()),
        "{savings}"
    );
    let m = crate::common::scrape(kiln.server.http_addr).await;
    let sum = |metric: &str, labels: &[(&str, &str)]| crate::common::metric_sum(&m, metric, labels);
    assert_eq!(
        sum("kiln_present_blob_bytes_total", &[]),
        present_bytes as f64,
        "{m}"
    );
    assert_eq!(
        sum("kiln_chunked_transfers_total", &[("op", "splice")]),
        1.0
    );
    assert_eq!(
        sum("kiln_chunked_transfer_bytes_total", &[("op", "split")]),
        len as f64
    );
    assert_eq!(
        sum("kiln_chunked_transfer_chunks_total", &[("op", "splice")]),
        n as f64
    );
}

/// SplitBlob reads and cuts blobs up to `chunking.max_split_size`; a
/// larger one is RESOURCE_EXHAUSTED (the client reads it whole), so a
/// small request cannot make kiln read a blob of any size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_refuses_blobs_over_its_size_limit() {
    let yaml = format!("{MEMORY}    chunking: {{ max_split_size: 2MiB }}\n");
    let kiln = Kiln::start(&yaml).await;
    let fast = kiln::proto::reapi::chunking_function::Value::FastCdc2020;
    let large = crate::common::chunking::write(&kiln, &crate::common::blob(41, 3 << 20)).await;
    let e = split(&mut kiln.cas().await, &large, fast)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_split_size"), "{e:?}");
    let within = crate::common::chunking::write(&kiln, &crate::common::blob(42, 2 << 20)).await;
    let chunks = split(&mut kiln.cas().await, &within, fast).await.unwrap();
    assert!(chunks.len() > 1, "{chunks:?}");
}
