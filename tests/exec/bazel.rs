//! Bazel 4.2.3 with `--remote_executor` against kiln and two `kiln worker`
//! processes: every action of the test workspace runs remotely, a clean
//! rebuild is all cache hits, and a failing test runs remotely and fails.

use crate::common::bazel::{Bazel, ShutdownOnDrop, processes};
use crate::common::exec::WorkerProc;
use crate::common::{Kiln, disk};

/// `N processes: ... X remote.` → X (actions run by remote execution).
fn remote_runs(out: &str) -> u32 {
    let line = out
        .lines()
        .find(|l| l.contains(" processes: ") || l.contains(" process: "))
        .unwrap_or_else(|| panic!("no process summary:\n{out}"));
    line.split(": ")
        .nth(2)
        .unwrap_or("")
        .trim_end_matches('.')
        .split(", ")
        .filter_map(|part| part.strip_suffix(" remote")?.parse::<u32>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_builds_and_tests_remotely_on_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = disk().replace("instances:", "execution: { bot_wait: 2s }\ninstances:");
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let _w1 = WorkerProc::start(&kiln.url, "", "bazel-w1", &["--concurrency=2"]);
    let _w2 = WorkerProc::start(&kiln.url, "", "bazel-w2", &["--concurrency=2"]);
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let url = kiln.url.replace("http://", "grpc://");
    let (first, second, failing) = tokio::task::spawn_blocking(move || {
        let executor = format!("--remote_executor={url}");
        let cache = format!("--remote_cache={url}");
        let flags = [
            executor.as_str(),
            cache.as_str(),
            "--remote_timeout=120",
            "--spawn_strategy=remote",
            "--genrule_strategy=remote",
            "--test_output=errors",
        ];
        let run = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend_from_slice(&flags);
            bazel.run_code(&all)
        };
        let first = run(&["test", "//..."]);
        let (ok, out) = bazel.run(&["clean"]);
        assert!(ok, "bazel clean failed:\n{out}");
        let second = run(&["test", "//..."]);
        let failing = run(&["test", "//failing:fails"]);
        (first, second, failing)
    })
    .await
    .unwrap();

    let (code, out) = first;
    assert_eq!(code, 0, "the remote build and test pass:\n{out}");
    let remote = remote_runs(&out);
    let (hits, others) = processes(&out);
    assert!(
        remote >= 4,
        "compiles, link, genrule and test run remotely:\n{out}"
    );
    assert_eq!(
        others,
        remote + hits,
        "every non-internal process is remote:\n{out}"
    );
    assert!(
        out.contains("//app:hello_test") && out.contains("PASSED"),
        "{out}"
    );

    let (code, out) = second;
    assert_eq!(code, 0, "{out}");
    let (hits, others) = processes(&out);
    assert_eq!(
        others, 0,
        "after bazel clean every process is a cache hit:\n{out}"
    );
    assert!(hits >= remote, "{out}");

    let (code, out) = failing;
    assert_eq!(code, 3, "a failing test is a test failure (exit 3):\n{out}");
    assert!(
        out.contains("//failing:fails") && out.contains("FAILED"),
        "{out}"
    );
    assert_eq!(
        remote_runs(&out),
        processes(&out).1,
        "it ran remotely:\n{out}"
    );
}
