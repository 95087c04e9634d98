//! The gRPC edge's per-identity rate limits and in-flight cap on the HTTP
//! listener too, sharing their budget: a client is one identity whichever
//! protocol it speaks. Over a limit: 429 with `Retry-After`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::caller::HttpCaller;
use crate::edge::limits::Limits;

/// Who a request counts against: its caller's subject, else the client's
/// address.
fn key_of(request: &Request) -> String {
    if let Some(subject) = request
        .extensions()
        .get::<HttpCaller>()
        .and_then(|c| c.subject())
    {
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
pub async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let key = key_of(&request);
    match limits.admit(&key) {
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
