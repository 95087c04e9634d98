//! The authentication concern: every call except health checks and reflection
//! gets an [`Identity`] in its extensions, or is refused with
//! UNAUTHENTICATED before it reaches a service. Inside tracing and metrics
//! (refusals are traced and counted), outside limits (which key on the
//! identity it sets).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tower::Service;

use super::layer::{Edge, EdgeLayer};

use crate::auth::{Authenticator, Identity};

/// Calls that never need credentials: probes and service discovery.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Authenticates every call with its [`Authenticator`].
pub type AuthLayer = EdgeLayer<Arc<Authenticator>>;

impl<S, B> Service<http::Request<B>> for Edge<S, Arc<Authenticator>>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if exempt(req.uri().path()) {
            return self.inner.call(req).boxed();
        }
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.state.authenticate(header) {
            Ok(identity) => {
                tracing::Span::current().record("subject", identity.name());
                if let Identity::Subject { name, .. } = &identity {
                    tracing::debug!(subject = %name, path = req.uri().path(), "authenticated");
                }
                req.extensions_mut().insert(identity);
                self.inner.call(req).boxed()
            }
            Err(e) => {
                let status: tonic::Status = e.into();
                std::future::ready(Ok(status.into_http())).boxed()
            }
        }
    }
}
