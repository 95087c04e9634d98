//! The only wiring: config → stores → instances → services → one tonic server
//! plus the HTTP listener, with health reporting and graceful shutdown.
//! `main.rs` and the end-to-end tests both start kiln through [`start`],
//! which runs the three steps: `build` (everything from config), `serve`
//! (listeners and tasks) and the stop sequence (`stop`).

mod build;
mod services;
mod stop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::error::{Error, Result};
pub use services::SERVICE_NAMES;

/// Interrupted uploads are kept this long for the client to resume.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);

/// A server that is running; stop it with [`RunningServer::stop`].
pub struct RunningServer {
    /// The gRPC address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The HTTP address (`/metrics`, `/healthz`, build-event API).
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Reports NOT_SERVING, waits `shutdown_delay` (so load balancers stop
    /// sending), stops accepting calls, lets in-flight calls finish within
    /// the grace period, then returns.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await?
    }

    /// Waits until the server ends by itself (it only does on error).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.task).await?
    }
}

async fn set_health(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// Builds everything from `config` and starts serving on `config.listen`.
/// Relative fs paths live under `data_dir`.
pub async fn start(config: Config, data_dir: PathBuf) -> Result<RunningServer> {
    crate::tls::install_crypto_provider();
    let bind = |addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot listen on {addr}: {e}")))
    };
    let listener = bind(config.listen.clone()).await?;
    let http_listener = bind(config.http_listen.clone()).await?;
    let built = build::build(&config, &data_dir).await?;
    serve(config, built, listener, http_listener).await
}

/// Serves what [`build::build`] made on the two listeners: the gRPC server
/// behind the edge layers, the HTTP listener, upload expiry, and the stop
/// sequence waiting for [`RunningServer::stop`].
async fn serve(
    config: Config,
    built: build::Built,
    listener: TcpListener,
    http_listener: TcpListener,
) -> Result<RunningServer> {
    let address = |l: &TcpListener| l.local_addr().map_err(|e| Error::io("listener address", e));
    let (addr, http_addr) = (address(&listener)?, address(&http_listener)?);
    let build::Built {
        parts,
        authenticator,
        http_access,
        http_cache,
        limits,
    } = built;
    let (reporter, health) = tonic_health::server::health_reporter();
    let (routes, routed) = services::routes(&config, &parts, health);
    let mut server = Server::builder()
        // Windows well above the 64 KiB default let one stream move hundreds
        // of MB/s; kept moderate because every stream may buffer its window
        // in memory (4 MiB per stream, 32 MiB per connection).
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // The edge, outermost first (see `edge`): every call is traced and
        // counted, then authenticated, then rate-limited by who it is.
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::edge::trace::TraceLayer::new(
                    crate::edge::trace::Tracing,
                ))
                .layer(crate::edge::metrics::layer(&parts.metrics))
                .option_layer(authenticator.map(crate::edge::auth::AuthLayer::new))
                .option_layer(limits.map(crate::edge::limits::LimitLayer::new)),
        );
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(crate::tls::server_config(tls)?)
            .map_err(|e| Error::InvalidArgument(format!("tls: {e}")))?;
    }
    let router = server.add_routes(routes);

    let serving = Arc::new(AtomicBool::new(true));
    let (shutdown, stop_requested) = watch::channel(false);
    let (stop_grpc_tx, mut stop_grpc) = watch::channel(false);
    let http_tls = config
        .tls
        .as_ref()
        .map(crate::http::serve::tls_acceptor)
        .transpose()?;
    let http = crate::http::serve::serve(
        http_listener,
        crate::http::router(crate::http::HttpParts {
            metrics: parts.metrics.clone(),
            events: parts.events.clone(),
            scheduler: parts.scheduler.clone(),
            serving: serving.clone(),
            access: http_access,
            cache: http_cache,
            instances: parts.instances.clone(),
        }),
        config.http.clone(),
        http_tls,
        stop_grpc.clone(),
        config.grace_period.0,
    );
    let http_task = tokio::spawn(http);
    // Nagle's algorithm plus delayed ACKs add ~40 ms to every call whose
    // request or response spans several TCP segments.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let uploads = parts.uploads.clone();
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            uploads.expire(UPLOAD_IDLE);
        }
    });
    set_health(&reporter, &routed, ServingStatus::Serving).await;
    stop::sequence(stop::Stop {
        requested: stop_requested,
        serving,
        scheduler: parts.scheduler.clone(),
        reporter,
        routed,
        delay: config.grpc.shutdown_delay.0,
        stop_grpc: stop_grpc_tx,
    });
    let scheduler = parts.scheduler.clone();
    let grace = config.grace_period.0;
    let mut stop_grace = stop_grpc.clone();
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_grpc.wait_for(|s| *s).await;
            tracing::info!("shutting down: no new calls accepted");
        });
        let result = tokio::select! {
            r = serve => r.map_err(|e| Error::internal_from("server", e)),
            _ = async {
                let _ = stop_grace.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "grace period over; abandoning in-flight calls");
                Ok(())
            }
        };
        // Every task holding the stores has ended when stop returns, so a
        // server started next on the same directory finds it unlocked.
        expiry.abort();
        let _ = expiry.await;
        let _ = http_task.await;
        if let Some(scheduler) = scheduler {
            scheduler.end_tasks().await;
        }
        result
    });
    tracing::info!(%addr, %http_addr, tls = config.tls.is_some(), instances = config.instances.len(), "kiln serving");
    Ok(RunningServer {
        addr,
        http_addr,
        shutdown,
        task,
    })
}
