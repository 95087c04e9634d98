//! Instances: what an `instance_name` selects. Each has its own CAS, action
//! cache, tree cache and settings; services look one up per request and call
//! into it, never into a backend directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::{Policy, Role};
use crate::config::{Config, InstanceConfig};
use crate::edge::Caller;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::build::StoreBuilder;
use crate::tree::TreeCache;

/// The per-instance behaviour settings, copied out of config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every write is PERMISSION_DENIED.
    pub read_only: bool,
    /// GetActionResult checks that a result's blobs are all in the CAS.
    pub completeness_check: bool,
    /// Largest batch read or write, in bytes.
    pub max_batch_total_size: u64,
    /// Largest CAS blob accepted (0: any), advertised in Capabilities.
    pub max_cas_blob_size: u64,
    /// ByteStream read chunk size.
    pub read_chunk_size: usize,
    /// ByteStream writes of existing blobs run to the end.
    pub disable_overwrite_early_return: bool,
    /// Bounds on every tree walk (GetTree, Execute's input check, output
    /// directories of action results).
    pub walk: crate::tree::WalkLimits,
    /// Largest Action, Command or Tree read whole to be parsed.
    pub max_parsed_blob: u64,
    /// Most digests in one FindMissingBlobs.
    pub max_find_missing: usize,
}

/// One REAPI instance.
#[derive(Debug)]
pub struct Instance {
    /// Its `instance_name`.
    pub name: String,
    /// Content-addressed blobs, verified on write.
    pub cas: Store,
    /// Serialized ActionResults keyed by action digest.
    pub action_cache: Store,
    /// Complete trees GetTree has walked.
    pub tree_cache: TreeCache,
    /// Behaviour settings.
    pub settings: Settings,
    /// Who may do what here.
    pub policy: Arc<Policy>,
    /// What results written here teach (none when switched off).
    pub insights: Option<Arc<crate::insights::Insights>>,
    /// SplitBlob and SpliceBlob (none when switched off).
    pub chunking: Option<crate::chunking::blobs::Chunking>,
    /// What clients did not move because it was stored, on /metrics.
    savings: crate::insights::savings::SavingsMetrics,
}

impl Instance {
    /// Allows `who` to act as `role` here, or refuses with UNAUTHENTICATED or
    /// PERMISSION_DENIED.
    pub fn authorize(&self, caller: &Caller, role: Role) -> Result<()> {
        caller.note_instance(&self.name);
        self.policy
            .authorize(caller.identity.as_ref(), &self.name, role)
    }

    /// Counts what a call did on its invocation's cache scorecard, when
    /// insights are on (and a saving on /metrics, whether they are or not).
    pub fn note(
        &self,
        writer: &crate::insights::Writer,
        seen: crate::insights::scorecard::Seen<'_>,
    ) {
        self.savings.count(&seen);
        if let Some(i) = &self.insights {
            i.note(writer, seen);
        }
    }

    /// Refuses writes on a read-only instance, never pretending they worked.
    pub fn check_writable(&self) -> Result<()> {
        if self.settings.read_only {
            return Err(Error::PermissionDenied(format!(
                "instance {:?} is read-only",
                self.name
            )));
        }
        Ok(())
    }

    async fn build(
        config: &InstanceConfig,
        path: &str,
        stores: &mut StoreBuilder<'_>,
        policy: Arc<Policy>,
        max_parsed_blob: u64,
        insights: Option<Arc<crate::insights::Insights>>,
    ) -> Result<Self> {
        let action_cache = stores
            .action_cache(&config.action_cache, &format!("{path}.action_cache"))
            .await?;
        let chunking = crate::chunking::blobs::Chunking::new(&config.chunking)?;
        // The chunked layer cuts with the FastCDC parameters SplitBlob
        // advertises, so Split answers from what is stored.
        let chunked = chunking
            .as_ref()
            .filter(|_| config.chunking.store)
            .map(|c| crate::store::build::ChunkedLayer {
                chunker: crate::chunking::Chunker::FastCdc(c.fast_cdc().clone()),
                min_size: config.chunking.store_min_size.0,
                in_flight: config.chunking.store_in_flight.0,
                pointers: action_cache.clone(),
            });
        Ok(Instance {
            insights,
            savings: stores.metrics().savings(&config.name),
            name: config.name.clone(),
            chunking,
            cas: stores
                .cas(
                    &config.cas,
                    &format!("{path}.cas"),
                    config.max_cas_blob_size.0,
                    chunked,
                )
                .await?,
            action_cache,
            policy,
            tree_cache: TreeCache::new(config.tree_cache.max_size.0, config.tree_cache.ttl.0),
            settings: Settings {
                read_only: config.read_only,
                completeness_check: config.completeness_check,
                max_cas_blob_size: config.max_cas_blob_size.0,
                max_batch_total_size: config.max_batch_total_size.0,
                read_chunk_size: config.read_chunk_size.0 as usize,
                disable_overwrite_early_return: config.disable_overwrite_early_return,
                walk: crate::tree::WalkLimits {
                    concurrency: config.tree_read_concurrency,
                    max_directory: max_parsed_blob,
                    max_total: config.max_tree_size.0,
                },
                max_parsed_blob,
                max_find_missing: config.max_find_missing,
            },
        })
    }
}

/// Every instance of a server, by name.
#[derive(Debug, Clone)]
pub struct Instances {
    by_name: Arc<HashMap<String, Arc<Instance>>>,
    /// Unknown-instance errors list the served names only when anyone may
    /// call anyway (auth off): otherwise they would tell an anonymous
    /// caller what the server holds.
    list_names: bool,
}

impl Instances {
    /// Builds every instance (and the stores under it) from a validated config.
    pub async fn build(
        config: &Config,
        data_dir: PathBuf,
        metrics: Arc<Metrics>,
        policy: Arc<Policy>,
        insights: Option<Arc<crate::insights::Insights>>,
    ) -> Result<Self> {
        let mut stores = StoreBuilder::new(config, data_dir, &metrics);
        let mut by_name = HashMap::new();
        for (i, ic) in config.instances.iter().enumerate() {
            let path = format!("instances[{i}]");
            let max_parsed = config.max_message_size.0;
            let instance = Instance::build(
                ic,
                &path,
                &mut stores,
                policy.clone(),
                max_parsed,
                insights.clone(),
            )
            .await?;
            by_name.insert(ic.name.clone(), Arc::new(instance));
        }
        Ok(Instances {
            by_name: Arc::new(by_name),
            list_names: !policy.enabled,
        })
    }

    /// The instance a request names; an unknown one is INVALID_ARGUMENT.
    pub fn get(&self, name: &str) -> Result<Arc<Instance>> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            if !self.list_names {
                return Error::InvalidArgument(format!("unknown instance_name {name:?}"));
            }
            let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            known.sort();
            Error::InvalidArgument(format!(
                "unknown instance_name {name:?} (this server serves {known:?})"
            ))
        })
    }
}
