//! Crash durability (kill -9 of the real binary) and webhook delivery.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::suite::{config, http_json, publish};
use crate::common::bes::{bazel_events, progress, requests, stream_id};
use crate::common::{Kiln, free_port};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn(config: &std::path::Path, data: &std::path::Path, grpc: u16, http: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(config)
        .arg(format!("--listen=127.0.0.1:{grpc}"))
        .arg(format!("--http-listen=127.0.0.1:{http}"))
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "kiln did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Child(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kiln.yaml");
    std::fs::write(&cfg, config("sqlite:bes.db", "")).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let child = spawn(&cfg, dir.path(), grpc, http).await;

    let inv = uuid::Uuid::new_v4().to_string();
    let events: Vec<_> = (0..400).map(|i| progress(i, 200)).collect();
    let reqs = requests(&stream_id("crash", &inv), &events, false);
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PublishBuildEventClient::new(channel);
    let (tx, rx) = mpsc::channel(512);
    let mut acks = client
        .publish_build_tool_event_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for r in reqs {
        tx.send(r).await.unwrap();
    }
    // Read acknowledgements until 250 have arrived, then kill -9 mid-stream.
    let mut acked = 0;
    while acked < 250 {
        acked = acks.message().await.unwrap().unwrap().sequence_number;
    }
    let mut child = child;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let http2 = free_port();
    let _restarted = spawn(&cfg, dir.path(), free_port(), http2).await;
    let text = reqwest::get(format!(
        "http://127.0.0.1:{http2}/api/v1/invocations/{inv}/events?limit=1000"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seqs: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.len() as i64 >= acked,
        "acknowledged {acked}, found {} after the crash",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "stored events are contiguous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_invocations_reach_webhooks_with_a_retry_after_500() {
    use axum::http::StatusCode;
    let calls = Arc::new(AtomicUsize::new(0));
    let (got_tx, mut got_rx) = mpsc::channel::<serde_json::Value>(4);
    let state = (calls.clone(), got_tx);
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State((calls, tx)): axum::extract::State<(
                    Arc<AtomicUsize>,
                    mpsc::Sender<serde_json::Value>,
                )>,
                 body: String| async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let _ = tx.send(serde_json::from_str(&body).unwrap()).await;
                    StatusCode::OK
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let extra = format!("  webhooks: [\"{hook}\"]\n  webhook_backoff: 100ms\n");
    let kiln = Kiln::start(&config(
        &format!("sqlite://{}/bes.db", dir.path().display()),
        &extra,
    ))
    .await;
    let inv = uuid::Uuid::new_v4().to_string();
    let (_, err) = publish(
        &kiln,
        requests(&stream_id("hooked", &inv), &bazel_events(false), true),
    )
    .await;
    assert!(err.is_none());
    let delivered = tokio::time::timeout(Duration::from_secs(20), got_rx.recv())
        .await
        .expect("delivered in time")
        .unwrap();
    assert_eq!(delivered["invocation_id"], inv.as_str());
    assert_eq!(delivered["status"], "FAILED");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refused delivery, one retry"
    );
    // The counter moves once the receiver's 200 reaches kiln, just after the
    // body reached the receiver.
    let count = |m: &str, outcome: &str| {
        crate::common::metric_sum(m, "kiln_webhook_deliveries_total", &[("outcome", outcome)])
    };
    let started = std::time::Instant::now();
    let mut metrics = crate::common::scrape(kiln.server.http_addr).await;
    while count(&metrics, "delivered") < 1.0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = crate::common::scrape(kiln.server.http_addr).await;
    }
    assert_eq!(count(&metrics, "delivered"), 1.0);
    assert_eq!(count(&metrics, "retried"), 1.0);
    let (_, s) = http_json(&kiln, &format!("/api/v1/invocations/{inv}")).await;
    assert_eq!(s["status"], "FAILED");
}
