//! Rate limits and load shedding, as a tower layer behind authentication:
//! calls per second per identity (its subject, else the peer address), and a
//! global cap on calls in flight. Over a limit a call is refused at once with
//! RESOURCE_EXHAUSTED and a RetryInfo saying when to come back, instead of
//! queueing without bound.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::auth::Identity;
use crate::config::LimitsConfig;
use crate::error::Error;

/// The shared limiter state.
pub struct Limits {
    per_identity: Option<DefaultKeyedRateLimiter<String>>,
    max_in_flight: Option<usize>,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Limits {
    /// Limits from config; `None` when nothing is limited.
    pub fn from_config(config: &LimitsConfig) -> Option<Arc<Limits>> {
        let per_identity = config
            .requests_per_second
            .and_then(NonZeroU32::new)
            .map(|n| RateLimiter::keyed(Quota::per_second(n)));
        if per_identity.is_none() && config.max_in_flight.is_none() {
            return None;
        }
        Some(Arc::new(Limits {
            per_identity,
            max_in_flight: config.max_in_flight,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }))
    }
}

/// Who a call counts against: the authenticated subject, else the peer.
fn key_of<B>(req: &http::Request<B>) -> String {
    if let Some(Identity::Subject { name, .. }) = req.extensions().get::<Identity>() {
        return format!("sub:{name}");
    }
    let ext = req.extensions();
    let peer = ext
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()
                .and_then(|i| i.get_ref().remote_addr())
        });
    peer.map(|a| format!("ip:{}", a.ip()))
        .unwrap_or_else(|| "unknown".into())
}

fn exhausted(message: String, retry_after: Duration) -> http::Response<tonic::body::Body> {
    let status: tonic::Status = Error::ResourceExhausted {
        message,
        retry_after: Some(retry_after),
    }
    .into();
    status.into_http()
}

/// Adds [`Limit`] around the services.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    limits: Arc<Limits>,
}

impl LimitLayer {
    /// Enforces `limits`.
    pub fn new(limits: Arc<Limits>) -> Self {
        LimitLayer { limits }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The limiting service.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S, B> Service<http::Request<B>> for Limit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.") {
            return self.inner.call(req).boxed();
        }
        if let Some(limiter) = &self.limits.per_identity {
            let key = key_of(&req);
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return std::future::ready(Ok(exhausted(
                    format!("rate limit for {key} exceeded"),
                    wait,
                )))
                .boxed();
            }
        }
        let guard = match self.limits.max_in_flight {
            Some(max) => {
                let in_flight = self.limits.in_flight.clone();
                if in_flight.fetch_add(1, Ordering::SeqCst) >= max {
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let msg = format!("server busy: {max} calls in flight");
                    return std::future::ready(Ok(exhausted(msg, Duration::from_secs(1)))).boxed();
                }
                Some(InFlight(in_flight))
            }
            None => None,
        };
        let future = self.inner.call(req);
        async move {
            let response = future.await?;
            Ok(match guard {
                // The call stays in flight until its response body ends.
                Some(g) => response.map(|body| {
                    tonic::body::Body::new(Guarded {
                        inner: body,
                        _guard: g,
                    })
                }),
                None => response,
            })
        }
        .boxed()
    }
}

/// Releases an in-flight slot when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project! {
    struct Guarded<B> {
        #[pin]
        inner: B,
        _guard: InFlight,
    }
}

impl<B: Body> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
