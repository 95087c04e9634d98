//! Capabilities: what kiln serves, per instance. Bazel 4 refuses servers whose
//! low API version is above 2.0, so low is 2.0 and high is the newest version
//! whose cache features kiln fully serves.

use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::DigestFunction;
use crate::instance::Instances;
use crate::proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities, FastCdc2020Params,
    GetCapabilitiesRequest, PriorityCapabilities, RepMaxCdcParams, ServerCapabilities,
    capabilities_server::Capabilities, compressor, priority_capabilities,
    symlink_absolute_path_strategy,
};
use crate::proto::semver::SemVer;
use crate::service::caller;

/// The Capabilities service.
#[derive(Debug, Clone)]
pub struct CapabilitiesService {
    instances: Instances,
    execution: bool,
}

impl CapabilitiesService {
    /// Serves the capabilities of `instances`; `execution` says whether the
    /// Execution service runs (Bazel refuses `--remote_executor` otherwise).
    pub fn new(instances: Instances, execution: bool) -> Self {
        CapabilitiesService {
            instances,
            execution,
        }
    }
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let instance = self.instances.get(&request.get_ref().instance_name)?;
        instance.authorize(&caller(&request), Role::Read)?;
        let zstd = compressor::Value::Zstd as i32;
        let cache = CacheCapabilities {
            digest_functions: DigestFunction::ALL
                .iter()
                .map(|f| f.to_proto() as i32)
                .collect(),
            action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                update_enabled: !instance.settings.read_only,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: instance.settings.max_batch_total_size as i64,
            symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: vec![zstd],
            supported_batch_update_compressors: vec![zstd],
            max_cas_blob_size_bytes: instance.settings.max_cas_blob_size as i64,
            split_blob_support: instance.chunking.is_some(),
            splice_blob_support: instance.chunking.is_some(),
            fast_cdc_2020_params: instance.chunking.as_ref().map(|c| FastCdc2020Params {
                avg_chunk_size_bytes: c.fast_cdc().avg() as u64,
                seed: c.fast_cdc().seed(),
            }),
            rep_max_cdc_params: instance
                .chunking
                .as_ref()
                .and_then(|c| c.rep_max())
                .map(|c| RepMaxCdcParams {
                    min_chunk_size_bytes: c.min() as u64,
                    horizon_size_bytes: c.horizon() as u64,
                }),
        };
        Ok(Response::new(ServerCapabilities {
            cache_capabilities: Some(cache),
            execution_capabilities: self.execution.then(|| ExecutionCapabilities {
                digest_function: DigestFunction::Sha256.to_proto() as i32,
                digest_functions: DigestFunction::ALL
                    .iter()
                    .map(|f| f.to_proto() as i32)
                    .collect(),
                exec_enabled: !instance.settings.read_only,
                // Any int32 is accepted; lower runs sooner.
                execution_priority_capabilities: Some(PriorityCapabilities {
                    priorities: vec![priority_capabilities::PriorityRange {
                        min_priority: i32::MIN,
                        max_priority: i32::MAX,
                    }],
                }),
                supported_node_properties: Vec::new(),
            }),
            deprecated_api_version: version(2, 0),
            low_api_version: version(2, 0),
            // 2.12: what 2.4-2.12 added is optional and capability-gated
            // (SplitBlob and SpliceBlob, advertised per instance) or done
            // (the workers' output_directory_format, Execute's inline
            // hints, max_cas_blob_size_bytes).
            high_api_version: version(2, 12),
        }))
    }
}
