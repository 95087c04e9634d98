//! The web UI: server-rendered pages on the HTTP listener that answer "why
//! did my build fail, what was slow, is this test flaky" from what kiln
//! already stores (build events, the CAS, the action cache, the scheduler).
//!
//! Pages are maud templates: checked when kiln compiles and escaping every
//! interpolated value unless told otherwise, so a label or log line from a
//! build can never become markup. One stylesheet, no script: every page
//! works with JavaScript off (a running invocation refreshes itself).

mod action;
mod ansi;
mod auth;
mod blob;
mod compare;
mod invocation;
mod invocation_sections;
mod invocations;
mod layout;
mod misses;
mod nondeterminism;
mod operations;
mod progress;
mod scorecard;
mod tests_pages;
mod timing;
mod trends;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::bes::store::EventStore;
use crate::edge::http_auth::HttpGuard;
use crate::error::Error;
use crate::execution::scheduler::Scheduler;
use crate::instance::Instances;

/// What every page handler may read.
#[derive(Debug, Clone)]
pub struct UiState {
    /// Build events and invocation summaries.
    pub events: Arc<dyn EventStore>,
    /// Blobs and action results, per instance.
    pub instances: Instances,
    /// Jobs and workers, when execution is on.
    pub scheduler: Option<Arc<Scheduler>>,
    /// Credentials and roles (the same as gRPC's).
    pub guard: HttpGuard,
    /// Build-event pages need `read` (`auth.http_auth: required`); blob
    /// and action pages always check the instance they show.
    pub events_guarded: bool,
}

/// The UI's routes.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(invocations::page))
        .route("/invocation/{id}", get(invocation::page))
        .route("/invocation/{id}/log", get(invocation::full_log))
        .route("/invocation/{id}/timing", get(timing::page))
        .route("/tests", get(tests_pages::overview))
        .route("/tests/{label}", get(tests_pages::history))
        .route("/blob/{*path}", get(blob::download))
        .route("/action/{*path}", get(action::page))
        .route("/tree/{*path}", get(action::tree))
        .route("/operations", get(operations::page))
        .route("/nondeterminism", get(nondeterminism::page))
        .route("/trends", get(trends::page))
        .route("/compare", get(compare::page))
        .route("/login", get(auth::form).post(auth::login))
        .route("/logout", axum::routing::post(auth::logout))
        .route("/static/kiln.css", get(layout::stylesheet))
        .with_state(state)
}

/// A page that could not be shown, as HTML with the matching status.
#[derive(Debug)]
pub(crate) enum PageError {
    /// Credentials are needed: the login form, returning to this path.
    Login(String),
    /// Anything else.
    Failed(Error),
}

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError::Failed(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = match self {
            PageError::Login(next) => {
                return auth::login_page(&next, None, StatusCode::UNAUTHORIZED);
            }
            PageError::Failed(e) => e,
        };
        if matches!(e, Error::Unauthenticated(_)) {
            return auth::login_page("/", None, StatusCode::UNAUTHORIZED);
        }
        let status = crate::http::status::status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %e, "a UI page failed");
        }
        let title = status.canonical_reason().unwrap_or("error");
        let body = maud::html! {
            h1 { (title) }
            p.error { (e.to_string()) }
            p { a href="/" { "All invocations" } }
        };
        (status, layout::page(title, None, body)).into_response()
    }
}

type PageResult = Result<Response, PageError>;
