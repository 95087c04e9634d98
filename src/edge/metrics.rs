//! A tower layer in front of every gRPC service: per-method call counts by
//! status code, latency, bytes in and out, and calls in flight. It sits
//! outside auth and limits so that every call is counted, refused ones included;
//! the status comes from the response trailers, where gRPC puts it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Service;

use super::layer::{Edge, EdgeLayer};

use super::CallInstance;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{Metrics, latency_histogram};

/// Labels of a gRPC call: its method (from a closed set), the instance it
/// addressed and its status code name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// E.g. `/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs`.
    pub method: String,
    /// The instance name (empty for the default instance, or when the call
    /// failed before naming one).
    pub instance: String,
    /// E.g. `OK`, `NOT_FOUND` (empty on latency, which is per method).
    pub code: String,
}

/// The metrics this layer records.
#[derive(Debug)]
pub struct CallMetrics {
    calls: Family<RpcLabels, Counter>,
    latency: Family<RpcLabels, Histogram, fn() -> Histogram>,
    bytes: Family<Vec<(&'static str, &'static str)>, Counter>,
    in_flight: Gauge,
}

impl CallMetrics {
    fn register(registry: &Metrics) -> Arc<CallMetrics> {
        let m = CallMetrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            in_flight: Gauge::default(),
        };
        registry.register(
            "grpc_calls",
            "gRPC calls by method and status code",
            m.calls.clone(),
        );
        registry.register(
            "grpc_latency_seconds",
            "gRPC call latency by method",
            m.latency.clone(),
        );
        registry.register(
            "grpc_bytes",
            "gRPC message bytes by direction",
            m.bytes.clone(),
        );
        registry.register(
            "grpc_in_flight",
            "gRPC calls being served",
            m.in_flight.clone(),
        );
        Arc::new(m)
    }
}

/// Counts every call into [`CallMetrics`].
pub type RpcMetricsLayer = EdgeLayer<Arc<CallMetrics>>;

/// The metrics layer, its metrics registered in `registry`.
pub fn layer(registry: &Metrics) -> RpcMetricsLayer {
    EdgeLayer::new(CallMetrics::register(registry))
}

/// What a finished call reports, once its response body ends.
struct Call {
    metrics: Arc<CallMetrics>,
    method: String,
    instance: CallInstance,
    started: Instant,
    code: Option<String>,
}

impl Drop for Call {
    fn drop(&mut self) {
        // A body dropped without trailers was cut off: the client went away.
        let code = self.code.take().unwrap_or_else(|| "CANCELLED".into());
        let instance = self.instance.0.get().cloned().unwrap_or_default();
        let labels = RpcLabels {
            method: self.method.clone(),
            instance,
            code,
        };
        self.metrics.calls.get_or_create(&labels).inc();
        self.metrics
            .latency
            .get_or_create(&RpcLabels {
                code: String::new(),
                ..labels
            })
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
    }
}

/// Every `/package.Service/Method` kiln declares, plus the health and
/// reflection services tonic provides: the only values the `method` label
/// takes besides `unknown`, so a client calling made-up paths cannot grow
/// `/metrics` without bound.
static KNOWN_METHODS: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        use prost::Message;
        let mut known = std::collections::HashSet::new();
        let fds = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        for extra in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            known.insert(extra.to_string());
        }
        known
    });

/// The `method` label for a request path: itself if kiln declares it,
/// `unknown` otherwise.
fn method_label(path: &str) -> String {
    if KNOWN_METHODS.contains(path) {
        path.to_string()
    } else {
        "unknown".to_string()
    }
}

/// The canonical name of a `grpc-status` value, as gRPC spells it.
fn code_name(status: &[u8]) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let code: usize = std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    NAMES.get(code).unwrap_or(&"UNKNOWN").to_string()
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Edge<S, Arc<CallMetrics>>
where
    S: Service<http::Request<Metered<ReqBody>>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Body,
    ResBody: Body,
{
    type Response = http::Response<Metered<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        let instance = CallInstance::default();
        req.extensions_mut().insert(instance.clone());
        let metrics = self.state.clone();
        metrics.in_flight.inc();
        let bytes_in = metrics
            .bytes
            .get_or_create(&vec![("direction", "in")])
            .clone();
        let req = req.map(|body| Metered {
            inner: body,
            bytes: bytes_in,
            call: None,
        });
        let started = Instant::now();
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            // Trailers-only responses (errors) carry the status in headers.
            let code = response
                .headers()
                .get("grpc-status")
                .map(|v| code_name(v.as_bytes()));
            let call = Call {
                metrics: metrics.clone(),
                method,
                instance,
                started,
                code,
            };
            let bytes_out = metrics
                .bytes
                .get_or_create(&vec![("direction", "out")])
                .clone();
            Ok(response.map(|body| Metered {
                inner: body,
                bytes: bytes_out,
                call: Some(call),
            }))
        })
    }
}

pin_project! {
    /// A body that counts its bytes and, for responses, records the call's
    /// status when the trailers pass (or the body is dropped).
    pub struct Metered<B> {
        #[pin]
        inner: B,
        bytes: prometheus_client::metrics::counter::Counter,
        call: Option<Call>,
    }
}

impl<B: Body> Body for Metered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.inc_by(data.remaining() as u64);
            }
            if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                call.code = Some(
                    trailers
                        .get("grpc-status")
                        .map_or_else(|| "OK".to_string(), |v| code_name(v.as_bytes())),
                );
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_closed_set() {
        for known in [
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
            "/google.bytestream.ByteStream/Write",
            "/grpc.health.v1.Health/Check",
        ] {
            assert_eq!(method_label(known), known);
        }
        for made_up in [
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/Nope",
            "/x/y",
            "",
            "/google.bytestream.ByteStream/Write/extra",
        ] {
            assert_eq!(method_label(made_up), "unknown");
        }
    }
}
