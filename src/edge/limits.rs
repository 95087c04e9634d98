//! Rate limits and load shedding, as a tower layer behind authentication:
//! calls and request bytes per second per identity (its subject, else the
//! peer address), and a global cap on calls in flight. Over a limit a call is refused at once with
//! RESOURCE_EXHAUSTED and a RetryInfo saying when to come back, instead of
//! queueing without bound. Innermost: it limits by the identity auth set.

use std::future::Future;
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
use tower::Service;

use super::layer::{Edge, EdgeLayer};

use crate::auth::Identity;
use crate::config::LimitsConfig;
use crate::error::Error;

/// The shared limiter state.
pub struct Limits {
    /// Calls since the keyed limiters last dropped idle identities.
    calls: std::sync::atomic::AtomicU64,
    per_identity: Option<DefaultKeyedRateLimiter<String>>,
    bytes: Option<(Arc<DefaultKeyedRateLimiter<String>>, NonZeroU32)>,
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

/// Calls between sweeps of the keyed limiters' maps.
const SWEEP_EVERY: u64 = 4096;

impl Limits {
    /// Drops identities whose limiter state is back to a fresh one's, every
    /// [`SWEEP_EVERY`] calls: the maps hold the recently active identities,
    /// not every one ever seen (each call adds at most one).
    fn sweep(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        if let Some(l) = &self.per_identity {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some((l, _)) = &self.bytes {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Identities the limiters hold state for.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.per_identity.as_ref().map_or(0, |l| l.len())
    }

    /// Limits from config; `None` when nothing is limited.
    pub fn from_config(config: &LimitsConfig) -> Option<Arc<Limits>> {
        let per_identity = config
            .requests_per_second
            .and_then(NonZeroU32::new)
            .map(|n| RateLimiter::keyed(Quota::per_second(n)));
        let bytes = config
            .bytes_per_second
            .and_then(|b| NonZeroU32::new(u32::try_from(b.0).unwrap_or(u32::MAX)))
            .map(|n| (Arc::new(RateLimiter::keyed(Quota::per_second(n))), n));
        if per_identity.is_none() && bytes.is_none() && config.max_in_flight.is_none() {
            return None;
        }
        Some(Arc::new(Limits {
            calls: std::sync::atomic::AtomicU64::new(0),
            per_identity,
            bytes,
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

/// Enforces the configured [`Limits`] on every call.
pub type LimitLayer = EdgeLayer<Arc<Limits>>;

impl<S, B> Service<http::Request<B>> for Edge<S, Arc<Limits>>
where
    S: Service<http::Request<Throttled<B>>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let key = key_of(&req);
        let throttle = self
            .state
            .bytes
            .clone()
            .map(|(limiter, burst)| (limiter, burst, key.clone()));
        let req = req.map(|inner| Throttled {
            inner,
            throttle,
            held: None,
            sleep: None,
        });
        if req.uri().path().starts_with("/grpc.health.v1.") {
            return self.inner.call(req).boxed();
        }
        let guard = match self.state.admit(&key) {
            Ok(guard) => guard,
            Err(refusal) => {
                let refused = exhausted(refusal.message, refusal.retry_after);
                return std::future::ready(Ok(refused)).boxed();
            }
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

/// Why a call was not admitted, and when to come back.
#[derive(Debug)]
pub struct Refusal {
    /// What limit it hit.
    pub message: String,
    /// When the caller may try again.
    pub retry_after: Duration,
}

impl Limits {
    /// Admits one call of `key` (gRPC's or HTTP's: one budget per
    /// identity), or says why not; the returned slot (with an in-flight
    /// cap) must live until the call's response has ended.
    pub fn admit(&self, key: &str) -> Result<Option<InFlight>, Refusal> {
        self.sweep();
        if let Some(limiter) = &self.per_identity
            && let Err(not_until) = limiter.check_key(&key.to_string())
        {
            return Err(Refusal {
                message: format!("rate limit for {key} exceeded"),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            });
        }
        match self.max_in_flight {
            Some(max) => {
                if self.in_flight.fetch_add(1, Ordering::SeqCst) >= max {
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return Err(Refusal {
                        message: format!("server busy: {max} calls in flight"),
                        retry_after: Duration::from_secs(1),
                    });
                }
                Ok(Some(InFlight(self.in_flight.clone())))
            }
            None => Ok(None),
        }
    }
}

/// A response body that holds its call's in-flight slot until it ends.
pub fn hold<B>(body: B, slot: InFlight) -> impl Body<Data = B::Data, Error = B::Error>
where
    B: Body,
{
    Guarded {
        inner: body,
        _guard: slot,
    }
}

/// Releases an in-flight slot when dropped.
pub struct InFlight(Arc<AtomicUsize>);

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

pin_project! {
    /// A request body held to the identity's bytes-per-second budget: a data
    /// frame over budget waits until the budget allows it (the client is
    /// slowed down through flow control rather than failed).
    pub struct Throttled<B: Body> {
        #[pin]
        inner: B,
        throttle: Option<(Arc<DefaultKeyedRateLimiter<String>>, NonZeroU32, String)>,
        held: Option<Frame<B::Data>>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B: Body> Body for Throttled<B>
where
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        use bytes::Buf;
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.sleep = None;
            }
            let frame = match this.held.take() {
                Some(f) => f,
                None => match this.inner.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => f,
                    other => return other,
                },
            };
            let Some((limiter, burst, key)) = this.throttle.as_ref() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            let len = frame.data_ref().map_or(0, |d| d.remaining());
            let Some(n) = NonZeroU32::new(u32::try_from(len).unwrap_or(u32::MAX).min(burst.get()))
            else {
                return Poll::Ready(Some(Ok(frame)));
            };
            match limiter.check_key_n(key, n) {
                Ok(Ok(())) | Err(_) => return Poll::Ready(Some(Ok(frame))),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    *this.held = Some(frame);
                    *this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::auth::Grant;

    fn config(yaml: &str) -> LimitsConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn request(subject: Option<&str>) -> http::Request<tonic::body::Body> {
        let mut req = http::Request::new(tonic::body::Body::empty());
        *req.uri_mut() = "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities"
            .parse()
            .unwrap();
        if let Some(name) = subject {
            req.extensions_mut().insert(Identity::Subject {
                name: name.into(),
                grants: Grant::parse("read").into_iter().collect(),
            });
        }
        req
    }

    /// The gRPC code of a response (0 when the inner service answered).
    fn code(response: &http::Response<tonic::body::Body>) -> i32 {
        response
            .headers()
            .get("grpc-status")
            .map_or(0, |v| v.to_str().unwrap().parse().unwrap())
    }

    fn ok_service() -> impl Service<
        http::Request<Throttled<tonic::body::Body>>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        // A body with data, as real responses have (an empty one ends at once).
        tower::service_fn(|_req| async {
            Ok(http::Response::new(tonic::body::Body::new(String::from(
                "reply",
            ))))
        })
    }

    #[test]
    fn nothing_configured_is_no_layer() {
        assert!(Limits::from_config(&config("{}")).is_none());
        assert!(Limits::from_config(&config("max_in_flight: 10")).is_some());
    }

    #[tokio::test]
    async fn calls_per_identity_are_limited_each_on_its_own() {
        let limits = Limits::from_config(&config("requests_per_second: 3")).unwrap();
        let svc = LimitLayer::new(limits).layer(ok_service());
        let mut codes = Vec::new();
        for _ in 0..4 {
            let r = svc.clone().oneshot(request(Some("ci"))).await.unwrap();
            codes.push(code(&r));
        }
        let exhausted = tonic::Code::ResourceExhausted as i32;
        assert_eq!(
            codes,
            [0, 0, 0, exhausted],
            "a burst of the quota, then refused"
        );
        let other = svc
            .clone()
            .oneshot(request(Some("someone-else")))
            .await
            .unwrap();
        assert_eq!(code(&other), 0, "another identity has its own quota");
    }

    #[tokio::test]
    async fn calls_over_the_in_flight_cap_are_shed() {
        let limits = Limits::from_config(&config("max_in_flight: 1")).unwrap();
        let svc = LimitLayer::new(limits.clone()).layer(ok_service());
        // The first call's response body is still open: it stays in flight.
        let held = svc.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(code(&held), 0);
        let shed = svc.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted as i32);
        drop(held);
        let again = svc.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(code(&again), 0, "the slot is free once the response ended");
    }

    #[tokio::test]
    async fn identities_seen_once_do_not_stay_for_ever() {
        let limits = Limits::from_config(&config("requests_per_second: 1000000")).unwrap();
        let svc = LimitLayer::new(limits.clone()).layer(ok_service());
        for n in 0..10_000 {
            let name = format!("caller-{n}");
            let r = svc.clone().oneshot(request(Some(&name))).await.unwrap();
            assert_eq!(code(&r), 0);
        }
        assert!(
            limits.tracked() <= SWEEP_EVERY as usize,
            "{} identities kept",
            limits.tracked()
        );
    }

    #[test]
    fn calls_count_against_the_subject_else_the_peer() {
        assert_eq!(key_of(&request(Some("ci"))), "sub:ci");
        assert_eq!(key_of(&request(None)), "unknown");
    }
}
