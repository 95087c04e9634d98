//! Insights over gRPC, without Bazel: which result writes flag an action as
//! not deterministic, what the record names, and that a client rewriting
//! one action's result forever cannot grow the records without bound.

use kiln::proto::reapi::{ActionResult, OutputFile, RequestMetadata, UpdateActionResultRequest};
use prost::Message;

use crate::common::{Kiln, nondeterministic, sha};

fn result(output: &[u8], exit_code: i32) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "bazel-out/bin/stamp.txt".into(),
            digest: Some(sha(output).to_proto()),
            ..Default::default()
        }],
        exit_code,
        ..Default::default()
    }
}

/// Writes `result` for `action`, as invocation `invocation` if given.
async fn write(kiln: &Kiln, action: &[u8], result: ActionResult, invocation: Option<&str>) {
    let mut req = tonic::Request::new(UpdateActionResultRequest {
        action_digest: Some(sha(action).to_proto()),
        action_result: Some(result),
        ..Default::default()
    });
    if let Some(id) = invocation {
        let m = RequestMetadata {
            tool_invocation_id: id.into(),
            target_id: "//stamp:now".into(),
            action_mnemonic: "Genrule".into(),
            ..Default::default()
        };
        req.metadata_mut().insert_bin(
            "build.bazel.remote.execution.v2.requestmetadata-bin",
            tonic::metadata::BinaryMetadataValue::from_bytes(&m.encode_to_vec()),
        );
    }
    kiln.ac().await.update_action_result(req).await.unwrap();
}

#[tokio::test]
async fn differing_results_are_recorded_once_with_both_writers() {
    let kiln = Kiln::start(&crate::common::disk()).await;
    write(&kiln, b"a", result(b"one", 0), Some("first")).await;
    assert!(
        nondeterministic(&kiln, "").await.is_empty(),
        "a first result flags nothing"
    );
    // The same outputs again: deterministic.
    write(&kiln, b"a", result(b"one", 0), Some("again")).await;
    assert!(nondeterministic(&kiln, "").await.is_empty());
    // A failed run is not compared.
    write(&kiln, b"a", result(b"two", 1), Some("failing")).await;
    assert!(nondeterministic(&kiln, "").await.is_empty());
    write(&kiln, b"a", result(b"one", 0), Some("again")).await;
    write(&kiln, b"a", result(b"two", 0), Some("second")).await;
    let rows = nondeterministic(&kiln, "?invocation=second").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["target"], "//stamp:now");
    assert_eq!(r["mnemonic"], "Genrule");
    assert_eq!(r["output_path"], "bazel-out/bin/stamp.txt");
    assert_eq!(r["before_invocation"], "again");
    assert_eq!(r["after_invocation"], "second");
    let (one, two) = (sha(b"one"), sha(b"two"));
    assert_eq!(r["before"], format!("{}/{}", one.hash_hex(), one.size));
    assert_eq!(r["after"], format!("{}/{}", two.hash_hex(), two.size));
    // Written again by a client that names no invocation: recorded, with
    // the later writer unknown.
    write(&kiln, b"a", result(b"one", 0), None).await;
    let all = nondeterministic(&kiln, "").await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|r| r["after_invocation"] == ""));
}

#[tokio::test]
async fn one_action_rewritten_forever_keeps_a_bounded_record() {
    let kiln = Kiln::start(&crate::common::disk()).await;
    for i in 0..100u32 {
        write(&kiln, b"flood", result(&i.to_le_bytes(), 0), Some("flood")).await;
    }
    let rows = nondeterministic(&kiln, "?limit=5000").await;
    assert_eq!(rows.len(), 64, "rows kept per action are capped");
    let metrics = crate::common::scrape(kiln.server.http_addr).await;
    let flagged = crate::common::metric_sum(
        &metrics,
        "kiln_nondeterministic_actions_total",
        &[("mnemonic", "Genrule")],
    );
    assert_eq!(flagged, 99.0, "every differing write is counted");
}

/// A miss's causes are compared when its invocation's misses are read, at
/// most 256 per read: the rest say `pending` and are compared by the next
/// read, which stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_compared_when_read_a_bounded_number_at_a_time() {
    let kiln = Kiln::start(&crate::common::disk()).await;
    let invocation = uuid::Uuid::new_v4().to_string();
    // 300 actions of one identity (same target, mnemonic, output path):
    // the first is new, each later one changed.
    for i in 0..300u32 {
        write(&kiln, &i.to_le_bytes(), result(b"x", 0), Some(&invocation)).await;
    }
    let url = format!(
        "http://{}/api/v1/invocations/{invocation}/misses?limit=1000",
        kiln.server.http_addr
    );
    let read = || async {
        let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["misses"].as_array().cloned().unwrap_or_default()
    };
    let kinds = |misses: &[serde_json::Value]| {
        let mut counts = std::collections::BTreeMap::new();
        for m in misses {
            let kind = m["causes"][0]["kind"].as_str().unwrap_or("").to_string();
            *counts.entry(kind).or_insert(0) += 1;
        }
        counts
    };
    // Recorded (the metric counts each), not read yet: reading compares.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m = crate::common::scrape(kiln.server.http_addr).await;
        let recorded = crate::common::metric_sum(&m, "kiln_missed_actions_total", &[]);
        let waiting = m
            .lines()
            .find_map(|l| l.strip_prefix("kiln_miss_analyses_running "))
            .unwrap_or_else(|| panic!("no kiln_miss_analyses_running:\n{m}"))
            .trim()
            .to_string();
        if recorded == 300.0 && waiting == "0" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = read().await;
    assert_eq!(first.len(), 300);
    let counts = kinds(&first);
    // The actions were never uploaded, so a compared miss says so.
    assert_eq!(counts.get("new"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("pending"), Some(&43), "{counts:?}");
    assert_eq!(counts.get("unknown"), Some(&256), "{counts:?}");
    let again = kinds(&read().await);
    assert_eq!(again.get("pending"), None, "{again:?}");
    assert_eq!(again.get("unknown"), Some(&299), "{again:?}");
}
