//! One tracing span per gRPC call, parented to the caller's W3C `traceparent`
//! and carrying what Bazel says about the call in its RequestMetadata header
//! (tool, invocation id, action id, mnemonic, target) plus, once
//! authentication ran, the caller's subject. Store calls made while serving
//! the call become its children. Outermost in the stack: refused calls
//! (unauthenticated, rate-limited) are traced too.

use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
use opentelemetry::propagation::Extractor;
use prost::Message;
use tower::Service;

use super::layer::{Edge, EdgeLayer};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::proto::reapi::RequestMetadata;

pub(crate) const METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn request_metadata(headers: &http::HeaderMap) -> Option<RequestMetadata> {
    let value = headers.get(METADATA_HEADER)?.to_str().ok()?;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .ok()?;
    RequestMetadata::decode(&bytes[..]).ok()
}

/// A call's RequestMetadata as the edge decoded it (empty when it carried
/// none), in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ClientMetadata(pub Arc<RequestMetadata>);

/// The RequestMetadata a call carries, if it carries a valid one.
pub(crate) fn request_metadata_of(
    metadata: &tonic::metadata::MetadataMap,
) -> Option<RequestMetadata> {
    let bytes = metadata.get_bin(METADATA_HEADER)?.to_bytes().ok()?;
    RequestMetadata::decode(&bytes[..]).ok()
}

/// The tracing concern's state: none (spans go to the global subscriber).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

/// Gives every call a span, child of the client's `traceparent`.
pub type TraceLayer = EdgeLayer<Tracing>;

impl<S, B> Service<http::Request<B>> for Edge<S, Tracing>
where
    S: Service<http::Request<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let meta = request_metadata(req.headers()).unwrap_or_default();
        let tool = meta
            .tool_details
            .as_ref()
            .map(|t| t.tool_name.as_str())
            .unwrap_or("");
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            rpc.method = %method,
            tool = tool,
            tool_invocation_id = %meta.tool_invocation_id,
            action_id = %meta.action_id,
            action_mnemonic = %meta.action_mnemonic,
            target_id = %meta.target_id,
            subject = tracing::field::Empty,
        );
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        // Decoded once here, for the services that record who called.
        req.extensions_mut().insert(ClientMetadata(Arc::new(meta)));
        let _ = span.set_parent(parent);
        // Entered while the inner layers run, so authentication can record
        // the subject on this span.
        let future = span.in_scope(|| self.inner.call(req));
        future.instrument(span).boxed()
    }
}

/// The current span's W3C `traceparent`, or empty without tracing: stored
/// with an execution job so the worker's run joins the client's trace.
pub fn current_traceparent() -> String {
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}
