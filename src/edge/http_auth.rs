//! Authentication on the HTTP listener: the same credentials and roles as
//! gRPC (`Authorization: Bearer TOKEN`), checked against the policy of one
//! instance (`auth.build_events_instance`), since build events name none.
//! Without this, anyone who can reach the port reads every build's command
//! lines, environment and logs.

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

impl HttpGuard {
    /// Allows a request whose `authorization` header grants `read` on the
    /// guard's instance.
    fn check(&self, header: Option<&str>) -> Result<(), Error> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(());
        };
        let identity = authenticator.authenticate(header)?;
        self.policy
            .authorize(Some(&identity), &self.instance, Role::Read)
    }
}

/// Middleware: refuses with 401 (no or bad credentials) or 403 (no `read`
/// role) before the handler runs.
pub async fn require_read(
    State(guard): State<HttpGuard>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match guard.check(header) {
        Ok(()) => next.run(request).await,
        Err(e @ Error::Unauthenticated(_)) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"kiln\"")],
            format!("{e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
    }
}
