//! Bazel's HTTP cache protocol on the HTTP listener, spoken by a plain HTTP
//! client: round trips, verification, the action cache's checks, named
//! instances, limits and credentials (Bearer and Basic).

use base64::Engine;
use bytes::Bytes;
use prost::Message;
use reqwest::StatusCode;

use crate::common::{self, Kiln, blob, sha};
use kiln::proto::reapi::{ActionResult, OutputFile};

fn base(kiln: &Kiln) -> String {
    format!("http://{}", kiln.server.http_addr)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn put(url: &str, body: impl Into<reqwest::Body>) -> StatusCode {
    client().put(url).body(body).send().await.unwrap().status()
}

async fn get(url: &str) -> (StatusCode, Bytes) {
    let r = client().get(url).send().await.unwrap();
    (r.status(), r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_round_trips_verified_small_and_streamed_on_disk_and_memory() {
    for yaml in [common::disk(), common::MEMORY.to_string()] {
        let kiln = Kiln::start(&yaml).await;
        let base = base(&kiln);
        for len in [0usize, 10, 3 << 20] {
            let data = blob(len as u64 + 7, len);
            let d = sha(&data);
            let url = format!("{base}/cas/{}", d.hash_hex());
            if len > 0 {
                assert_eq!(get(&url).await.0, StatusCode::NOT_FOUND, "absent first");
            }
            assert_eq!(put(&url, data.clone()).await, StatusCode::OK);
            let (status, got) = get(&url).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(got, data, "{len} bytes back");
            let head = client().head(&url).send().await.unwrap();
            assert_eq!(head.status(), StatusCode::OK);
            let declared = head
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(declared, Some(len.to_string()), "HEAD says the length");
            // Visible over gRPC under its full digest.
            assert!(
                common::missing(&mut kiln.cas().await, &[d])
                    .await
                    .is_empty()
            );
            // A second PUT of a stored blob is accepted (and stores nothing new).
            assert_eq!(put(&url, data.clone()).await, StatusCode::OK);
        }
        // Content that does not hash to its path is refused and not stored.
        let data = blob(99, 2 << 20);
        let wrong = sha(&blob(100, 10));
        let url = format!("{base}/cas/{}", wrong.hash_hex());
        assert_eq!(put(&url, data.clone()).await, StatusCode::BAD_REQUEST);
        assert_eq!(get(&url).await.0, StatusCode::NOT_FOUND);
        let small_wrong = format!("{base}/cas/{}", sha(b"other").hash_hex());
        assert_eq!(put(&small_wrong, "this").await, StatusCode::BAD_REQUEST);
        assert_eq!(get(&small_wrong).await.0, StatusCode::NOT_FOUND);
        // Malformed hashes and unknown methods.
        assert_eq!(
            get(&format!("{base}/cas/not-a-hash")).await.0,
            StatusCode::BAD_REQUEST
        );
        let r = client()
            .delete(format!("{base}/cas/{}", wrong.hash_hex()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        kiln.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_results_are_validated_and_completeness_checked() {
    let kiln = Kiln::start(common::MEMORY).await;
    let base = base(&kiln);
    let output = Bytes::from_static(b"output bytes");
    let od = sha(&output);
    let result = ActionResult {
        exit_code: 0,
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(od.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let action = sha(b"an action");
    let url = format!("{base}/ac/{}", action.hash_hex());
    assert_eq!(get(&url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        put(&url, "definitely not a protobuf \u{1}\u{2}\u{3}").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(put(&url, result.encode_to_vec()).await, StatusCode::OK);
    // Its output is not in the CAS: the completeness check hides it.
    assert_eq!(get(&url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        put(&format!("{base}/cas/{}", od.hash_hex()), output.clone()).await,
        StatusCode::OK
    );
    let (status, body) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ActionResult::decode(body).unwrap(), result);

    // A result stored over gRPC (full digest) is served over HTTP too.
    let grpc_action = sha(b"another action");
    let mut ac = kiln.ac().await;
    ac.update_action_result(kiln::proto::reapi::UpdateActionResultRequest {
        action_digest: Some(grpc_action.to_proto()),
        action_result: Some(ActionResult {
            exit_code: 3,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, body) = get(&format!("{base}/ac/{}", grpc_action.hash_hex())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ActionResult::decode(body).unwrap().exit_code, 3);
    kiln.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_instances_limits_and_read_only() {
    let yaml = r#"
http_cache: { max_upload: 1MiB }
instances:
  - name: ""
    cas: { memory: { max_size: 64MiB } }
    action_cache: { memory: { max_size: 8MiB } }
  - name: team/a
    cas: { memory: { max_size: 64MiB } }
    action_cache: { memory: { max_size: 8MiB } }
  - name: frozen
    read_only: true
    cas: { memory: { max_size: 64MiB } }
    action_cache: { memory: { max_size: 8MiB } }
"#;
    let kiln = Kiln::start(yaml).await;
    let base = base(&kiln);
    let data = blob(5, 1000);
    let d = sha(&data);
    assert_eq!(
        put(&format!("{base}/team/a/cas/{}", d.hash_hex()), data.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{base}/team/a/cas/{}", d.hash_hex())).await.1,
        data
    );
    // Instances are separate.
    assert_eq!(
        get(&format!("{base}/cas/{}", d.hash_hex())).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/nosuch/cas/{}", d.hash_hex())).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        put(&format!("{base}/frozen/cas/{}", d.hash_hex()), data.clone()).await,
        StatusCode::FORBIDDEN
    );
    let big = blob(6, (1 << 20) + 1);
    assert_eq!(
        put(&format!("{base}/cas/{}", sha(&big).hash_hex()), big).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    kiln.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_as_bearer_or_basic_with_the_same_roles_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = crate::common::tokens_file(
        dir.path(),
        &[
            ("build-token", "read,write,ac-write", "builder"),
            ("read-token", "read", "reader"),
        ],
    );
    let yaml = format!(
        "auth:\n  tokens_file: {}\n{}",
        tokens.display(),
        common::MEMORY
    );
    let kiln = Kiln::start(&yaml).await;
    let url = format!("{}/cas/{}", base(&kiln), sha(b"guarded").hash_hex());
    let basic = |user: &str, token: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        )
    };
    let send = |method: reqwest::Method, auth: Option<String>| {
        let mut r = client().request(method, &url).body("guarded");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap().status() }
    };
    use reqwest::Method;
    assert_eq!(send(Method::PUT, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(Method::PUT, Some(basic("me", "wrong"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Method::PUT, Some(basic("me", "read-token"))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(Method::PUT, Some(basic("anyone", "build-token"))).await,
        StatusCode::OK
    );
    assert_eq!(
        send(Method::GET, Some("Bearer read-token".into())).await,
        StatusCode::OK
    );
    assert_eq!(
        send(Method::GET, Some("Basic !!!".into())).await,
        StatusCode::UNAUTHORIZED
    );
    kiln.server.stop().await.unwrap();
}
