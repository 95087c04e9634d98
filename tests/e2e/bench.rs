//! Smoke runs of every `kiln bench` workload against a real kiln: tiny sizes,
//! bounded by request count. They check that each workload completes, counts
//! what it did and sees no errors; speed is measured by benches/compare.sh.

use clap::Parser;
use kiln::client::bench::{BenchArgs, run, target_uri};

use crate::common::{Kiln, MEMORY};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn args(target: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec!["bench", "--target", target];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_completes_without_errors() {
    let kiln = Kiln::start(&format!("execution: {{ database: memory }}\n{MEMORY}")).await;
    // exec needs a worker.
    let _worker = crate::common::exec::WorkerProc::start(&kiln.url, "", "bench", &[]);
    let target = kiln.url.replace("http://", "grpc://");
    let http = format!("http://{}", kiln.server.http_addr);
    let a = args(
        &target,
        &[
            "--http-target",
            &http,
            "--workload",
            "all",
            "--requests",
            "6",
            "--concurrency",
            "2",
            "--blob-size",
            "3MiB",
            "--tree-dirs",
            "60",
            "--bes-events",
            "500",
            "--duration",
            "20s",
        ],
    );
    let reports = run(&a, false).await.unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.workload.as_str()).collect();
    assert_eq!(
        names,
        [
            "fmb",
            "fmb_present",
            "batch",
            "bytestream_write",
            "bytestream_read",
            "chunking_write",
            "chunking_versions",
            "chunking_read",
            "chunking_split",
            "tree_cold",
            "tree_warm",
            "ac",
            "ac_write",
            "bes",
            "hash_sha256",
            "hash_blake3",
            "hash_gitsha1",
            "exec",
            "compile",
            "cancel",
            "http_healthz",
            "page_list",
            "page_invocation",
            "page_log",
            "page_tests",
            "page_test"
        ]
    );
    for r in &reports {
        assert_eq!(r.errors, 0, "{}: {:?}", r.workload, r.first_error);
        assert!(r.ops > 0, "{} made no calls", r.workload);
        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms, "{r:?}");
    }
    let by = |n: &str| reports.iter().find(|r| r.workload == n).unwrap();
    assert_eq!(by("fmb").ops, 6);
    assert_eq!(by("batch").ops, 6);
    assert_eq!(by("exec").ops, 6, "six no-op actions ran on the worker");
    let phases = by("exec")
        .phases_ms
        .as_ref()
        .expect("exec reports the worker's phases");
    assert!(
        phases["worker_total"] > 0.0 && phases["worker_total"] >= phases["execution"],
        "{phases:?}"
    );
    assert_eq!(by("ac").ops, 6);
    assert_eq!(by("ac_write").ops, 6);
    assert_eq!(by("bytestream_write").ops, 4, "two fresh blobs per worker");
    assert_eq!(by("tree_cold").ops, 3);
    assert_eq!(by("bes").ops, 500, "every event acknowledged");
    assert!(by("bytestream_read").bytes_per_sec > 0.0);
    assert!(by("fmb").items_per_sec > 0.0);
}

#[test]
fn remote_targets_need_allow_remote() {
    assert!(target_uri("grpc://127.0.0.1:1", false).is_ok());
    assert!(target_uri("grpc://localhost:1", false).is_ok());
    assert!(target_uri("grpc://[::1]:1", false).is_ok());
    assert!(target_uri("grpc://10.1.2.3:1", false).is_err());
    assert!(target_uri("grpc://cache.example.com:443", false).is_err());
    assert_eq!(
        target_uri("grpc://cache.example.com:443", true).unwrap(),
        "http://cache.example.com:443"
    );
    assert!(target_uri("ftp://x", true).is_err());
}
