//! The HTTP listener beside gRPC, one front built like the gRPC edge:
//! [`serve`] accepts connections (a cap, header-read and idle timeouts,
//! TLS); every request is traced and counted ([`observe`]), identified
//! once ([`caller`]: handlers receive an `HttpCaller`, none reads a token)
//! and limited with the gRPC edge's per-identity budget ([`limits`]);
//! errors map to statuses in one place ([`status`]). Behind it: `/metrics`,
//! `/healthz`, the build-event JSON API (`bes/http.rs`), the execution JSON
//! API ([`exec_api`]), the web UI (`crate::ui`) and Bazel's HTTP cache
//! protocol (`http_cache.rs`). It stops with the gRPC server.

pub mod caller;
mod exec_api;
mod limits;
mod observe;
pub mod serve;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
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

/// `/healthz`: 200 while serving, 503 once shutting down (an HTTP probe
/// for load balancers that cannot speak grpc.health.v1).
async fn healthz(State(serving): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if serving.load(Ordering::SeqCst) {
        (StatusCode::OK, "SERVING\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}

/// Which HTTP routes need credentials when authentication is on.
#[derive(Debug, Clone)]
pub struct HttpAccess {
    /// Credentials, roles, and the build-events instance.
    pub guard: crate::edge::http_auth::HttpGuard,
    /// The build-event API and pages need `read` (`auth.http_auth`).
    pub build_events: bool,
    /// `/metrics` needs `read` (`auth.metrics_auth`).
    pub metrics: bool,
    /// The gRPC edge's rate limits and in-flight cap, shared.
    pub limits: Option<Arc<crate::edge::limits::Limits>>,
}

/// What the HTTP listener serves from.
pub struct HttpParts {
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Build events.
    pub events: Arc<dyn crate::bes::store::EventStore>,
    /// The scheduler, when execution is on.
    pub scheduler: Option<Arc<crate::execution::scheduler::Scheduler>>,
    /// False once the server is stopping (`/healthz`).
    pub serving: Arc<AtomicBool>,
    /// Who may read what.
    pub access: HttpAccess,
    /// Bazel's HTTP cache protocol, when enabled.
    pub cache: Option<crate::http_cache::CacheState>,
    /// The instances, for the pages' blobs and actions.
    pub instances: crate::instance::Instances,
}

/// Every route of the HTTP listener with the front's layers. `/healthz` is
/// never guarded or limited: load balancers and kubelets probe it.
pub fn router(parts: HttpParts) -> Router {
    let HttpParts {
        metrics,
        events,
        scheduler,
        serving,
        access,
        cache,
        instances,
    } = parts;
    let ui = crate::ui::router(crate::ui::UiState {
        events: events.clone(),
        instances: instances.clone(),
        scheduler: scheduler.clone(),
        guard: access.guard.clone(),
        events_guarded: access.build_events,
    });
    let guarded = |router: Router, on: bool| {
        if on {
            router.layer(from_fn_with_state(
                access.guard.clone(),
                crate::edge::http_auth::require_read,
            ))
        } else {
            router
        }
    };
    let observed = Arc::new(observe::HttpMetrics::register(&metrics));
    let metrics_routes = Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(metrics);
    let cache = cache.map(crate::http_cache::router).unwrap_or_default();
    let mut routes = Router::new()
        .route("/healthz", get(healthz).with_state(serving))
        .merge(cache)
        .merge(ui)
        .merge(guarded(metrics_routes, access.metrics))
        .merge(guarded(
            crate::bes::http::router(events, instances),
            access.build_events,
        ))
        .merge(guarded(exec_api::router(scheduler), access.build_events));
    // Innermost first: limited by who the caller is, identified, then
    // (outermost) traced and counted, so refused requests are seen too.
    if let Some(limits) = &access.limits {
        routes = routes.layer(from_fn_with_state(limits.clone(), limits::limit));
    }
    routes
        .layer(from_fn_with_state(access.guard.clone(), caller::identify))
        .layer(from_fn_with_state(observed, observe::observe))
}
