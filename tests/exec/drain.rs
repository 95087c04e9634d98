//! A worker told to stop (SIGTERM) drains: it takes no new lease, lets a
//! running action finish within `--drain-timeout`, and gives back one that
//! does not, which the server re-queues at once (not after the lease
//! timeout), so another worker runs it.

use std::time::{Duration, Instant};

use kiln::proto::longrunning::ListOperationsRequest;
use kiln::proto::longrunning::operations_client::OperationsClient;

use crate::common::Kiln;
use crate::common::exec::{
    Spec, WorkerProc, action_writable_dir, response, spawn_execute, upload, wait_for_file,
};

fn config() -> String {
    // A long lease timeout: a re-queue that waited for it would be obvious.
    r#"
execution:
  database: memory
  lease_timeout: 60s
  bot_wait: 1s
instances:
  - name: ""
    cas: { memory: { max_size: 64MiB } }
    action_cache: { memory: { max_size: 16MiB } }
"#
    .to_string()
}

fn terminate(worker: &WorkerProc) {
    let pid = nix::unistd::Pid::from_raw(worker.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

async fn exits(worker: &mut WorkerProc, within: Duration) {
    let deadline = Instant::now() + within;
    while worker.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the worker did not stop after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_what_fits_and_gives_back_the_rest() {
    let kiln = Kiln::start(&config()).await;
    let ch = kiln.channel().await;
    let shared = action_writable_dir();

    // Finishes within the drain timeout: the stopping worker completes it.
    let mut w1 = WorkerProc::start(&kiln.url, "", "drainer", &["--drain-timeout=30s"]);
    let marker = shared.path().join("short");
    let script = format!("echo started > {}; sleep 2; echo done", marker.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "short",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let call = spawn_execute(&ch, "", digest, 0);
    wait_for_file(&marker, Duration::from_secs(20)).await;
    terminate(&w1);
    let ops = call.await.unwrap().unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.unwrap().code, 0);
    let result = done.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert!(
        result
            .execution_metadata
            .unwrap()
            .worker
            .starts_with("drainer"),
        "the draining worker finished it"
    );
    exits(&mut w1, Duration::from_secs(20)).await;

    // Outlives the drain timeout: given back, and re-queued at once.
    let mut w2 = WorkerProc::start(&kiln.url, "", "quitter", &["--drain-timeout=1s"]);
    let marker = shared.path().join("long");
    let script = format!("echo started >> {}; sleep 6; echo done", marker.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "long",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let call = spawn_execute(&ch, "", digest, 0);
    wait_for_file(&marker, Duration::from_secs(20)).await;
    terminate(&w2);
    exits(&mut w2, Duration::from_secs(20)).await;
    // The worker gave the lease back before it exited: the job is queued
    // again now, long before its 60 s lease would have run out.
    let queued = OperationsClient::new(ch.clone())
        .list_operations(ListOperationsRequest {
            name: String::new(),
            filter: format!("stage=QUEUED action_digest={}", digest.hash_hex()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(queued.len(), 1, "given back and re-queued at once");
    let _w3 = WorkerProc::start(&kiln.url, "", "taker", &[]);
    let ops = call.await.unwrap().unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(done.result.as_ref().unwrap().exit_code, 0);
    assert!(
        done.result
            .unwrap()
            .execution_metadata
            .unwrap()
            .worker
            .starts_with("taker")
    );
}
