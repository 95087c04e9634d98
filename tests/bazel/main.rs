//! Bazel 4.2.3 (Debian's bazel-bootstrap) against a real kiln: a clean rebuild
//! is all remote cache hits, also after kiln restarts, and a
//! `--remote_download_minimal` build passes, the HTTP cache protocol serves
//! Bazel too, and `downloader.rs` fetches external repositories through the
//! Remote Asset API. README's test command installs Bazel; without it these
//! tests fail rather than skip.

#[path = "../common/mod.rs"]
mod common;

mod downloader;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_with_a_bearer_token_hits_and_without_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "bazel-test-secret-of-some-length").unwrap();
    let yaml = format!(
        "auth:\n  method: jwt\n  jwt:\n    secret_file: {}\n{}",
        secret.display(),
        common::MEMORY
    );
    let kiln = Kiln::start(&yaml).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        serde_json::json!({"sub": "bazel", "roles": ["read", "write", "ac-write"], "exp": exp});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"bazel-test-secret-of-some-length"),
    )
    .unwrap();
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let url = kiln.url.clone();
    let header = format!("--remote_header=authorization=Bearer {token}");
    let (first, second, refused) = tokio::task::spawn_blocking(move || {
        let with = [header.as_str()];
        let first = bazel.clean_test(&url, &with);
        let second = bazel.clean_test(&url, &with);
        let (ok, _) = bazel.run(&["clean"]);
        assert!(ok);
        let remote = format!("--remote_cache={}", url.replace("http://", "grpc://"));
        let refused = bazel.run(&["test", "//...", &remote, "--color=no", "--curses=no"]);
        (first, second, refused)
    })
    .await
    .unwrap();
    assert!(first.1 > 0);
    assert_eq!(second.1, 0, "with the token every process is a cache hit");
    let (ok, out) = refused;
    assert!(!ok, "without the token the build is refused");
    assert!(out.contains("UNAUTHENTICATED"), "kiln says why:\n{out}");
}

/// A bounded CAS under churn: other clients upload far more than
/// `max_size` while this workspace keeps building; its outputs stay hot
/// (every rebuild confirms and reads them), so eviction takes the churn and
/// a clean rebuild after it is still all remote cache hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_rebuilds_stay_cache_hits_while_a_bounded_cas_churns() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
instances:
  - name: ""
    cas: { fs: { path: cas, max_size: 4MiB, min_retention: 0s, lease_margin: 0 } }
    action_cache: { memory: { max_size: 16MiB } }
"#;
    let kiln = Kiln::start(yaml).await;
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let url = kiln.url.clone();
    let b = bazel.clone();
    let (_, executed) = tokio::task::spawn_blocking(move || b.clean_test(&url, &[]))
        .await
        .unwrap();
    assert!(executed > 0);
    let mut cas = kiln.cas().await;
    for round in 0..4u64 {
        // 2.5 MiB of other clients' blobs: over the round, past max_size.
        let churn: Vec<bytes::Bytes> = (0..10)
            .map(|i| common::blob(round * 100 + i, 256 << 10))
            .collect();
        for b in churn.chunks(2) {
            cas.batch_update_blobs(common::upload_request(b))
                .await
                .unwrap();
        }
        let (url, b) = (kiln.url.clone(), bazel.clone());
        let (hits, misses) = tokio::task::spawn_blocking(move || b.clean_test(&url, &[]))
            .await
            .unwrap();
        assert_eq!(misses, 0, "round {round}: every process is a cache hit");
        assert!(hits >= executed);
    }
    let metrics = common::scrape(kiln.server.http_addr).await;
    assert!(
        common::metric_sum(&metrics, "kiln_store_evictions_total", &[("reason", "lru")]) > 0.0,
        "the churn was evicted"
    );
}

/// Bazel's HTTP cache protocol (`--remote_cache=http://...`) on kiln's HTTP
/// listener: a clean rebuild is all remote cache hits; with auth on, the
/// token as the URL's password works and a wrong one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_over_the_http_cache_protocol_hits_with_a_token_in_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let hash = kiln::digest::DigestFunction::Sha256
        .digest_of(b"http-cache-token")
        .hash_hex();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, format!("{hash} read,write,ac-write bazel\n")).unwrap();
    let yaml = format!("auth:\n  tokens_file: {}\n{}", tokens.display(), disk());
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let port = kiln.server.http_addr.port();
    let (first, second, refused) = tokio::task::spawn_blocking(move || {
        let good = format!("--remote_cache=http://bazel:http-cache-token@127.0.0.1:{port}");
        let bad = format!("--remote_cache=http://bazel:wrong-token@127.0.0.1:{port}");
        let first = bazel.clean_test_with(&good, &[]);
        let second = bazel.clean_test_with(&good, &[]);
        let refused = bazel.clean_test_with(&bad, &[]);
        (first, second, refused)
    })
    .await
    .unwrap();
    let (ok, out) = first;
    assert!(ok, "first build over the HTTP cache:\n{out}");
    let (_, executed) = common::bazel::processes(&out);
    assert!(executed > 0, "the first build runs its actions");
    let (ok, out) = second;
    assert!(ok, "second build:\n{out}");
    let (hits, misses) = common::bazel::processes(&out);
    assert_eq!(misses, 0, "every process is an HTTP cache hit:\n{out}");
    assert!(hits >= executed, "hits {hits} < actions {executed}");
    let (ok, out) = refused;
    assert!(out.contains("401"), "kiln refuses a wrong token:\n{out}");
    if ok {
        let (hits, _) = common::bazel::processes(&out);
        assert_eq!(hits, 0, "a wrong token gets no cache hits");
    }
    kiln.server.stop().await.unwrap();
}
