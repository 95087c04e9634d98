//! config/s3.yaml against a real S3 server, and the S3 bench scenario's
//! backend-call accounting.

use clap::Parser;
use kiln::client::bench::{BenchArgs, run};
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, batch_update_blobs_request,
};

use crate::common::s3::SeaweedFs;
use crate::common::{Kiln, blob, sha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_s3_config_works_with_only_the_aws_variables_set_and_stores_chunks() {
    let weed = SeaweedFs::start().await;
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/s3.yaml")).unwrap();
    assert!(shipped.contains("http://127.0.0.1:8333"));
    // Only the port differs: this test's SeaweedFS runs on a free one.
    let kiln = Kiln::start(&shipped.replace("http://127.0.0.1:8333", &weed.endpoint)).await;
    let data = blob(9, 50_000);
    let d = sha(&data);
    let mut cas = kiln.cas().await;
    cas.batch_update_blobs(BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data: data.clone(),
            compressor: 0,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.responses[0].data, data);
    // The shipped config stores large blobs as chunks: an edited version of
    // a plainly uploaded artifact adds only the chunks around the edit.
    crate::common::chunking::plain_versions_share_chunks(&kiln).await;
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_backend_calls_and_a_warm_existence_cache_spares_s3() {
    let weed = SeaweedFs::start().await;
    let kiln = Kiln::start(&weed.kiln_config("bench/")).await;
    let target = kiln.url.replace("http://", "grpc://");
    let metrics = format!("http://{}/metrics", kiln.server.http_addr);
    let args = Cli::parse_from([
        "bench",
        "--target",
        &target,
        "--metrics-url",
        &metrics,
        "--workload",
        "fmb,fmb_present,batch",
        "--requests",
        "8",
        "--concurrency",
        "2",
    ])
    .args;
    let reports = run(&args, false).await.unwrap();
    for r in &reports {
        assert_eq!(r.errors, 0, "{}: {:?}", r.workload, r.first_error);
        assert!(
            r.backend_calls_per_op.is_some(),
            "{} has no backend call figure",
            r.workload
        );
    }
    let by = |n: &str| reports.iter().find(|r| r.workload == n).unwrap();
    // Half the digests are fresh and absent, so S3 is asked about those only.
    let fmb = by("fmb").backend_calls_per_item.unwrap();
    assert!(
        (0.45..=0.55).contains(&fmb),
        "fmb: {fmb} backend calls per digest"
    );
    let warm = by("fmb_present").backend_calls_per_item.unwrap();
    assert!(
        warm <= 0.05,
        "warm FindMissingBlobs: {warm} backend calls per digest"
    );
}
