//! The gRPC side of the wiring: every service with the same message limits
//! and compression, plus health and reflection, on one tonic router.

use std::sync::Arc;

use tonic::codec::CompressionEncoding;
use tonic::service::Routes;

use crate::bes::BesLimits;
use crate::bes::query::QueryService;
use crate::bes::service::BuildEventService;
use crate::bes::store::EventStore;
use crate::bes::webhook::Webhooks;
use crate::config::{Config, SendCompression};
use crate::execution::scheduler::Scheduler;
use crate::instance::Instances;
use crate::metrics::Metrics;
use crate::proto::asset::fetch_server::FetchServer;
use crate::proto::asset::push_server::PushServer;
use crate::proto::bes_v1::publish_build_event_server::PublishBuildEventServer;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::kiln_v1::build_event_query_server::BuildEventQueryServer;
use crate::proto::longrunning::operations_server::OperationsServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::proto::reapi::execution_server::ExecutionServer;
use crate::proto::remoteworkers::bots_server::BotsServer;
use crate::service::action_cache::ActionCacheService;
use crate::service::asset::AssetService;
use crate::service::bots::BotsService;
use crate::service::bytestream::ByteStreamService;
use crate::service::capabilities::CapabilitiesService;
use crate::service::cas::CasService;
use crate::service::execution::ExecutionService;
use crate::service::operations::OperationsService;
use crate::upload::Uploads;

/// The fully qualified names of every service kiln can route (health
/// reports those a server routes: see [`routes`]).
pub const SERVICE_NAMES: [&str; 11] = [
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "google.bytestream.ByteStream",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.devtools.build.v1.PublishBuildEvent",
    "kiln.v1.BuildEventQuery",
    "build.bazel.remote.execution.v2.Execution",
    "google.longrunning.Operations",
    "google.devtools.remoteworkers.v1test2.Bots",
    "build.bazel.remote.asset.v1.Fetch",
    "build.bazel.remote.asset.v1.Push",
];

/// Applies the same message limits and compression to every service.
macro_rules! configured {
    ($server:expr, $max:expr, $send:expr) => {{
        let s = $server
            .max_decoding_message_size($max)
            .max_encoding_message_size($max)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        match $send {
            Some(encoding) => s.send_compressed(encoding),
            None => s,
        }
    }};
}

/// What the services share.
pub struct Parts {
    /// The instances.
    pub instances: Instances,
    /// Interrupted uploads.
    pub uploads: Arc<Uploads>,
    /// Build-event storage.
    pub events: Arc<dyn EventStore>,
    /// Where finished invocations and insights are announced.
    pub webhooks: Webhooks,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Who may publish and query build events.
    pub bes_access: crate::bes::service::Access,
    /// The execution scheduler, unless execution is disabled.
    pub scheduler: Option<Arc<Scheduler>>,
    /// The Remote Asset API, unless disabled.
    pub assets: Option<Arc<crate::asset::Assets>>,
}

fn named<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Every gRPC service of the server, health and reflection included, and
/// the names of kiln's own services among them (what health reports on).
pub fn routes(
    config: &Config,
    parts: &Parts,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> (Routes, Vec<&'static str>) {
    let max = config.max_message_size.0 as usize;
    let send = match config.grpc.send_compression {
        SendCompression::None => None,
        SendCompression::Gzip => Some(CompressionEncoding::Gzip),
        SendCompression::Zstd => Some(CompressionEncoding::Zstd),
    };
    let bes = BuildEventService::new(
        parts.events.clone(),
        BesLimits::from(&config.build_events),
        parts.webhooks.clone(),
        &parts.metrics,
        parts.bes_access.clone(),
    );
    let i = &parts.instances;
    let mut names: Vec<&'static str> = Vec::new();
    let mut routes = Routes::new(health);
    // Each service is added with its name noted, so health reports exactly
    // the services this server routes.
    macro_rules! add {
        ($svc:expr) => {{
            let svc = $svc;
            names.push(named(&svc));
            routes = routes.add_service(svc);
        }};
    }
    add!(configured!(
        CapabilitiesServer::new(CapabilitiesService::new(
            i.clone(),
            parts.scheduler.is_some()
        )),
        max,
        send
    ));
    add!(configured!(
        ContentAddressableStorageServer::new(CasService::new(i.clone())),
        max,
        send
    ));
    add!(configured!(
        ByteStreamServer::new(ByteStreamService::new(i.clone(), parts.uploads.clone())),
        max,
        send
    ));
    add!(configured!(
        ActionCacheServer::new(ActionCacheService::new(i.clone())),
        max,
        send
    ));
    add!(configured!(PublishBuildEventServer::new(bes), max, send));
    add!(configured!(
        BuildEventQueryServer::new(QueryService::new(
            parts.events.clone(),
            parts.bes_access.clone()
        )),
        max,
        send
    ));
    if let Some(scheduler) = &parts.scheduler {
        add!(configured!(
            ExecutionServer::new(ExecutionService::new(i.clone(), scheduler.clone())),
            max,
            send
        ));
        add!(configured!(
            OperationsServer::new(OperationsService::new(i.clone(), scheduler.clone())),
            max,
            send
        ));
        add!(configured!(
            BotsServer::new(BotsService::new(i.clone(), scheduler.clone())),
            max,
            send
        ));
    }
    if let Some(assets) = &parts.assets {
        let service = AssetService::new(i.clone(), assets.clone());
        add!(configured!(FetchServer::new(service.clone()), max, send));
        add!(configured!(PushServer::new(service), max, send));
    }
    if config.grpc.reflection {
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = builder()
            .build_v1()
            .expect("kiln's descriptor set is valid");
        // v1alpha too: grpcurl 1.8 and other tools still in use speak only
        // v1alpha ("server does not support the reflection API" otherwise).
        let v1alpha = builder()
            .build_v1alpha()
            .expect("kiln's descriptor set is valid");
        routes = routes.add_service(v1).add_service(v1alpha);
    }
    (routes, names)
}
