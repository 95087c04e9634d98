//! The execution side of the JSON API: `/api/v1/platforms` (demand per
//! platform, what KEDA's metrics-api trigger reads) and
//! `/api/v1/invocations/{id}/usage` (what an invocation's remote
//! executions cost, over the instances the caller may read).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::caller::HttpCaller;
use crate::auth::Role;
use crate::execution::scheduler::Scheduler;

type Sched = Option<Arc<Scheduler>>;

#[derive(Debug, serde::Deserialize)]
struct PlatformsQuery {
    /// Comma-separated platform labels; all when absent.
    labels: Option<String>,
}

/// `/api/v1/platforms`: each platform label of `kiln_exec_queued` and
/// `kiln_exec_executing` with its properties and current demand.
/// With `?labels=a,b` it also sums those platforms' demand (queued plus
/// executing jobs) as `demand`: a KEDA metrics-api trigger's value for a
/// worker pool that serves them. Every pod reports the whole farm's.
async fn platforms(State(scheduler): State<Sched>, Query(q): Query<PlatformsQuery>) -> Response {
    let list = scheduler.map(|s| s.platforms()).unwrap_or_default();
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
    .into_response()
}

/// `/api/v1/invocations/{id}/usage`: what the remote executions an
/// invocation queued cost ([`crate::execution::usage::Totals`]), counting
/// only jobs of instances the caller may read; zeros when execution is off
/// or the jobs are past retention.
async fn invocation_usage(
    State(scheduler): State<Sched>,
    caller: HttpCaller,
    Path(id): Path<String>,
) -> Response {
    let readable = |instance: &str| caller.may(instance, Role::Read);
    let totals = match &scheduler {
        Some(s) => crate::execution::usage::of_invocation(s, &id, readable).await,
        None => Ok(Default::default()),
    };
    match totals {
        Ok(t) => axum::Json(t).into_response(),
        Err(e) => crate::bes::http::failure(e),
    }
}

/// The routes.
pub fn router(scheduler: Sched) -> Router {
    Router::new()
        .route("/api/v1/platforms", get(platforms))
        .route("/api/v1/invocations/{id}/usage", get(invocation_usage))
        .with_state(scheduler)
}
