//! The disk-backed default keeps blobs and action results across a restart.

use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, GetActionResultRequest, OutputFile,
    UpdateActionResultRequest,
};

use crate::common::{Kiln, blob, disk, sha, upload_request};

#[tokio::test]
async fn blobs_and_results_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(42, 10_000);
    let d = sha(&data);
    let action = sha(b"restart action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "o".into(),
            digest: Some(d.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    {
        let kiln = Kiln::start_in(&disk(), dir.path()).await;
        kiln.cas()
            .await
            .batch_update_blobs(upload_request(std::slice::from_ref(&data)))
            .await
            .unwrap();
        kiln.ac()
            .await
            .update_action_result(UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(result.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        kiln.server.stop().await.unwrap();
    }
    let kiln = Kiln::start_in(&disk(), dir.path()).await;
    let resp = kiln
        .cas()
        .await
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].data, data);
    let got = kiln
        .ac()
        .await
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);
}

/// Regression: `stop` returned while the HTTP listener's task (which holds
/// the stores) was only asked to abort, so the fs store's directory lock
/// was still held and a server started at once on the same directory
/// failed with "in use by another kiln process" (seen under CI load).
#[tokio::test]
async fn stop_releases_the_data_directory_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::start_in(&disk(), dir.path()).await;
    let lock = dir.path().join("cas/segments/lock");
    assert!(
        lock.exists(),
        "the embedded default locks {}",
        lock.display()
    );
    kiln.server.stop().await.unwrap();
    let file = std::fs::File::open(&lock).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .expect("the lock is free once stop has returned");
}
