//! Config → store graph: the one place that matches over store kinds.
//!
//! Named stores are built once and shared as `Arc`s wherever `ref:` names
//! them; every node is wrapped in [`Instrumented`] here, so stores never
//! instrument themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Store;
use super::content_addressed::ContentAddressed;
use super::fs::FsStore;
use super::instrumented::Instrumented;
use super::memory::MemoryStore;
use super::memory_cache::MemoryCache;
use crate::config::{Config, StoreConfig};
use crate::error::{Error, Result};

/// Builds store nodes from a validated config.
pub struct StoreBuilder<'a> {
    config: &'a Config,
    data_dir: PathBuf,
    read_chunk: usize,
    named: HashMap<String, Store>,
}

impl<'a> StoreBuilder<'a> {
    /// A builder resolving relative fs paths against `data_dir`.
    pub fn new(config: &'a Config, data_dir: PathBuf) -> Self {
        StoreBuilder {
            config,
            data_dir,
            read_chunk: 1 << 20,
            named: HashMap::new(),
        }
    }

    /// A CAS: the configured graph with content verification at its root, so
    /// no write path can store unverified bytes.
    pub fn cas(&mut self, spec: &StoreConfig, path: &str) -> Result<Store> {
        let inner = self.node(spec, path)?;
        Ok(Arc::new(ContentAddressed::new(inner)))
    }

    /// An action cache: the configured graph as is (its values are not
    /// content-addressed).
    pub fn action_cache(&mut self, spec: &StoreConfig, path: &str) -> Result<Store> {
        self.node(spec, path)
    }

    fn node(&mut self, spec: &StoreConfig, path: &str) -> Result<Store> {
        let store: Store = match spec {
            StoreConfig::Ref(name) => return self.named(name),
            StoreConfig::Memory(m) => Arc::new(MemoryStore::new(m.max_size.0)),
            StoreConfig::Fs(f) => {
                let dir = self.data_dir.join(&f.path);
                Arc::new(FsStore::open(&dir, self.read_chunk).map_err(|e| {
                    Error::Internal(format!("{path}: opening {}: {e}", dir.display()))
                })?)
            }
            StoreConfig::MemoryCache(c) => {
                let inner = self.node(&c.inner, &format!("{path}.inner"))?;
                Arc::new(MemoryCache::new(inner, c.max_size.0, c.max_blob_size.0))
            }
        };
        Ok(Arc::new(Instrumented::new(path, spec.kind(), store)))
    }

    fn named(&mut self, name: &str) -> Result<Store> {
        if let Some(store) = self.named.get(name) {
            return Ok(store.clone());
        }
        let spec = self
            .config
            .stores
            .get(name)
            .ok_or_else(|| Error::Internal(format!("unknown store {name:?}")))?
            .clone();
        let store = self.node(&spec, name)?;
        self.named.insert(name.to_string(), store.clone());
        Ok(store)
    }
}
