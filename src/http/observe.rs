//! The gRPC edge's first two concerns on every HTTP route: a span per
//! request (a child of the client's `traceparent`, so a page load joins
//! its trace) and metrics (requests by route, method and status, and
//! latency), labelled by the route's template (`/invocation/{id}`), never
//! by a client's path.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::Metrics;

type Labels = Vec<(&'static str, String)>;

/// The HTTP listener's metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
}

impl HttpMetrics {
    /// Registers `kiln_http_requests_total` and
    /// `kiln_http_request_duration_seconds`.
    pub fn register(metrics: &Metrics) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(crate::metrics::latency_histogram),
        };
        metrics.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            m.requests.clone(),
        );
        metrics.register(
            "http_request_duration_seconds",
            "HTTP request latency until the response head, by route template",
            m.latency.clone(),
        );
        m
    }
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Middleware: traces and counts one request.
pub async fn observe(State(m): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let span = tracing::info_span!("http", otel.name = %format!("{method} {route}"), http.method = %method, http.route = %route);
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
    let _ = span.set_parent(parent);
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    let status = response.status().as_u16().to_string();
    m.requests
        .get_or_create(&vec![
            ("route", route.clone()),
            ("method", method),
            ("status", status),
        ])
        .inc();
    m.latency
        .get_or_create(&vec![("route", route)])
        .observe(started.elapsed().as_secs_f64());
    response
}
