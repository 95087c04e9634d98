//! The execution suite, run once per job store. Every check shares one kiln
//! and its workers; each run uses its own instance name, so runs sharing a
//! PostgreSQL database never take each other's jobs.

use std::time::Duration;

use kiln::proto::longrunning::operations_client::OperationsClient;
use kiln::proto::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest,
};
use kiln::proto::reapi::GetActionResultRequest;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::exec::{
    Spec, WorkerProc, execute, metadata, response, spawn_execute, upload, wait_for_file,
    wait_for_process, wait_no_process,
};
use crate::common::{Kiln, sha};

fn config(instance: &str, database: &str) -> String {
    format!(
        r#"
execution:
  database: "{database}"
  lease_timeout: 2s
  bot_wait: 1s
  poll_interval: 100ms
  queue_timeout: 4s
instances:
  - name: "{instance}"
    cas: {{ memory: {{ max_size: 64MiB }} }}
    action_cache: {{ memory: {{ max_size: 16MiB }} }}
"#
    )
}

/// Reads a blob the worker uploaded.
async fn read_blob(kiln: &Kiln, instance: &str, digest: &kiln::proto::reapi::Digest) -> Vec<u8> {
    let mut cas = kiln.cas().await;
    let r = cas
        .batch_read_blobs(kiln::proto::reapi::BatchReadBlobsRequest {
            instance_name: instance.to_string(),
            digests: vec![digest.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.responses[0].data.to_vec()
}

/// Waits until ListOperations on `instance` with `filter` lists a job.
async fn wait_listed(ch: &tonic::transport::Channel, instance: &str, filter: &str) {
    let mut ops = OperationsClient::new(ch.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = ops
            .list_operations(ListOperationsRequest {
                name: instance.to_string(),
                filter: filter.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .operations;
        if !listed.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job matches {filter}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(database: &str, restartable: bool) {
    let instance = format!("exec-{}", uuid::Uuid::new_v4());
    let i = instance.as_str();
    let tmp = crate::common::exec::action_writable_dir();
    let yaml = config(i, database);
    let kiln = Kiln::start_in(&yaml, tmp.path()).await;
    let ch = kiln.channel().await;
    let mut w1 = WorkerProc::start(
        &kiln.url,
        i,
        "w1",
        &["--concurrency=2", "--property=os=linux"],
    );

    // Missing inputs: FAILED_PRECONDITION naming every missing blob.
    let spec = Spec {
        argv: vec!["/bin/true"],
        inputs: vec![("in.txt", b"not uploaded")],
        salt: "missing",
        ..Default::default()
    };
    let (digest, blobs) = crate::common::exec::build(&spec);
    let mut req = crate::common::upload_request(&blobs[blobs.len() - 1..]);
    req.instance_name = i.to_string();
    kiln.cas().await.batch_update_blobs(req).await.unwrap();
    // blobs: [the input file, the input root, the command, the action].
    let expect_missing = |err: tonic::Status, want: &[bytes::Bytes]| {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let violations = err
            .get_details_precondition_failure()
            .expect("a PreconditionFailure")
            .violations;
        assert!(
            violations.iter().all(|v| v.r#type == "MISSING"),
            "{violations:?}"
        );
        let mut subjects: Vec<String> = violations.iter().map(|v| v.subject.clone()).collect();
        let mut wanted: Vec<String> = want
            .iter()
            .map(|b| format!("blobs/{}/{}", sha(b).hash_hex(), sha(b).size))
            .collect();
        subjects.sort();
        wanted.sort();
        assert_eq!(subjects, wanted);
    };
    let err = execute(&ch, i, digest, false, 0).await.unwrap_err();
    expect_missing(err, &blobs[1..3]);
    let mut req = crate::common::upload_request(&blobs[1..3]);
    req.instance_name = i.to_string();
    kiln.cas().await.batch_update_blobs(req).await.unwrap();
    let err = execute(&ch, i, digest, false, 0).await.unwrap_err();
    expect_missing(err, &blobs[..1]);

    // A real run: stages in order, outputs and logs in the CAS, result cached.
    let spec = Spec {
        argv: vec![
            "/bin/sh",
            "-c",
            "tr a-z A-Z < in.txt > out/up.txt; echo to-stdout; echo to-stderr >&2",
        ],
        inputs: vec![("in.txt", b"hello kiln")],
        outputs: vec!["out/up.txt"],
        salt: "run",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let ops = execute(&ch, i, digest, false, 0).await.unwrap();
    let stages: Vec<i32> = ops.iter().map(|o| metadata(o).stage).collect();
    assert_eq!(stages.first(), Some(&2), "first QUEUED: {stages:?}");
    assert_eq!(stages.last(), Some(&4), "last COMPLETED: {stages:?}");
    assert!(stages.windows(2).all(|w| w[0] <= w[1]), "{stages:?}");
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.as_ref().map(|s| s.code), Some(0), "{done:?}");
    assert!(!done.cached_result);
    let result = done.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "out/up.txt");
    let out = read_blob(&kiln, i, result.output_files[0].digest.as_ref().unwrap()).await;
    assert_eq!(out, b"HELLO KILN");
    assert_eq!(
        read_blob(&kiln, i, result.stdout_digest.as_ref().unwrap()).await,
        b"to-stdout\n"
    );
    assert_eq!(
        read_blob(&kiln, i, result.stderr_digest.as_ref().unwrap()).await,
        b"to-stderr\n"
    );
    assert_eq!(result.execution_metadata.as_ref().unwrap().worker, "w1");
    let cached = execute(&ch, i, digest, false, 0).await.unwrap();
    assert_eq!(cached.len(), 1);
    assert!(
        response(&cached[0]).cached_result,
        "a second Execute is a cache hit"
    );
    ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            instance_name: i.to_string(),
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .await
        .expect("the result is in the action cache");

    // Metrics: jobs by event, queue wait and run time.
    let metrics = crate::common::scrape(kiln.server.http_addr).await;
    assert!(
        crate::common::metric_sum(&metrics, "kiln_exec_jobs_total", &[("event", "completed")])
            >= 1.0,
        "{metrics}"
    );
    for histogram in [
        "kiln_exec_queue_wait_seconds_count",
        "kiln_exec_run_seconds_count",
    ] {
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{histogram} "))?.parse().ok())
            .unwrap_or_else(|| panic!("no {histogram} in\n{metrics}"));
        assert!(count >= 1.0, "{histogram} = {count}");
    }
    assert!(
        metrics.contains("kiln_exec_oldest_queued_seconds "),
        "{metrics}"
    );

    // Ten identical concurrent Executes: one run, one operation.
    let runs = tmp.path().join("runs.txt");
    let script = format!("echo run >> {}; sleep 1; echo same", runs.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "identical",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let calls: Vec<_> = (0..10).map(|_| spawn_execute(&ch, i, digest, 0)).collect();
    let mut names = std::collections::HashSet::new();
    for call in calls {
        let ops = call.await.unwrap().unwrap();
        let last = ops.last().unwrap();
        names.insert(last.name.clone());
        assert_eq!(response(last).result.unwrap().exit_code, 0);
    }
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "run\n",
        "exactly one run"
    );
    assert_eq!(
        names.len(),
        1,
        "every caller watched one operation: {names:?}"
    );

    // Cancelling a sleeping action kills it.
    // Unique to this run: the SQLite and PostgreSQL runs share the test
    // process, and one must not take the other's sleeper for its own.
    let run = uuid::Uuid::parse_str(i.trim_start_matches("exec-"))
        .unwrap()
        .as_u128()
        % 1_000_000_000;
    let marker = format!("60.{}{run}", std::process::id());
    let script = format!("sleep {marker}");
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "cancel",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let call = spawn_execute(&ch, i, digest, 0);
    wait_for_process(&format!("sleep\0{marker}"), Duration::from_secs(20)).await;
    let mut ops_client = OperationsClient::new(ch.clone());
    let listed = ops_client
        .list_operations(ListOperationsRequest {
            name: i.to_string(),
            filter: format!("stage=EXECUTING action_digest={}", digest.hash_hex()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(listed.len(), 1, "the sleeper is listed as executing");
    ops_client
        .cancel_operation(CancelOperationRequest {
            name: listed[0].name.clone(),
        })
        .await
        .unwrap();
    let ops = call.await.unwrap().unwrap();
    let status = response(ops.last().unwrap()).status.unwrap();
    assert_eq!(status.code, Code::Cancelled as i32, "{status:?}");
    wait_no_process(&format!("sleep\0{marker}"), Duration::from_secs(10)).await;
    let got = ops_client
        .get_operation(GetOperationRequest {
            name: listed[0].name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.done);

    // Platform matching: a property no worker offers waits, then fails
    // after the queue timeout; one the worker offers runs.
    let spec = Spec {
        argv: vec!["/bin/true"],
        platform: vec![("os", "linux")],
        salt: "linux",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let ops = execute(&ch, i, digest, false, 0).await.unwrap();
    assert_eq!(response(ops.last().unwrap()).status.unwrap().code, 0);
    let spec = Spec {
        argv: vec!["/bin/true"],
        platform: vec![("os", "windows")],
        salt: "windows",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let ops = execute(&ch, i, digest, false, 0).await.unwrap();
    let status = response(ops.last().unwrap()).status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
    assert!(status.message.contains("os=windows"), "{}", status.message);

    // An action's timeout kills it: DEADLINE_EXCEEDED.
    let spec = Spec {
        argv: vec!["/bin/sleep", "30"],
        timeout: Some(Duration::from_secs(1)),
        salt: "timeout",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let ops = execute(&ch, i, digest, false, 0).await.unwrap();
    let status = response(ops.last().unwrap()).status.unwrap();
    assert_eq!(status.code, Code::DeadlineExceeded as i32, "{status:?}");

    // A worker killed mid-action: its lease expires and another worker
    // finishes the job.
    w1.kill();
    // Priorities: queued while no worker runs, an urgent action (lower
    // value) submitted later runs before an ordinary one.
    let order = tmp.path().join("order.txt");
    let mut calls = Vec::new();
    for (name, priority) in [("ordinary", 10), ("urgent", -10)] {
        let script = format!("echo {name} >> {}", order.display());
        let spec = Spec {
            argv: vec!["/bin/sh", "-c", &script],
            salt: name,
            ..Default::default()
        };
        let digest = upload(&ch, i, &spec).await;
        calls.push(spawn_execute(&ch, i, digest, priority));
        // Queued before the next one is submitted: seen, not assumed.
        wait_listed(
            &ch,
            i,
            &format!("stage=QUEUED action_digest={}", digest.hash_hex()),
        )
        .await;
    }
    let mut w2 = WorkerProc::start(&kiln.url, i, "w2", &[]);
    for call in calls {
        let ops = call.await.unwrap().unwrap();
        assert_eq!(response(ops.last().unwrap()).status.unwrap().code, 0);
    }
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "urgent\nordinary\n"
    );
    let marker = tmp.path().join("attempts.txt");
    let script = format!("echo try >> {}; sleep 2; echo finished", marker.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "killed",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let call = spawn_execute(&ch, i, digest, 0);
    wait_for_file(&marker, Duration::from_secs(20)).await;
    w2.kill();
    let w3 = WorkerProc::start(&kiln.url, i, "w3", &[]);
    let ops = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the job finishes on the other worker")
        .unwrap()
        .unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.unwrap().code, 0);
    let result = done.result.unwrap();
    assert_eq!(result.execution_metadata.unwrap().worker, "w3");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "try\ntry\n");
    drop(w3);

    if !restartable {
        kiln.server.stop().await.unwrap();
        return;
    }
    // No workers: a queued job survives a restart, and WaitExecution
    // re-attaches to it on the new process.
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "echo after restart"],
        salt: "restart",
        ..Default::default()
    };
    let digest = upload(&ch, i, &spec).await;
    let stream = kiln::proto::reapi::execution_client::ExecutionClient::new(ch.clone())
        .execute(kiln::proto::reapi::ExecuteRequest {
            instance_name: i.to_string(),
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = stream.into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(metadata(&first).stage, 2);
    drop(stream);
    kiln.server.stop().await.unwrap();
    // The CAS is in memory; the job store is not.
    let kiln = Kiln::start_in(&yaml, tmp.path()).await;
    let ch = kiln.channel().await;
    upload(&ch, i, &spec).await;
    // Re-attached (its first answer arrived) before a worker exists.
    let mut stream = kiln::proto::reapi::execution_client::ExecutionClient::new(ch.clone())
        .wait_execution(kiln::proto::reapi::WaitExecutionRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let attached = stream.message().await.unwrap().expect("the current state");
    assert!(!attached.done);
    let call = tokio::spawn(async move {
        let mut ops = vec![attached];
        while let Some(op) = stream.message().await? {
            ops.push(op);
        }
        Ok::<_, tonic::Status>(ops)
    });
    let _w4 = WorkerProc::start(&kiln.url, i, "w4", &[]);
    let ops = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the re-attached client sees the job finish")
        .unwrap()
        .unwrap();
    assert_eq!(metadata(&ops[0]).stage, 2, "still queued after the restart");
    assert_eq!(ops.last().unwrap().name, first.name);
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.unwrap().code, 0);
    let stdout = read_blob(
        &kiln,
        i,
        done.result.unwrap().stdout_digest.as_ref().unwrap(),
    )
    .await;
    assert_eq!(stdout, b"after restart\n");
    kiln.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_sqlite() {
    run("sqlite:scheduler.db", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_postgresql() {
    let url = std::env::var("KILN_TEST_POSTGRES_URL")
        .expect("KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests");
    run(&url, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_the_memory_store() {
    run("memory", false).await;
}
