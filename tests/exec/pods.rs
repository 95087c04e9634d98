//! Stateless pods: two kiln servers share one PostgreSQL (jobs) and one
//! blob directory. A worker connected to one pod runs what a client submits
//! to the other, and either pod reports on and cancels any job.

use std::time::Duration;

use kiln::proto::longrunning::CancelOperationRequest;
use kiln::proto::longrunning::operations_client::OperationsClient;
use tonic::Code;

use crate::common::Kiln;
use crate::common::exec::{
    Spec, WorkerProc, metadata, response, spawn_execute, upload, wait_execution, wait_for_file,
};

fn postgres_url() -> String {
    std::env::var("KILN_TEST_POSTGRES_URL")
        .expect("KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests")
}

/// Two pods on the test PostgreSQL and one blob directory (also returned,
/// to keep), serving one fresh instance named `prefix-UUID`, with the
/// given `execution` settings beside the database.
async fn two_pods(prefix: &str, execution: &str) -> (Kiln, Kiln, tempfile::TempDir, String) {
    let url = postgres_url();
    let instance = format!("{prefix}-{}", uuid::Uuid::new_v4());
    let shared = crate::common::exec::action_writable_dir();
    let yaml = format!(
        r#"
execution: {{ database: "{url}", {execution} }}
instances:
  - name: "{instance}"
    cas: {{ fs: {{ path: cas, segments: false }} }}
    action_cache: {{ fs: {{ path: ac }} }}
"#
    );
    let a = Kiln::start_in(&yaml, shared.path()).await;
    let b = Kiln::start_in(&yaml, shared.path()).await;
    (a, b, shared, instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_pod_accepts_dispatches_and_reports_on_any_job() {
    let (a, b, shared, instance) = two_pods("pods", "bot_wait: 1s, poll_interval: 100ms").await;
    let i = instance.as_str();
    let (cha, chb) = (a.channel().await, b.channel().await);
    let _worker = WorkerProc::start(&a.url, i, "pod-a-worker", &[]);

    // Submitted to B, run by A's worker, watched from A after B's stream ends.
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "echo across pods"],
        salt: "pods",
        ..Default::default()
    };
    let digest = upload(&chb, i, &spec).await;
    let ops = spawn_execute(&chb, i, digest, 0).await.unwrap().unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.unwrap().code, 0);
    assert_eq!(
        done.result.unwrap().execution_metadata.unwrap().worker,
        "pod-a-worker"
    );
    let again = wait_execution(&cha, &ops[0].name).await.unwrap();
    assert!(again.last().unwrap().done, "pod A reports B's finished job");

    // A job submitted to A, running, cancelled through B.
    let marker = shared.path().join("started");
    let script = format!("echo started > {}; sleep 60", marker.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "cancel-across",
        ..Default::default()
    };
    let digest = upload(&cha, i, &spec).await;
    let call = spawn_execute(&cha, i, digest, 0);
    wait_for_file(&marker, Duration::from_secs(20)).await;
    let name = {
        let ops = wait_execution(&chb, &format!("{i}/operations/none")).await;
        assert_eq!(ops.unwrap_err().code(), Code::NotFound);
        let listed = OperationsClient::new(chb.clone())
            .list_operations(kiln::proto::longrunning::ListOperationsRequest {
                name: i.to_string(),
                filter: "stage=EXECUTING".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .operations;
        assert_eq!(listed.len(), 1, "B lists A's running job");
        assert_eq!(metadata(&listed[0]).stage, 3);
        listed[0].name.clone()
    };
    OperationsClient::new(chb.clone())
        .cancel_operation(CancelOperationRequest { name })
        .await
        .unwrap();
    let ops = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("A's watcher sees B's cancellation (by polling the database)")
        .unwrap()
        .unwrap();
    assert_eq!(
        response(ops.last().unwrap()).status.unwrap().code,
        Code::Cancelled as i32
    );
    a.server.stop().await.unwrap();
    b.server.stop().await.unwrap();
}

/// Cross-pod wake-ups by LISTEN/NOTIFY: with polling slowed to a minute,
/// a job queued on B is taken by A's idle worker and its completion reaches
/// B's waiting Execute only through notifications, also after the listening
/// connections were cut (they reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_hear_each_others_changes_without_polling() {
    // bot_wait is long too: a worker's idle update returns on news only.
    let (a, b, _shared, instance) = two_pods(
        "news",
        "bot_wait: 50s, lease_timeout: 120s, poll_interval: 60s, notified_poll_interval: 60s",
    )
    .await;
    let i = instance.as_str();
    let url = postgres_url();
    let chb = b.channel().await;
    let _worker = WorkerProc::start(&a.url, i, "news-worker", &[]);

    let run = |salt: &'static str| {
        let chb = chb.clone();
        async move {
            let spec = Spec {
                argv: vec!["/bin/sh", "-c", "echo heard"],
                salt,
                ..Default::default()
            };
            let digest = upload(&chb, i, &spec).await;
            let ops =
                tokio::time::timeout(Duration::from_secs(30), spawn_execute(&chb, i, digest, 0))
                    .await
                    .expect("news, not the one-minute poll, carries the job both ways")
                    .unwrap()
                    .unwrap();
            let done = response(ops.last().unwrap());
            assert_eq!(done.status.unwrap().code, 0);
            assert_eq!(
                done.result.unwrap().execution_metadata.unwrap().worker,
                "news-worker"
            );
        }
    };
    // The worker's first update may predate A's listener: give it one
    // round trip, then every wake-up counts.
    run("news-1").await;
    run("news-2").await;

    // Cut every listening connection: the listeners reconnect.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(cut.len() >= 2, "both pods listen: {cut:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (listening,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if listening >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listeners reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run("news-3").await;
    a.server.stop().await.unwrap();
    b.server.stop().await.unwrap();
}
