//! The gRPC edge's per-identity rate limits and in-flight cap on the HTTP
//! listener too, sharing their budget: a client is one identity whichever
//! protocol it speaks. Over a limit: 429 with `Retry-After`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::edge::http_auth::HttpGuard;
use crate::edge::limits::Limits;

/// What the middleware needs.
#[derive(Clone)]
pub struct HttpLimits {
    /// The limiter gRPC uses.
    pub limits: Arc<Limits>,
    /// To tell who a token belongs to.
    pub guard: HttpGuard,
}

/// Who a request counts against: a valid token's subject, else the
/// client's address.
fn key_of(state: &HttpLimits, request: &Request) -> String {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(subject) = state.guard.subject(header) {
        return format!("sub:{subject}");
    }
    request
        .extensions()
        .get::<super::serve::Peer>()
        .map(|p| format!("ip:{}", p.0.ip()))
        .unwrap_or_else(|| "unknown".into())
}

/// Middleware: admits the request or answers 429. `/healthz` is never
/// limited (probes must see a busy server as alive).
pub async fn limit(State(state): State<HttpLimits>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let key = key_of(&state, &request);
    match state.limits.admit(&key) {
        Err(refusal) => {
            let secs = refusal.retry_after.as_secs().max(1);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                format!("{}\n", refusal.message),
            )
                .into_response()
        }
        Ok(slot) => {
            let response = next.run(request).await;
            match slot {
                Some(slot) => response
                    .map(|body| axum::body::Body::new(crate::edge::limits::hold(body, slot))),
                None => response,
            }
        }
    }
}
