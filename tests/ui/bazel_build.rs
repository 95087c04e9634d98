//! One real Bazel invocation, then every page about it.

use std::collections::HashSet;
use std::io::Read;

use prost::Message;

use super::browser::{element_after, tags_with};
use super::common::bazel::{Bazel, ShutdownOnDrop};
use super::common::exec::WorkerProc;
use super::common::{Kiln, disk};
use super::{dom, links, screenshot, unescape, wait_finished};

async fn get_bytes(kiln: &Kiln, path: &str) -> (u16, Vec<u8>, String) {
    let r = reqwest::get(format!("http://{}{path}", kiln.server.http_addr))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.bytes().await.unwrap().to_vec(), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_after_a_real_bazel_build() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = disk().replace("instances:", "execution: { bot_wait: 2s }\ninstances:");
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let worker = WorkerProc::start(&kiln.url, "", "ui-worker", &["--concurrency=2"]);
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let grpc = kiln.url.replace("http://", "grpc://");
    let http = kiln.server.http_addr;
    let json = tmp.path().join("events.json");
    let marker = tmp.path().join("flaky-marker");
    let args: Vec<String> = vec![
        "test".into(),
        "//app:hello".into(),
        "//app:hello_test".into(),
        "//failing:fails".into(),
        "//ui:flaky".into(),
        "//ui:colours".into(),
        format!("--bes_backend={grpc}"),
        format!("--remote_cache={grpc}"),
        format!("--remote_executor={grpc}"),
        format!("--bes_results_url=http://{http}/invocation/"),
        format!("--build_event_json_file={}", json.display()),
        format!("--test_env=KILN_FLAKY_MARKER={}", marker.display()),
        "--spawn_strategy=remote,local".into(),
        "--flaky_test_attempts=2".into(),
        "--experimental_generate_json_trace_profile".into(),
        "--remote_timeout=120".into(),
    ];
    let b = bazel.clone();
    let (code, out) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        b.run_code(&refs)
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "tests fail (TESTS_FAILED):\n{out}");
    let id = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["started"]["uuid"].as_str().map(str::to_string))
        .expect("the JSON file names the invocation");
    let summary = wait_finished(&kiln, &id).await;
    assert_eq!(summary["status"], "FAILED", "{summary}");

    // The list: the invocation, failed, with a link to its page.
    let list = dom(&kiln, "/").await;
    assert!(
        list.contains(&format!("href=\"/invocation/{id}\"")),
        "{list}"
    );
    assert!(list.contains("badge bad"), "status colours: {list}");
    let filtered = dom(&kiln, "/?status=SUCCEEDED").await;
    assert!(!filtered.contains(&id), "the status filter excludes it");
    let filtered = dom(&kiln, "/?pattern=ui%3Aflaky&command=test").await;
    assert!(filtered.contains(&id), "the pattern filter finds it");
    screenshot(&kiln, "/", "invocations", 700).await;

    // The invocation page.
    let page_path = format!("/invocation/{id}");
    let page = dom(&kiln, &page_path).await;
    assert!(
        page.contains("this test fails on purpose"),
        "the failing test's log is inline:\n{page}"
    );
    assert!(
        page.contains("<span class=\"a-f1\">FAIL</span>"),
        "ANSI colours become spans:\n{page}"
    );
    let flaky_rows: Vec<&str> = tags_with(&page, "data-label=\"//ui:flaky\"")
        .into_iter()
        .filter(|t| t.starts_with("<tr"))
        .collect();
    assert!(
        flaky_rows.iter().any(|t| t.contains("class=\"flaky\"")),
        "the flaky test is marked flaky: {flaky_rows:?}"
    );
    let failing: Vec<&str> = tags_with(&page, "data-label=\"//failing:fails\"");
    assert!(
        failing
            .iter()
            .filter(|t| t.starts_with("<tr"))
            .all(|t| t.contains("class=\"bad\"")),
        "a failed test's target is not shown as SUCCESS: {failing:?}"
    );
    assert!(page.contains("TESTS_FAILED"), "exit code name");
    assert!(
        page.contains("--flaky_test_attempts=2"),
        "the options are listed"
    );

    // An artifact downloads the exact bytes Bazel built.
    let artifact = links(&page, "/blob/")
        .into_iter()
        .find(|l| l.ends_with("/hello"))
        .unwrap_or_else(|| panic!("an artifact link for app/hello:\n{page}"));
    let (status, bytes, _) = get_bytes(&kiln, &artifact).await;
    assert_eq!(status, 200);
    let built = std::fs::read(bazel.workspace.join("bazel-bin/app/hello")).unwrap();
    assert!(bytes == built, "the artifact is the binary Bazel built");
    screenshot(&kiln, &page_path, "invocation", 1800).await;

    // The timeline: one row per thread of the profile.
    let profile_link = links(&page, "/blob/")
        .into_iter()
        .find(|l| l.ends_with("profile.gz"))
        .unwrap_or_else(|| panic!("the profile is linked:\n{page}"));
    let (_, gz, _) = get_bytes(&kiln, &profile_link).await;
    let mut json_text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json_text)
        .unwrap();
    let trace: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let threads: HashSet<i64> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| e["tid"].as_i64())
        .collect();
    let timing = dom(&kiln, &format!("{page_path}/timing")).await;
    assert_eq!(
        timing.matches("<g class=\"thread\"").count(),
        threads.len(),
        "one row per thread"
    );
    assert!(timing.contains("Critical path"), "{timing}");
    assert!(timing.contains("<rect"), "the timeline draws boxes");
    screenshot(&kiln, &format!("{page_path}/timing"), "timing", 1200).await;

    // Test history and the flakiest list.
    let history = dom(&kiln, "/tests/%2F%2Fui%3Aflaky").await;
    assert!(history.contains("data-flaky=\"true\""), "{history}");
    assert!(history.contains(&id));
    screenshot(&kiln, "/tests/%2F%2Fui%3Aflaky", "test-history", 600).await;
    let tests = dom(&kiln, "/tests").await;
    let flakiest = element_after(&tests, "<table class=\"flakiest\"");
    assert!(flakiest.contains("//ui:flaky"), "{tests}");
    assert!(
        !flakiest.contains("//failing:fails"),
        "always failing is not flaky"
    );
    screenshot(&kiln, "/tests", "tests", 900).await;

    // What the remote executions cost, summed from the workers' reports.
    let cost = element_after(&page, "<p class=\"cost\"");
    assert!(
        cost.contains("CPU") && cost.contains("peak memory") && !cost.contains("No worker"),
        "the invocation sums its remote actions' usage: {cost}"
    );

    // The action page of a remote execution, linked from the invocation.
    let action_link = links(&page, "/action/")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("remote executions link their actions:\n{page}"));
    let digest = action_link.trim_start_matches("/action/");
    let (_, action_bytes, _) = get_bytes(&kiln, &format!("/blob/{digest}/action")).await;
    let action = kiln::proto::reapi::Action::decode(&action_bytes[..]).unwrap();
    let cd = action.command_digest.unwrap();
    let (_, command_bytes, _) = get_bytes(
        &kiln,
        &format!("/blob/{}/{}/command", cd.hash, cd.size_bytes),
    )
    .await;
    let command = kiln::proto::reapi::Command::decode(&command_bytes[..]).unwrap();
    let action_page = dom(&kiln, &action_link).await;
    let argv = element_after(&action_page, "<pre class=\"mono argv\"");
    let shown = unescape(&argv[argv.find('>').unwrap() + 1..]);
    assert_eq!(
        shown,
        command.arguments.join(" "),
        "the action page shows argv"
    );
    screenshot(&kiln, &action_link, "action", 1000).await;
    let tree_link = links(&action_page, "/tree/")
        .into_iter()
        .next()
        .expect("the input tree is linked");
    let tree = dom(&kiln, &tree_link).await;
    assert!(tree.contains("<table class=\"tree\""), "{tree}");
    screenshot(&kiln, &tree_link, "tree", 600).await;

    // Operations: the worker is connected.
    let ops = dom(&kiln, "/operations").await;
    assert!(
        ops.contains(&worker.bot_id),
        "the connected worker is listed:\n{ops}"
    );
    screenshot(&kiln, "/operations", "operations", 800).await;
}
