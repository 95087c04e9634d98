//! The HTTP side of build events: a JSON API under `/api/v1` and a plain HTML
//! page per invocation, so the link Bazel prints for `--bes_results_url`
//! opens something useful.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;

use super::store::{EventFilter, EventStore, InvocationFilter};
use super::summary::Invocation;
use crate::error::Error;

type Store = Arc<dyn EventStore>;

/// The build-event routes.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/api/v1/invocations", get(list))
        .route("/api/v1/invocations/{id}", get(show))
        .route("/api/v1/invocations/{id}/events", get(events))
        .route("/invocation/{id}", get(page))
        .with_state(store)
}

fn failure(e: Error) -> Response {
    let status = match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    status: Option<String>,
    user: Option<String>,
}

async fn list(State(store): State<Store>, Query(q): Query<ListQuery>) -> Response {
    let filter = InvocationFilter {
        limit: q.limit.unwrap_or(50),
        status: q.status,
        user: q.user,
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let inv = match find(&store, &id).await {
        Ok(inv) => inv,
        Err(e @ Error::NotFound(_)) => {
            return (
                StatusCode::NOT_FOUND,
                Html(format!("<p>{}</p>", escape(&e.to_string()))),
            )
                .into_response();
        }
        Err(e) => return failure(e),
    };
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kiln: {id}</title></head><body>\
         <h1>Invocation {id}</h1><table>\
         <tr><th>Status</th><td>{status}</td></tr><tr><th>Command</th><td>{cmd} {patterns}</td></tr>\
         <tr><th>Exit code</th><td>{exit}</td></tr><tr><th>User</th><td>{user}</td></tr>\
         <tr><th>Host</th><td>{host}</td></tr><tr><th>Duration</th><td>{dur}</td></tr>\
         <tr><th>Remote cache hits</th><td>{hits} of {executed} actions</td></tr></table>",
        id = escape(&inv.invocation_id),
        status = inv.status.as_str(),
        cmd = escape(&inv.command),
        patterns = escape(&inv.patterns.join(" ")),
        exit = inv
            .exit_code
            .map(|c| format!("{c} {}", escape(&inv.exit_code_name)))
            .unwrap_or_default(),
        user = escape(&inv.user),
        host = escape(&inv.host),
        dur = inv
            .duration_ms
            .map(|d| format!("{:.1} s", d as f64 / 1000.0))
            .unwrap_or_default(),
        hits = inv.cache_hits,
        executed = inv.actions_executed,
    );
    html.push_str("<h2>Targets</h2><ul>");
    for t in &inv.targets {
        html.push_str(&format!(
            "<li>{} {}</li>",
            escape(&t.label),
            escape(&t.outcome)
        ));
    }
    html.push_str("</ul><h2>Tests</h2><ul>");
    for t in &inv.tests {
        html.push_str(&format!(
            "<li>{} {} ({} attempts, {} ms)</li>",
            escape(&t.label),
            escape(&t.status),
            t.attempts,
            t.duration_ms
        ));
    }
    html.push_str("</ul><h2>Logs and outputs</h2><ul>");
    for l in &inv.links {
        html.push_str(&format!("<li>{}: {}</li>", escape(&l.name), escape(&l.uri)));
    }
    html.push_str("</ul></body></html>");
    Html(html).into_response()
}
