//! Re-execution sampling (`insights.reexecute_one_in`): a cache hit's
//! action runs again on a worker at the lowest priority, its result not
//! cached. An action that writes the time into its output is then recorded
//! as not deterministic, naming the re-execution as the later writer; a
//! deterministic action is not. Nothing is decided by time: the test waits
//! for the counted outcomes.

use crate::common::exec::{Spec, WorkerProc, execute, response, upload};
use crate::common::{Kiln, MEMORY, metric_sum, wait_metrics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_hit_that_runs_differently_is_flagged_and_a_steady_one_is_not() {
    let kiln = Kiln::start(&format!(
        "insights: {{ reexecute_one_in: 1 }}\nexecution: {{ enabled: true, database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let _worker = WorkerProc::start(&kiln.url, "", "rerun", &[]);
    let ch = kiln.channel().await;
    let stamp = Spec {
        argv: vec!["/bin/sh", "-c", "date +%s%N > out.txt"],
        outputs: vec!["out.txt"],
        salt: "rerun-stamp",
        ..Default::default()
    };
    let steady = Spec {
        argv: vec!["/bin/sh", "-c", "echo same > out.txt"],
        outputs: vec!["out.txt"],
        salt: "rerun-steady",
        ..Default::default()
    };
    let mut digests = Vec::new();
    let mut first_outputs = Vec::new();
    for spec in [&stamp, &steady] {
        let digest = upload(&ch, "", spec).await;
        // The first run caches its result (a miss: nothing is sampled).
        let ran = response(
            execute(&ch, "", digest, false, 0)
                .await
                .unwrap()
                .last()
                .unwrap(),
        );
        assert_eq!(ran.status.map(|s| s.code).unwrap_or(0), 0);
        assert!(!ran.cached_result);
        first_outputs.push(ran.result.unwrap().output_files);
        // The second is a hit, and one in one hits is run again.
        let hit = response(
            execute(&ch, "", digest, false, 0)
                .await
                .unwrap()
                .last()
                .unwrap(),
        );
        assert!(hit.cached_result, "served from the cache");
        digests.push(digest);
    }
    let counted = |text: &str, outcome: &str| {
        metric_sum(text, "kiln_reexecutions_total", &[("outcome", outcome)])
    };
    let text = wait_metrics(&kiln, "both re-executions compared", |t| {
        counted(t, "different") + counted(t, "same") >= 2.0
    })
    .await;
    assert_eq!(counted(&text, "different"), 1.0, "{text}");
    assert_eq!(counted(&text, "same"), 1.0, "{text}");

    // Recorded: the timestamping action's output, the re-execution named.
    let url = format!("http://{}/api/v1/nondeterminism", kiln.server.http_addr);
    let v: serde_json::Value =
        serde_json::from_str(&reqwest::get(&url).await.unwrap().text().await.unwrap()).unwrap();
    let rows = v["outputs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no rows: {v}"));
    let stamp_digest = format!("{}/{}", digests[0].hash_hex(), digests[0].size);
    let steady_digest = format!("{}/{}", digests[1].hash_hex(), digests[1].size);
    assert!(
        rows.iter()
            .any(|r| r["action_digest"] == stamp_digest.as_str()
                && r["output_path"] == "out.txt"
                && r["after_invocation"] == "kiln-reexecution"),
        "{v}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r["action_digest"] == steady_digest.as_str()),
        "{v}"
    );
    // The re-executions were not cached: the hit still serves the first
    // run's output.
    let again = response(
        execute(&ch, "", digests[0], false, 0)
            .await
            .unwrap()
            .last()
            .unwrap(),
    );
    assert!(again.cached_result);
    assert_eq!(again.result.unwrap().output_files, first_outputs[0]);
}
