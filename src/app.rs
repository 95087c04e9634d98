//! The only wiring: config → stores → instances → services → one tonic server,
//! with graceful shutdown. `main.rs` and the end-to-end tests both start kiln
//! through [`start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::bes::BesLimits;
use crate::bes::query::QueryService;
use crate::bes::service::BuildEventService;
use crate::bes::webhook::Webhooks;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::instance::Instances;
use crate::metrics::Metrics;
use crate::proto::bes_v1::publish_build_event_server::PublishBuildEventServer;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::kiln_v1::build_event_query_server::BuildEventQueryServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::service::action_cache::ActionCacheService;
use crate::service::bytestream::ByteStreamService;
use crate::service::capabilities::CapabilitiesService;
use crate::service::cas::CasService;
use crate::service::upload::Uploads;

/// Interrupted uploads are kept this long for the client to resume.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);

/// A server that is running; stop it with [`RunningServer::stop`].
pub struct RunningServer {
    /// The gRPC address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The HTTP address (`/metrics`).
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Stops accepting calls, lets in-flight calls finish within the grace
    /// period, then returns.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await?
    }

    /// Waits until the server ends by itself (it only does on error).
    pub async fn wait(&mut self) -> Result<()> {
        (&mut self.task).await?
    }
}

/// Applies the same message limits and compression to every service.
macro_rules! configured {
    ($server:expr, $max:expr) => {
        $server
            .max_decoding_message_size($max)
            .max_encoding_message_size($max)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
    };
}

/// Builds everything from `config` and starts serving on `config.listen`.
/// Relative fs paths live under `data_dir`.
pub async fn start(config: Config, data_dir: PathBuf) -> Result<RunningServer> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    let http_listener = TcpListener::bind(&config.http_listen)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", config.http_listen)))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    let metrics = Metrics::new();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
    let instances = Instances::build(&config, data_dir.clone(), metrics.clone()).await?;
    let uploads = Arc::new(Uploads::new(data_dir.join("uploads"))?);
    let events = crate::bes::open(&config.build_events, &data_dir).await?;
    let webhooks = Webhooks::start(
        config.build_events.webhooks.clone(),
        metrics.clone(),
        config.build_events.webhook_backoff.0,
    );
    let bes = BuildEventService::new(
        events.clone(),
        BesLimits::from(&config.build_events),
        webhooks,
        metrics.clone(),
    );
    let max = config.max_message_size.0 as usize;
    let grace = config.grace_period.0;

    let router = Server::builder()
        // Large windows let one stream move hundreds of MB/s over loopback and
        // real networks alike; the defaults (64 KiB) cap a blob transfer.
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20))
        .add_service(configured!(
            CapabilitiesServer::new(CapabilitiesService::new(instances.clone())),
            max
        ))
        .add_service(configured!(
            ContentAddressableStorageServer::new(CasService::new(instances.clone())),
            max
        ))
        .add_service(configured!(
            ByteStreamServer::new(ByteStreamService::new(instances.clone(), uploads.clone())),
            max
        ))
        .add_service(configured!(
            ActionCacheServer::new(ActionCacheService::new(instances.clone())),
            max
        ))
        .add_service(configured!(PublishBuildEventServer::new(bes), max))
        .add_service(configured!(
            BuildEventQueryServer::new(QueryService::new(events.clone())),
            max
        ));

    let (shutdown, mut stop) = watch::channel(false);
    let mut stop_grace = stop.clone();
    let mut stop_http = stop.clone();
    let http = axum::serve(
        http_listener,
        crate::http::router(metrics.clone(), events.clone()),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_http.wait_for(|s| *s).await;
    });
    let http_task = tokio::spawn(async move {
        if let Err(e) = http.await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    // Nagle's algorithm plus delayed ACKs add ~40 ms to every call whose
    // request or response spans several TCP segments.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            uploads.expire(UPLOAD_IDLE);
        }
    });
    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
            tracing::info!("shutting down: no new calls accepted");
        });
        let result = tokio::select! {
            r = serve => r.map_err(|e| Error::Internal(format!("server: {e}"))),
            _ = async {
                let _ = stop_grace.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "grace period over; abandoning in-flight calls");
                Ok(())
            }
        };
        expiry.abort();
        http_task.abort();
        result
    });
    tracing::info!(%addr, %http_addr, instances = config.instances.len(), "kiln serving");
    Ok(RunningServer {
        addr,
        http_addr,
        shutdown,
        task,
    })
}
