//! Bazel 4.2.3 (Debian's bazel-bootstrap) against a real kiln: a clean rebuild
//! is all remote cache hits, also after kiln restarts, and a
//! `--remote_download_minimal` build passes. README's test command installs
//! Bazel; without it this test fails rather than skips.

#[path = "../common/mod.rs"]
mod common;

use common::bazel::{Bazel, ShutdownOnDrop};
use common::{Kiln, disk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_rebuilds_are_all_remote_cache_hits_also_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("kiln-data");
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());

    let kiln = Kiln::start_in(&disk(), &data).await;
    let url = kiln.url.clone();
    let b = bazel.clone();
    let first =
        tokio::task::spawn_blocking(move || (b.clean_test(&url, &[]), b.clean_test(&url, &[])))
            .await
            .unwrap();
    let ((_, executed), (hits, misses)) = first;
    assert!(executed > 0, "the first build runs its actions");
    assert_eq!(
        misses, 0,
        "second build: every non-internal process must be a cache hit"
    );
    assert!(hits >= executed, "hits {hits} < actions {executed}");

    // Restart kiln on the same data dir: the cache is still there.
    kiln.server.stop().await.unwrap();
    let kiln = Kiln::start_in(&disk(), &data).await;
    let url = kiln.url.clone();
    let b = bazel.clone();
    let (after_restart, minimal) = tokio::task::spawn_blocking(move || {
        (
            b.clean_test(&url, &[]),
            b.clean_test(&url, &["--remote_download_minimal"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        after_restart.1, 0,
        "after a restart: every process is a cache hit"
    );
    assert!(after_restart.0 >= executed);
    assert_eq!(
        minimal.1, 0,
        "--remote_download_minimal: every process is a cache hit"
    );
    kiln.server.stop().await.unwrap();
}
