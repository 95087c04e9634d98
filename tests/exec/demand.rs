//! Demand per platform, what a queue-driven autoscaler reads:
//! `kiln_exec_queued{platform}` with the label's properties at
//! `/api/v1/platforms`; it drops back once a worker of that platform runs
//! the job.

use crate::common::exec::{Spec, WorkerProc, response, spawn_execute, upload};
use crate::common::{Kiln, metric_sum, scrape, wait_metrics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_are_counted_per_platform() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{}",
        crate::common::MEMORY
    ))
    .await;
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["true"],
        platform: vec![("OSFamily", "plan9")],
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let call = spawn_execute(&ch, "", digest, 0);
    let queued = |t: &str| metric_sum(t, "kiln_exec_queued", &[]);
    wait_metrics(&kiln, "one job queued", |t| queued(t) == 1.0).await;

    let text = reqwest::get(format!("http://{}/api/v1/platforms", kiln.server.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let platforms = body["platforms"].as_array().unwrap();
    let plan9 = platforms
        .iter()
        .find(|p| p["properties"] == serde_json::json!([["OSFamily", "plan9"]]))
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(plan9["queued"], 1);
    let label = plan9["label"].as_str().unwrap();
    let text = scrape(kiln.server.http_addr).await;
    assert_eq!(
        metric_sum(&text, "kiln_exec_queued", &[("platform", label)]),
        1.0
    );
    // What a KEDA metrics-api trigger reads: the demand of chosen labels.
    let demand = |labels: String| {
        let url = format!(
            "http://{}/api/v1/platforms?labels={labels}",
            kiln.server.http_addr
        );
        async move {
            let body: serde_json::Value =
                serde_json::from_str(&reqwest::get(url).await.unwrap().text().await.unwrap())
                    .unwrap();
            body["demand"].as_u64().unwrap()
        }
    };
    assert_eq!(demand(format!("{label},none")).await, 1);
    assert_eq!(demand("none,p000000000000".into()).await, 0);

    let _worker = WorkerProc::start(&kiln.url, "", "plan9", &["--property=OSFamily=plan9"]);
    let ops = call.await.unwrap().unwrap();
    assert_eq!(response(ops.last().unwrap()).status.unwrap().code, 0);
    wait_metrics(&kiln, "the queue drained", |t| {
        queued(t) == 0.0 && metric_sum(t, "kiln_exec_executing", &[("platform", label)]) == 0.0
    })
    .await;
}
