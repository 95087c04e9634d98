//! Real Bazel 4.2.3 publishing to kiln with --bes_backend and --remote_cache:
//! for a passing build, a failing test and a failing build, the invocation
//! kiln serves agrees with Bazel's own --build_event_json_file.

use std::path::Path;

use super::suite::{config, http_json};
use crate::common::Kiln;
use crate::common::bazel::{Bazel, ShutdownOnDrop};

/// What Bazel's JSON file says about one invocation.
#[derive(Debug, Default)]
struct Expected {
    invocation_id: String,
    exit_code: i64,
    event_count: usize,
    tests: Vec<(String, String)>,
    targets: Vec<(String, bool)>,
}

fn read_json_file(path: &Path) -> Expected {
    let text = std::fs::read_to_string(path).unwrap();
    let mut e = Expected::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        e.event_count += 1;
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(uuid) = v["started"]["uuid"].as_str() {
            e.invocation_id = uuid.to_string();
        }
        if v["finished"].is_object() {
            e.exit_code = v["finished"]["exitCode"]["code"].as_i64().unwrap_or(0);
        }
        if let Some(label) = v["id"]["testSummary"]["label"].as_str() {
            e.tests.push((
                label.to_string(),
                v["testSummary"]["overallStatus"]
                    .as_str()
                    .unwrap_or("NO_STATUS")
                    .to_string(),
            ));
        }
        if let Some(label) = v["id"]["targetCompleted"]["label"].as_str() {
            e.targets.push((
                label.to_string(),
                v["completed"]["success"].as_bool().unwrap_or(false),
            ));
        }
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_kiln_serves_agrees_with_bazels_json_file() {
    let tmp = tempfile::tempdir().unwrap();
    let kiln = Kiln::start(&config(
        &format!("sqlite://{}/bes.db", tmp.path().display()),
        "",
    ))
    .await;
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let grpc = kiln.url.replace("http://", "grpc://");
    let http = kiln.server.http_addr;
    let cases: [(&str, &[&str], i32); 4] = [
        ("passing", &["test", "//app:hello_test"], 0),
        ("failing-test", &["test", "//failing:fails"], 3),
        ("failing-build", &["build", "//failing:broken"], 1),
        (
            "test-never-run",
            &["test", "//failing:broken", "//failing:never_runs"],
            1,
        ),
    ];
    for (name, command, exit) in cases {
        let json = tmp.path().join(format!("{name}.json"));
        let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        args.extend([
            format!("--bes_backend={grpc}"),
            format!("--remote_cache={grpc}"),
            format!("--bes_results_url=http://{http}/invocation/"),
            format!("--build_event_json_file={}", json.display()),
        ]);
        let b = bazel.clone();
        let (code, out) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let first = b.run_code(&refs);
            // Bazel 4.2.3's own race: a `test` whose build fails in half a
            // second sometimes interrupts its upload of the failed action's
            // stderr and exits 38 with an error that has no message ("local
            // file upload failed: null"; once "InterruptedException"), an
            // error naming no call to kiln. Seen twice in about 20 CI runs;
            // the same command is then run once more and must succeed.
            let bazel_race = first.0 == 38
                && (first.1.contains("local file upload failed: null")
                    || first.1.contains("InterruptedException"));
            if bazel_race {
                eprintln!(
                    "Bazel's BEP upload race (exit 38); running again:\n{}",
                    first.1
                );
                b.run_code(&refs)
            } else {
                first
            }
        })
        .await
        .unwrap();
        assert_eq!(code, exit, "{name}: bazel exited {code}:\n{out}");
        let expected = read_json_file(&json);
        assert!(
            !expected.invocation_id.is_empty(),
            "{name}: no started event"
        );
        let (status, got) = http_json(
            &kiln,
            &format!("/api/v1/invocations/{}", expected.invocation_id),
        )
        .await;
        assert_eq!(
            status, 200,
            "{name}: kiln has no invocation {}",
            expected.invocation_id
        );
        assert_eq!(
            got["exit_code"].as_i64(),
            Some(expected.exit_code),
            "{name}: {got}"
        );
        assert_eq!(got["exit_code"].as_i64(), Some(exit as i64));
        assert_eq!(
            got["status"],
            if exit == 0 { "SUCCEEDED" } else { "FAILED" },
            "{name}"
        );
        assert_eq!(
            got["event_count"].as_u64(),
            Some(expected.event_count as u64),
            "{name}: event count"
        );
        for (label, status) in &expected.tests {
            let t = got["tests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["label"] == label.as_str());
            assert_eq!(
                t.map(|t| t["status"].as_str().unwrap()),
                Some(status.as_str()),
                "{name}: test {label}"
            );
        }
        for (label, success) in &expected.targets {
            let t = got["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["label"] == label.as_str());
            let outcome = t
                .map(|t| t["outcome"].as_str().unwrap().to_string())
                .unwrap_or_default();
            assert_eq!(
                outcome == "SUCCESS",
                *success,
                "{name}: target {label}: {outcome}"
            );
        }
        // The link Bazel printed answers.
        let page = reqwest::get(format!(
            "http://{http}/invocation/{}",
            expected.invocation_id
        ))
        .await
        .unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let html = page.text().await.unwrap();
        if name == "test-never-run" {
            // Built, never run: NO STATUS, as Bazel's summary says, in the
            // API and on the page's targets table (not its build's SUCCESS).
            assert!(
                out.lines()
                    .any(|l| l.contains("//failing:never_runs") && l.contains("NO STATUS")),
                "{name}: Bazel's summary:\n{out}"
            );
            let test = got["tests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["label"] == "//failing:never_runs");
            assert_eq!(
                test.map(|t| t["status"].as_str().unwrap()),
                Some("NO_STATUS"),
                "{name}: {got}"
            );
            let row = html
                .split("<tr ")
                .find(|r| r.contains("data-label=\"//failing:never_runs\""))
                .unwrap_or_else(|| panic!("{name}: no row for //failing:never_runs"));
            assert!(
                !row.contains("SUCCESS") && !row.starts_with("class=\"ok\""),
                "{name}: the targets table shows {row}"
            );
        }
        assert!(
            out.contains(&format!(
                "http://{http}/invocation/{}",
                expected.invocation_id
            )),
            "{name}: Bazel prints the results URL"
        );
    }
}
