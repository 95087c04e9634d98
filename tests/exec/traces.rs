//! A traced Execute: the client's trace continues through kiln's Execute
//! span into the worker's `run action` span, exported by both processes.

use std::time::Duration;

use kiln::proto::reapi::ExecuteRequest;
use kiln::proto::reapi::execution_client::ExecutionClient;
use tonic::metadata::MetadataValue;

use crate::common::exec::{Spec, WorkerProc, upload};
use crate::common::otlp::Receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_run_joins_the_clients_trace() {
    let (receiver, otlp) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, channel) = crate::common::spawn_kiln(
        &format!(
            "tracing:\n  otlp_endpoint: http://{otlp}\nexecution: {{ database: memory, bot_wait: 1s }}\n{}",
            crate::common::MEMORY
        ),
        dir.path(),
    )
    .await;
    let mut worker = WorkerProc::start(
        &url,
        "",
        "traced",
        &[&format!("--otlp-endpoint=http://{otlp}")],
    );
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "echo traced"],
        salt: "traced",
        ..Default::default()
    };
    let digest = upload(&channel, "", &spec).await;
    let trace_id = "5af92f3577b34da6a3ce929d0e0e4737";
    let mut req = tonic::Request::new(ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b8-01")).unwrap(),
    );
    let mut stream = ExecutionClient::new(channel)
        .execute(req)
        .await
        .unwrap()
        .into_inner();
    while let Some(op) = stream.message().await.unwrap() {
        if op.done {
            break;
        }
    }
    // Graceful stops flush both processes' spans.
    for pid in [worker.child.id(), child.id()] {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = worker.child.wait();
        child.wait()
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = receiver.spans();
        let ours: Vec<_> = spans
            .iter()
            .filter(|s| hex::encode(&s.trace_id) == trace_id)
            .collect();
        let execute = ours.iter().any(|s| s.name.contains("Execution/Execute"));
        let run = ours.iter().any(|s| s.name == "run action");
        if execute && run {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace lacks Execute ({execute}) or the worker's run ({run}): {:?}",
            spans
                .iter()
                .map(|s| (&s.name, hex::encode(&s.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
