//! grpc.health.v1 and /healthz through a graceful stop; reflection; gRPC
//! compression both ways.

use std::time::Duration;

use kiln::proto::reapi::GetCapabilitiesRequest;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use tonic::codec::CompressionEncoding;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{Kiln, MEMORY};

async fn check(kiln_url: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(kiln_url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    resp.into_inner().status()
}

/// The health check's answer: a status, or the gRPC code it failed with.
async fn check_code(kiln_url: &str, service: &str) -> Result<ServingStatus, tonic::Code> {
    let channel = tonic::transport::Channel::from_shared(kiln_url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_speaks_only_for_services_the_server_routes() {
    let kiln = Kiln::start(&format!(
        "execution: {{ enabled: false }}\nremote_asset: {{ enabled: false }}\n{MEMORY}"
    ))
    .await;
    for routed in [
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "google.bytestream.ByteStream",
    ] {
        assert_eq!(
            check_code(&kiln.url, routed).await,
            Ok(ServingStatus::Serving)
        );
    }
    for unrouted in [
        "build.bazel.remote.execution.v2.Execution",
        "google.longrunning.Operations",
        "google.devtools.remoteworkers.v1test2.Bots",
        "build.bazel.remote.asset.v1.Fetch",
        "build.bazel.remote.asset.v1.Push",
    ] {
        assert_eq!(
            check_code(&kiln.url, unrouted).await,
            Err(tonic::Code::NotFound),
            "{unrouted} is not routed, so not SERVING"
        );
    }
}

async fn healthz(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_then_not_serving_during_a_graceful_stop() {
    let kiln = Kiln::start(&format!("grpc:\n  shutdown_delay: 2s\n{MEMORY}")).await;
    assert_eq!(check(&kiln.url, "").await, ServingStatus::Serving);
    for name in kiln::app::SERVICE_NAMES {
        assert_eq!(
            check(&kiln.url, name).await,
            ServingStatus::Serving,
            "{name}"
        );
    }
    assert_eq!(healthz(kiln.server.http_addr).await, 200);

    // A watcher connected before the stop sees the change.
    let channel = kiln.channel().await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let (url, http) = (kiln.url.clone(), kiln.server.http_addr);
    let stopping = tokio::spawn(kiln.server.stop());
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert_eq!(
        check(&url, "").await,
        ServingStatus::NotServing,
        "new checks during the drain delay"
    );
    assert_eq!(healthz(http).await, 503);
    // Calls still work while draining.
    CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap();
    stopping.await.unwrap().unwrap();
}

/// grpcurl 1.8.6 speaks only grpc.reflection.v1alpha: it lists kiln's
/// services and describes a method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_through_v1alpha_reflection() {
    let grpcurl = std::env::var("KILN_GRPCURL")
        .expect("KILN_GRPCURL is not set: README's test command installs grpcurl");
    let kiln = Kiln::start(MEMORY).await;
    let addr = kiln.server.addr.to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(&grpcurl)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["-plaintext".into(), addr.clone(), "list".into()])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in kiln::app::SERVICE_NAMES {
        assert!(
            text.lines().any(|l| l.trim() == name),
            "{name} missing from:\n{text}"
        );
    }
    let described = run(vec![
        "-plaintext".into(),
        addr,
        "describe".into(),
        "build.bazel.remote.execution.v2.ContentAddressableStorage.FindMissingBlobs".into(),
    ])
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.status.success() && text.contains("FindMissingBlobsRequest"),
        "{text}"
    );
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let kiln = Kiln::start(MEMORY).await;
    let mut client = ServerReflectionClient::new(kiln.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in kiln::app::SERVICE_NAMES {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"));

    // Off when configured off.
    let quiet = Kiln::start(&format!("grpc:\n  reflection: false\n{MEMORY}")).await;
    let mut client = ServerReflectionClient::new(quiet.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let err = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(err, Some(tonic::Code::Unimplemented));
}

#[tokio::test]
async fn gzip_and_zstd_both_ways() {
    for (send, encoding) in [
        ("gzip", CompressionEncoding::Gzip),
        ("zstd", CompressionEncoding::Zstd),
    ] {
        let kiln = Kiln::start(&format!("grpc:\n  send_compression: {send}\n{MEMORY}")).await;
        let mut client = CapabilitiesClient::new(kiln.channel().await)
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let caps = client
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap();
        assert_eq!(
            caps.metadata()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok()),
            Some(send),
            "{send}"
        );
        assert!(caps.into_inner().cache_capabilities.is_some());
    }
}

#[tokio::test]
async fn rpc_metrics_move_by_exact_amounts() {
    use kiln::proto::reapi::{FindMissingBlobsRequest, GetActionResultRequest};
    let kiln = Kiln::start(MEMORY).await;
    let mut cas = kiln.cas().await;
    for _ in 0..3 {
        cas.find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![crate::common::sha(b"x").to_proto()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut ac = kiln.ac().await;
    let miss = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(crate::common::sha(b"a").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(miss.code(), tonic::Code::NotFound);
    let bad = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let m = crate::common::scrape(kiln.server.http_addr).await;
    let calls = |method: &str, code: &str| {
        crate::common::metric_sum(
            &m,
            "kiln_grpc_calls_total",
            &[("method", method), ("code", code)],
        )
    };
    let fmb = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
    assert_eq!(calls(fmb, "OK"), 3.0, "{m}");
    assert_eq!(
        crate::common::metric_sum(
            &m,
            "kiln_grpc_calls_total",
            &[("method", fmb), ("instance", ""), ("code", "OK")]
        ),
        3.0,
        "labelled with the instance"
    );
    assert_eq!(
        crate::common::metric_sum(
            &m,
            "kiln_store_misses_total",
            &[("kind", "memory"), ("op", "find_missing")]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(calls(fmb, "INVALID_ARGUMENT"), 1.0, "{m}");
    assert_eq!(
        calls(
            "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
            "NOT_FOUND"
        ),
        1.0
    );
    assert!(crate::common::metric_sum(&m, "kiln_grpc_bytes_total", &[("direction", "in")]) > 0.0);
    assert!(crate::common::metric_sum(&m, "kiln_grpc_bytes_total", &[("direction", "out")]) > 0.0);
    let in_flight = m
        .lines()
        .find(|l| l.starts_with("kiln_grpc_in_flight "))
        .expect("the gauge is exported");
    assert_eq!(in_flight, "kiln_grpc_in_flight 0", "every call ended");
    let rss = m
        .lines()
        .find(|l| l.starts_with("kiln_process_resident_bytes "))
        .expect("process memory is exported");
    assert!(
        rss.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 1e6,
        "{rss}"
    );
}
