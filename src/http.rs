//! The HTTP listener beside gRPC: `/metrics` (Prometheus text), the build
//! event API (`/api/v1/...`) and invocation pages. It stops with the gRPC
//! server.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// The routes of the HTTP listener: metrics and the build-event API.
pub fn router(metrics: Arc<Metrics>, events: Arc<dyn crate::bes::store::EventStore>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(metrics)
        .merge(crate::bes::http::router(events))
}
