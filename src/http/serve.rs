//! Serving the HTTP listener's connections with the protections gRPC's
//! edge has: a cap on open connections (past it new ones are closed at
//! once, so idle clients cannot take the file descriptors gRPC needs), a
//! deadline for a request's headers, an idle timeout on connections that
//! move no byte, a deadline for the TLS handshake, and TLS itself from the
//! same certificate settings as gRPC (`tls:`). HTTP/1.1 and HTTP/2 both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::{HttpServerConfig, TlsConfig};
use crate::error::{Error, Result};

/// The peer of an HTTP request, in its extensions (for per-client limits).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Whether the listener speaks TLS, in every request's extensions (so the
/// sign-in cookie can be marked `Secure`).
#[derive(Debug, Clone, Copy)]
pub struct OverTls(pub bool);

/// The HTTP listener's TLS, from the same `tls:` settings as gRPC's
/// (with `client_ca`, clients must present a certificate it signed).
pub fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crate::tls::install_crypto_provider();
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("tls: {what}: {e}"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| bad(&tls.cert.display().to_string(), &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&tls.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| bad(&tls.key.display().to_string(), &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca).map_err(|e| bad(&ca.display().to_string(), &e))?
            {
                roots
                    .add(cert.map_err(|e| bad(&ca.display().to_string(), &e))?)
                    .map_err(|e| bad(&ca.display().to_string(), &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| bad("client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("cert and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `stop` turns true; then lets open
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (drain_tx, drain) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!(error = %e, "HTTP listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "HTTP listener full; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, limits, drain) =
            (router.clone(), tls.clone(), limits.clone(), drain.clone());
        connections.spawn(async move {
            let _slot = slot;
            connection(stream, peer, router, limits, tls, drain).await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    drain: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    match tls {
        None => {
            let io = Tracked::new(stream, activity.clone());
            run(io, peer, false, router, &limits, activity, drain).await;
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout.0, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    let io = Tracked::new(stream, activity.clone());
                    run(io, peer, true, router, &limits, activity, drain).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTP listener: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "HTTP listener: TLS handshake timed out"),
            }
        }
    }
}

async fn run<I>(
    io: Tracked<I>,
    peer: SocketAddr,
    over_tls: bool,
    router: Router,
    limits: &HttpServerConfig,
    activity: Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            req.extensions_mut().insert(OverTls(over_tls));
            req
        })
        .service(router);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(256 << 10);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let idle = limits.idle_timeout.0;
    loop {
        let quiet_until = activity.last() + idle;
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(quiet_until) => {
                if activity.last() + idle <= tokio::time::Instant::now() {
                    tracing::debug!(%peer, ?idle, "HTTP listener: idle connection closed");
                    return;
                }
            }
            () = async { let _ = drain.wait_for(|d| *d).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                return;
            }
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A connection's stream, noting every byte moved in its [`Activity`].
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> Tracked<I> {
    fn new(inner: I, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
