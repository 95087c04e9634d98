//! Insights with a real Bazel: an action that writes the time into its
//! output, built by two clients, is flagged with exactly that target and
//! output, on the JSON API, the invocation's page and `/nondeterminism`;
//! deterministic actions built again by another client are not.

use super::common::bazel::{Bazel, ShutdownOnDrop};
use super::common::exec::WorkerProc;
use super::common::{Kiln, disk, nondeterministic};
use super::{dom, screenshot};

const BUILD: &str = r#"
genrule(name = "stamp", outs = ["stamp.txt"], cmd = "date +%s%N > $@")
genrule(name = "fixed", outs = ["fixed.txt"], cmd = "echo same > $@")
"#;

/// Builds `targets` as a client of its own (a fresh output root), running
/// every action itself (`--noremote_accept_cached`) and uploading the
/// results; returns its invocation id.
async fn build(kiln: &Kiln, bazel: Bazel, events: &std::path::Path, targets: &[&str]) -> String {
    let grpc = kiln.url.replace("http://", "grpc://");
    let mut args: Vec<String> = vec!["build".into()];
    args.extend(targets.iter().map(|t| t.to_string()));
    args.extend([
        format!("--bes_backend={grpc}"),
        format!("--remote_cache={grpc}"),
        "--noremote_accept_cached".into(),
        "--remote_timeout=60".into(),
    ]);
    super::bazel_invocation(kiln, &bazel, args, events).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamping_action_built_by_two_clients_is_flagged_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    // A webhook receiver: every body kiln POSTs.
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let tx = hook_tx.clone();
            async move {
                let _ = tx.send(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let yaml = format!("build_events:\n  webhooks: [\"{hook}\"]\n{}", disk());
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("WORKSPACE"), "").unwrap();
    std::fs::write(ws.join("BUILD"), BUILD).unwrap();
    let first = Bazel::at(ws.clone(), tmp.path().join("root-a"));
    let second = Bazel::at(ws.clone(), tmp.path().join("root-b"));
    let _a = ShutdownOnDrop(first.clone());
    let _b = ShutdownOnDrop(second.clone());
    let targets = ["//:stamp", "//:fixed"];
    let a = build(&kiln, first, &tmp.path().join("a.json"), &targets).await;
    assert!(
        nondeterministic(&kiln, "").await.is_empty(),
        "one run flags nothing"
    );
    let b = build(&kiln, second, &tmp.path().join("b.json"), &targets).await;

    // The JSON API: exactly the stamp's output, naming both invocations.
    let rows = nondeterministic(&kiln, &format!("?invocation={b}")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["target"], "//:stamp", "{row}");
    assert_eq!(row["mnemonic"], "Genrule", "{row}");
    assert!(
        row["output_path"]
            .as_str()
            .unwrap()
            .ends_with("/bin/stamp.txt"),
        "{row}"
    );
    assert_eq!(row["before_invocation"], a.as_str(), "{row}");
    assert_eq!(row["after_invocation"], b.as_str(), "{row}");
    assert_ne!(row["before"], row["after"], "{row}");
    assert_eq!(
        nondeterministic(&kiln, &format!("?invocation={a}")).await,
        rows
    );
    let metrics = reqwest::get(format!("http://{}/metrics", kiln.server.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("nondeterministic_actions")
                && l.contains("Genrule")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // The webhooks hear of it (beside the finished invocations' summaries).
    let event = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let body = hook_rx.recv().await.expect("the receiver runs");
            if body["event"] == "nondeterministic_action" {
                return body;
            }
        }
    })
    .await
    .expect("the nondeterminism event is delivered");
    assert_eq!(event["outputs"][0]["target"], "//:stamp", "{event}");
    assert_eq!(event["outputs"].as_array().unwrap().len(), 1, "{event}");

    // The invocation's page: the badge and the row, in a real browser.
    let page = dom(&kiln, &format!("/invocation/{b}")).await;
    assert!(page.contains("NONDETERMINISTIC"), "{page}");
    assert!(page.contains("data-target=\"//:stamp\""), "{page}");
    assert!(!page.contains("data-target=\"//:fixed\""), "{page}");
    let list = dom(&kiln, "/nondeterminism").await;
    assert!(list.contains("data-target=\"//:stamp\""), "{list}");
    assert!(
        list.contains(&format!("href=\"/invocation/{a}\"")),
        "{list}"
    );
    screenshot(&kiln, "/nondeterminism", "nondeterminism", 500).await;

    // The deterministic action, built again by a third client: nothing new.
    let third = Bazel::at(ws.clone(), tmp.path().join("root-c"));
    let _c = ShutdownOnDrop(third.clone());
    let c = build(&kiln, third, &tmp.path().join("c.json"), &["//:fixed"]).await;
    assert!(
        nondeterministic(&kiln, &format!("?invocation={c}"))
            .await
            .is_empty()
    );
    assert_eq!(nondeterministic(&kiln, "").await.len(), 1);

    // The timestamping action executed remotely over its cached result (a
    // kiln worker runs it; the scheduler stores the result): flagged too,
    // naming the target the Execute call named.
    let _worker = WorkerProc::start(&kiln.url, "", "insights-worker", &["--concurrency=1"]);
    let fourth = Bazel::at(ws.clone(), tmp.path().join("root-d"));
    let _d = ShutdownOnDrop(fourth.clone());
    let remote = format!(
        "--remote_executor={}",
        kiln.url.replace("http://", "grpc://")
    );
    let d = build(
        &kiln,
        fourth,
        &tmp.path().join("d.json"),
        &["//:stamp", &remote],
    )
    .await;
    let rows = nondeterministic(&kiln, &format!("?invocation={d}")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["target"], "//:stamp", "{rows:?}");
    assert_eq!(rows[0]["before_invocation"], b.as_str(), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_workspace_built_by_two_clients_flags_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let kiln = Kiln::start_in(&disk(), &tmp.path().join("kiln-data")).await;
    let first = Bazel::new(tmp.path());
    let second = Bazel::at(first.workspace.clone(), tmp.path().join("root-b"));
    let _a = ShutdownOnDrop(first.clone());
    let _b = ShutdownOnDrop(second.clone());
    // C++ compiles and links, genrules: every action runs in both clients
    // and both upload their results.
    let updates = || async {
        let m = super::common::scrape(kiln.server.http_addr).await;
        super::common::metric_sum(
            &m,
            "kiln_grpc_calls_total",
            &[
                (
                    "method",
                    "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
                ),
                ("code", "OK"),
            ],
        )
    };
    build(&kiln, first, &tmp.path().join("a.json"), &["//app/..."]).await;
    let written = updates().await;
    assert!(
        written >= 3.0,
        "the first client wrote its results: {written}"
    );
    let b = build(&kiln, second, &tmp.path().join("b.json"), &["//app/..."]).await;
    // The second client rewrote every one of them, so each was compared.
    assert_eq!(updates().await, 2.0 * written);
    let rows = nondeterministic(&kiln, "").await;
    assert!(rows.is_empty(), "nothing is flagged: {rows:?}");
    let page = dom(&kiln, &format!("/invocation/{b}")).await;
    assert!(!page.contains("NONDETERMINISTIC"), "{page}");
}
