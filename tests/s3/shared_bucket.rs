//! Two kiln processes (the real binary) on one bucket: what one stores the
//! other serves, and a Bazel clean rebuild through the second is all hits.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, GetActionResultRequest, OutputFile,
    UpdateActionResultRequest,
};

use crate::common::bazel::{Bazel, ShutdownOnDrop};
use crate::common::s3::SeaweedFs;
use crate::common::{blob, sha, upload_request};

/// A kiln child process, killed on drop.
struct Pod {
    child: Child,
    url: String,
}

impl Pod {
    async fn start(config: &std::path::Path, dir: &std::path::Path) -> Pod {
        let [grpc, http] = crate::common::free_ports(2)[..] else {
            unreachable!("two ports")
        };
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg(format!("--listen=127.0.0.1:{grpc}"))
            .arg(format!("--http-listen=127.0.0.1:{http}"))
            .arg("--data-dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln starts");
        let url = format!("http://127.0.0.1:{grpc}");
        let started = Instant::now();
        while tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "kiln did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Pod { child, url }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_share_one_bucket_and_bazel_hits_through_either() {
    let weed = SeaweedFs::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kiln.yaml");
    std::fs::write(&config, weed.kiln_config("shared/")).unwrap();
    let a = Pod::start(&config, &tmp.path().join("a")).await;
    let b = Pod::start(&config, &tmp.path().join("b")).await;

    // Blobs and an action result written through A are served by B.
    let data = blob(7, 300_000);
    let d = sha(&data);
    let mut cas_a = ContentAddressableStorageClient::connect(a.url.clone())
        .await
        .unwrap();
    cas_a
        .batch_update_blobs(upload_request(std::slice::from_ref(&data)))
        .await
        .unwrap();
    let action = sha(b"shared action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "o".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    ActionCacheClient::connect(a.url.clone())
        .await
        .unwrap()
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut cas_b = ContentAddressableStorageClient::connect(b.url.clone())
        .await
        .unwrap();
    let read = cas_b
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].data, data);
    let got = ActionCacheClient::connect(b.url.clone())
        .await
        .unwrap()
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);

    // Bazel builds through A, then a clean rebuild through B is all hits.
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let (a_url, b_url) = (a.url.clone(), b.url.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        (bazel.clean_test(&a_url, &[]), bazel.clean_test(&b_url, &[]))
    })
    .await
    .unwrap();
    assert!(first.1 > 0, "the first build executes its actions");
    assert_eq!(
        second.1, 0,
        "every process of the rebuild through the second pod is a cache hit"
    );
    assert!(second.0 >= first.1);
}
