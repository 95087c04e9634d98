//! Authentication on the HTTP listener: the same credentials and roles as
//! gRPC (`Authorization: Bearer TOKEN`, or Basic with the token as
//! password). Each request's caller is found once (`http::caller`); the
//! build-event and metrics routes then need `read` on one instance
//! (`auth.build_events_instance`), since build events name none. Without
//! this, anyone who can reach the port reads every build's command lines,
//! environment and logs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Authenticator, Policy, Role};
use crate::error::Error;

/// What a guarded route requires.
#[derive(Debug, Clone)]
pub struct HttpGuard {
    /// `None` when authentication is off (every request passes).
    pub authenticator: Option<Arc<Authenticator>>,
    /// Whose rules apply.
    pub policy: Arc<Policy>,
    /// The instance the routes' data belongs to.
    pub instance: String,
}

/// `Basic base64(user:password)` as `Bearer password`; other schemes pass
/// through unchanged.
pub(crate) fn basic_as_bearer(header: &str) -> Result<String, Error> {
    use base64::Engine;
    let Some(encoded) = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
    else {
        return Ok(header.to_string());
    };
    let bad = || Error::Unauthenticated("malformed Basic credentials".into());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (_user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(format!("Bearer {password}"))
}

/// The HTTP status for an authentication or authorization failure, with
/// the challenge a 401 carries.
pub fn refusal(e: &Error) -> Response {
    match e {
        Error::Unauthenticated(_) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"kiln\"")],
            format!("{e}\n"),
        )
            .into_response(),
        _ => (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
    }
}

/// Middleware: refuses with 401 (no or bad credentials) or 403 (no `read`
/// role) before the handler runs.
pub async fn require_read(
    State(guard): State<HttpGuard>,
    caller: crate::http::caller::HttpCaller,
    request: Request,
    next: Next,
) -> Response {
    match caller.require(&guard.instance, Role::Read) {
        Ok(()) => next.run(request).await,
        Err(e) => refusal(&e),
    }
}
