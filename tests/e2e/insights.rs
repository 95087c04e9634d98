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
