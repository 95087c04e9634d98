//! The HTTP listener beside gRPC: `/metrics` (Prometheus text), the build
//! event API (`/api/v1/...`), the web UI (`crate::ui`) and Bazel's HTTP
//! cache protocol (`http_cache.rs`), served by [`serve`] with the
//! connection limits and TLS of the gRPC edge. It stops with the gRPC server.

mod limits;
mod observe;
pub mod serve;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
    /// The check for guarded routes.
    pub guard: crate::edge::http_auth::HttpGuard,
    /// The build-event API and pages need `read` (`auth.http_auth`).
    pub build_events: bool,
    /// `/metrics` needs `read` (`auth.metrics_auth`).
    pub metrics: bool,
    /// The gRPC edge's rate limits and in-flight cap, shared.
    pub limits: Option<Arc<crate::edge::limits::Limits>>,
}

/// `/api/v1/platforms`: each platform label of `kiln_exec_queued` and
/// `kiln_exec_executing` with its properties and current demand.
/// With `?labels=a,b` it also sums those platforms' demand (queued plus
/// executing jobs) as `demand`: a KEDA metrics-api trigger's value for a
/// worker pool that serves them. Every pod reports the whole farm's.
async fn platforms(
    State(api): State<ExecApi>,
    axum::extract::Query(q): axum::extract::Query<PlatformsQuery>,
) -> impl IntoResponse {
    let list = api.scheduler.map(|s| s.platforms()).unwrap_or_default();
    let wanted: Vec<&str> = q
        .labels
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|l| !l.is_empty())
        .collect();
    let chosen = list
        .iter()
        .filter(|p| wanted.is_empty() || wanted.contains(&p.label.as_str()));
    let (queued, executing) =
        chosen.fold((0u64, 0u64), |(q, e), p| (q + p.queued, e + p.executing));
    axum::Json(serde_json::json!({
        "platforms": list,
        "queued": queued,
        "executing": executing,
        "demand": queued + executing,
    }))
}

/// The execution API's state.
#[derive(Clone)]
struct ExecApi {
    scheduler: Option<Arc<crate::execution::scheduler::Scheduler>>,
    guard: crate::edge::http_auth::HttpGuard,
}

/// `/api/v1/invocations/{id}/usage`: what the remote executions an
/// invocation queued cost ([`crate::execution::usage::Totals`]), counting
/// only jobs of instances the caller may read; zeros when execution is off
/// or the jobs are past retention.
async fn invocation_usage(
    State(api): State<ExecApi>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::response::Response {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let readable = |instance: &str| {
        api.guard
            .allows(credentials, instance, crate::auth::Role::Read)
            .is_ok()
    };
    let totals = match &api.scheduler {
        Some(s) => crate::execution::usage::of_invocation(s, &id, readable).await,
        None => Ok(Default::default()),
    };
    match totals {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => crate::bes::http::failure(e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct PlatformsQuery {
    /// Comma-separated platform labels; all when absent.
    labels: Option<String>,
}

/// The routes of the HTTP listener: metrics, health, the build-event API
/// and the web UI. `/healthz` is always open: load balancers and kubelets
/// probe it.
pub fn router(
    metrics: Arc<Metrics>,
    events: Arc<dyn crate::bes::store::EventStore>,
    scheduler: Option<Arc<crate::execution::scheduler::Scheduler>>,
    serving: Arc<AtomicBool>,
    access: HttpAccess,
    cache: Option<crate::http_cache::CacheState>,
    instances: crate::instance::Instances,
) -> Router {
    // The pages check credentials themselves: a missing token gets the
    // login form, and blob and action pages check their own instance.
    let ui = crate::ui::router(crate::ui::UiState {
        events: events.clone(),
        instances,
        scheduler: scheduler.clone(),
        guard: access.guard.clone(),
        events_guarded: access.build_events,
    });
    let guarded = |router: Router, on: bool| {
        if on {
            router.layer(axum::middleware::from_fn_with_state(
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
    let limited = |router: Router| match &access.limits {
        Some(limits) => router.layer(axum::middleware::from_fn_with_state(
            limits::HttpLimits {
                limits: limits.clone(),
                guard: access.guard.clone(),
            },
            limits::limit,
        )),
        None => router,
    };
    let routes = Router::new()
        .route("/healthz", get(healthz).with_state(serving))
        .merge(cache)
        .merge(ui)
        .merge(guarded(metrics_routes, access.metrics))
        .merge(guarded(
            crate::bes::http::router(events),
            access.build_events,
        ))
        .merge(guarded(
            Router::new()
                .route("/api/v1/platforms", get(platforms))
                .route("/api/v1/invocations/{id}/usage", get(invocation_usage))
                .with_state(ExecApi {
                    scheduler,
                    guard: access.guard.clone(),
                }),
            access.build_events,
        ));
    // Outermost first: traced and counted, then limited.
    limited(routes).layer(axum::middleware::from_fn_with_state(
        observed,
        observe::observe,
    ))
}
