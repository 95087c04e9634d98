//! The HTTP side of build events: a JSON API under `/api/v1` (the pages
//! Bazel's `--bes_results_url` links to are in `crate::ui`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

use super::store::{EventFilter, EventStore, InvocationFilter, SourceQuery};
use super::summary::Invocation;
use crate::error::Error;

type Store = Arc<dyn EventStore>;

/// The build-event routes; the misses' also read the instances' CAS (a
/// miss is compared when first read).
pub fn router(store: Store, instances: crate::instance::Instances) -> Router {
    Router::new()
        .route("/api/v1/invocations", get(list))
        .route("/api/v1/invocations/{id}", get(show))
        .route("/api/v1/invocations/{id}/events", get(events))
        .route("/api/v1/invocations/{id}/cache", get(cache))
        .route("/api/v1/nondeterminism", get(nondeterminism))
        .with_state(store.clone())
        .merge(
            Router::new()
                .route("/api/v1/invocations/{id}/misses", get(misses))
                .with_state((store, instances)),
        )
}

/// An error as the JSON API answers it (status code and `{"error"}`).
pub(crate) fn failure(e: Error) -> Response {
    let status = crate::http::status::status_of(&e);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(error = %e, "a JSON API request failed");
    }
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    status: Option<String>,
}

async fn list(
    State(store): State<Store>,
    Query(q): Query<ListQuery>,
    Query(source): Query<SourceQuery>,
) -> Response {
    let filter = source.narrow(InvocationFilter {
        limit: q.limit.unwrap_or(50),
        status: q.status,
        ..Default::default()
    });
    let filter = match filter {
        Ok(f) => f,
        Err(e) => return failure(e),
    };
    match store.invocations(&filter).await {
        Ok(list) => Json(serde_json::json!({ "invocations": list })).into_response(),
        Err(e) => failure(e),
    }
}

async fn find(store: &Store, id: &str) -> Result<Invocation, Error> {
    store
        .invocation(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no invocation {id}")))
}

async fn show(State(store): State<Store>, Path(id): Path<String>) -> Response {
    match find(&store, &id).await {
        Ok(inv) => Json(inv).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    kind: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
    label: Option<String>,
}

async fn events(
    State(store): State<Store>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let label = match q.label.as_deref().map(regex::Regex::new).transpose() {
        Ok(l) => l,
        Err(e) => return failure(Error::InvalidArgument(format!("label: {e}"))),
    };
    let filter = EventFilter {
        kinds: q
            .kind
            .map(|k| k.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        after: q.after.unwrap_or(0),
        limit: q.limit.unwrap_or(1000),
        label,
        ..Default::default()
    };
    match store.events(&id, &filter).await {
        Ok(list) => Json(serde_json::json!({ "events": list })).into_response(),
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct NondeterminismQuery {
    invocation: Option<String>,
    days: Option<i64>,
    limit: Option<i64>,
}

/// The outputs of actions found not deterministic (`crate::insights`),
/// newest first: of one invocation, or over a window of days; only those
/// of instances the caller may read.
async fn nondeterminism(
    State(store): State<Store>,
    caller: crate::http::caller::HttpCaller,
    Query(q): Query<NondeterminismQuery>,
) -> Response {
    let days = q.days.unwrap_or(7).clamp(1, 365);
    let since = crate::time::now_ms() - days * 86_400_000;
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    match store
        .nondeterminism(q.invocation.as_deref(), since, limit)
        .await
    {
        Ok(mut rows) => {
            rows.retain(|r| caller.may(&r.instance, crate::auth::Role::Read));
            Json(serde_json::json!({ "outputs": rows })).into_response()
        }
        Err(e) => failure(e),
    }
}

#[derive(Deserialize)]
struct MissesQuery {
    limit: Option<i64>,
}

/// The actions an invocation missed and why (`crate::insights::misses`),
/// by target; only those of instances the caller may read.
async fn misses(
    State((store, instances)): State<(Store, crate::instance::Instances)>,
    caller: crate::http::caller::HttpCaller,
    Path(id): Path<String>,
    Query(q): Query<MissesQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match crate::insights::explain::explained(store.as_ref(), &instances, &id, limit).await {
        Ok(mut rows) => {
            rows.retain(|r| caller.may(&r.instance, crate::auth::Role::Read));
            Json(serde_json::json!({ "misses": rows })).into_response()
        }
        Err(e) => failure(e),
    }
}

/// The invocation's cache scorecard (`crate::insights::scorecard`).
async fn cache(State(store): State<Store>, Path(id): Path<String>) -> Response {
    match store.scorecard(&id).await {
        Ok(Some(card)) => Json(card).into_response(),
        Ok(None) => failure(Error::NotFound(format!(
            "no cache scorecard for invocation {id}"
        ))),
        Err(e) => failure(e),
    }
}
