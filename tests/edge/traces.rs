//! Traces reach an OTLP receiver run by the test, parented to the trace the
//! client sent, with Bazel's RequestMetadata on the span and store calls as
//! children; spans are flushed when kiln stops.

use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{FindMissingBlobsRequest, RequestMetadata, ToolDetails};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::common::otlp::{Receiver, attr};
use prost::Message;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_parented_to_the_clients_trace() {
    let (receiver, otlp) = Receiver::start().await;

    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url, channel) = crate::common::spawn_kiln(
        &format!(
            "tracing:\n  otlp_endpoint: http://{otlp}\n  service_name: kiln-test\n{}",
            crate::common::MEMORY
        ),
        dir.path(),
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(FindMissingBlobsRequest {
        blob_digests: vec![crate::common::sha(b"t").to_proto()],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-{parent_id}-01")).unwrap(),
    );
    let meta = RequestMetadata {
        tool_details: Some(ToolDetails {
            tool_name: "bazel".into(),
            tool_version: "4.2.3".into(),
        }),
        tool_invocation_id: "inv-123".into(),
        action_id: "act-9".into(),
        ..Default::default()
    };
    req.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        BinaryMetadataValue::from_bytes(&meta.encode_to_vec()),
    );
    ContentAddressableStorageClient::new(channel)
        .find_missing_blobs(req)
        .await
        .unwrap();

    // A graceful stop (SIGTERM) flushes the spans.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let waited = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(waited.success(), "kiln exits cleanly on SIGTERM");

    let spans = receiver.spans();
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == trace_id)
        .collect();
    let rpc = ours
        .iter()
        .find(|s| s.name.contains("FindMissingBlobs"))
        .unwrap_or_else(|| {
            panic!(
                "no FindMissingBlobs span in trace {trace_id}: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex::encode(&rpc.parent_span_id),
        parent_id,
        "the call's span is the client's child"
    );
    assert_eq!(attr(rpc, "tool_invocation_id").as_deref(), Some("inv-123"));
    assert_eq!(attr(rpc, "action_id").as_deref(), Some("act-9"));
    assert_eq!(attr(rpc, "tool").as_deref(), Some("bazel"));
    let store = ours
        .iter()
        .find(|s| s.name == "store.find_missing")
        .expect("store calls are child spans");
    assert!(
        ours.iter().any(|s| s.span_id == store.parent_span_id),
        "the store span hangs under the call"
    );
}
