//! Config → store graph: the one place that matches over store kinds.
//!
//! Named stores are built once and shared as `Arc`s wherever `ref:` names
//! them; every node is wrapped in [`Instrumented`] here, so stores never
//! instrument themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::Store;
use super::chunked::Chunked;
use super::content_addressed::ContentAddressed;
use super::existence_cache::ExistenceCache;
use super::fs::{FsOptions, FsStore};
use super::instrumented::Instrumented;
use super::instrumented::StoreMetrics;
use super::memory::MemoryStore;
use super::memory_cache::MemoryCache;
use super::merged_puts::MergedPuts;
use super::s3::S3Store;
use crate::chunking::Chunker;
use crate::config::{Config, StoreConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// What an instance's CAS needs for its chunked layer (`chunking.store`).
pub struct ChunkedLayer {
    /// Cuts as SplitBlob advertises.
    pub chunker: Chunker,
    /// The smallest blob stored as chunks.
    pub min_size: u64,
    /// Bytes of cut chunks that may wait to be stored, all uploads together.
    pub in_flight: u64,
    /// Where pointers live: the instance's action cache.
    pub pointers: Store,
}

/// Builds store nodes from a validated config.
pub struct StoreBuilder<'a> {
    config: &'a Config,
    data_dir: PathBuf,
    metrics: Arc<StoreMetrics>,
    named: HashMap<String, (Role, Store)>,
}

/// Whether a graph holds content-addressed blobs (a CAS) or action results;
/// backends that can refuse to overwrite (S3's create-if-absent) only do so
/// for content-addressed data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Cas,
    ActionCache,
}

impl<'a> StoreBuilder<'a> {
    /// A builder resolving relative fs paths against `data_dir` and
    /// recording every node's calls in `metrics`.
    pub fn new(config: &'a Config, data_dir: PathBuf, metrics: &Metrics) -> Self {
        StoreBuilder {
            config,
            data_dir,
            metrics: StoreMetrics::register(metrics),
            named: HashMap::new(),
        }
    }

    /// A CAS: the configured graph with content verification at its root, so
    /// no write path can store unverified bytes.
    /// `max_blob_size` (0: any) bounds every blob it accepts. With
    /// `chunked`, blobs of at least its size are stored as the chunks its
    /// chunker cuts ([`Chunked`], node `{path}.chunked`), found through
    /// pointers kept in the instance's action cache (`pointers`).
    pub async fn cas(
        &mut self,
        spec: &StoreConfig,
        path: &str,
        max_blob_size: u64,
        chunked: Option<ChunkedLayer>,
    ) -> Result<Store> {
        let mut inner = self.node(spec, path.to_string(), Role::Cas).await?;
        if let Some(spec) = chunked {
            let node = format!("{path}.chunked");
            let counts = self.metrics.chunked(&node);
            let layer = Arc::new(Chunked::new(inner, spec, counts));
            inner = Arc::new(Instrumented::new(
                node,
                "chunked",
                layer,
                self.metrics.clone(),
            ));
        }
        Ok(Arc::new(ContentAddressed::new(inner, max_blob_size)))
    }

    /// The stores' metrics (an instance registers its own counters there).
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }

    /// An action cache: the configured graph as is (its values are not
    /// content-addressed).
    pub async fn action_cache(&mut self, spec: &StoreConfig, path: &str) -> Result<Store> {
        self.node(spec, path.to_string(), Role::ActionCache).await
    }

    fn node<'s>(
        &'s mut self,
        spec: &'s StoreConfig,
        path: String,
        role: Role,
    ) -> BoxFuture<'s, Result<Store>> {
        Box::pin(async move {
            let store: Store = match spec {
                StoreConfig::Ref(name) => return self.named(name, role).await,
                StoreConfig::Memory(m) => Arc::new(MemoryStore::new(m.max_size.0)),
                StoreConfig::Fs(f) => {
                    let dir = self.data_dir.join(&f.path);
                    let options = FsOptions {
                        read_chunk: f.read_chunk.0 as usize,
                        content_addressed: role == Role::Cas,
                        limits: f.limits(),
                        capacity: Some(self.metrics.capacity(&path)),
                        segments: f.segments,
                    };
                    // Opening scans the index and segments and may wait for
                    // the directory's lock (a store of this process still
                    // being dropped): blocking work, off the runtime's
                    // threads, so the tasks that release the lock can run.
                    let opening = dir.clone();
                    let opened =
                        tokio::task::spawn_blocking(move || FsStore::open_with(&opening, options))
                            .await
                            .map_err(|e| Error::internal_from(format!("{path}: opening"), e))?;
                    Arc::new(opened.map_err(|e| {
                        Error::internal_from(format!("{path}: opening {}", dir.display()), e)
                    })?)
                }
                StoreConfig::S3(c) => {
                    let mut s3 = S3Store::connect(c, role == Role::Cas)
                        .await
                        .map_err(|e| Error::Unavailable(format!("{path}: {e}")))?;
                    s3.count_renewals(self.metrics.calls_counter(&path, "s3", "refresh"));
                    Arc::new(s3)
                }
                StoreConfig::MemoryCache(c) => {
                    let inner = self.node(&c.inner, format!("{path}.inner"), role).await?;
                    Arc::new(MemoryCache::new(inner, c.max_size.0, c.max_blob_size.0))
                }
                StoreConfig::ExistenceCache(c) => {
                    let inner = self.node(&c.inner, format!("{path}.inner"), role).await?;
                    Arc::new(ExistenceCache::new(inner, c.ttl.0, c.max_entries))
                }
            };
            let metrics = self.metrics.clone();
            let node: Store =
                Arc::new(Instrumented::new(path.clone(), spec.kind(), store, metrics));
            Ok(self.merge_puts(node, spec, role, &path))
        })
    }

    /// The one implicit layer: in a CAS, a remote backend (S3) gets a
    /// [`MergedPuts`] above it, its own node `{path}.merged_puts`, so one
    /// pod uploads a blob once however many clients send it at the same
    /// time. Local backends gain nothing from it.
    fn merge_puts(&self, node: Store, spec: &StoreConfig, role: Role, path: &str) -> Store {
        if role != Role::Cas || !matches!(spec, StoreConfig::S3(_)) {
            return node;
        }
        let merged = Arc::new(MergedPuts::new(node));
        Arc::new(Instrumented::new(
            format!("{path}.merged_puts"),
            "merged_puts",
            merged,
            self.metrics.clone(),
        ))
    }

    async fn named(&mut self, name: &str, role: Role) -> Result<Store> {
        // A node behaves by its role (S3 refuses overwrites in a CAS, fs
        // checks lengths), so one named store cannot serve both.
        if let Some((built_as, store)) = self.named.get(name) {
            if *built_as != role {
                return Err(Error::InvalidArgument(format!(
                    "store {name:?} is used both as a CAS and as an action cache; give each its own store"
                )));
            }
            return Ok(store.clone());
        }
        let spec = self
            .config
            .stores
            .get(name)
            .ok_or_else(|| Error::internal(format!("unknown store {name:?}")))?
            .clone();
        let store = self.node(&spec, name.to_string(), role).await?;
        self.named.insert(name.to_string(), (role, store.clone()));
        Ok(store)
    }
}
