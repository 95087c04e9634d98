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
