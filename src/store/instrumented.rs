//! `Instrumented`: wraps every node of the store graph (the builder does it,
//! stores never do it themselves) so each call gets a tracing span named for
//! the node, with its outcome. Metrics hang off the same wrapper later.

use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::{BlobStore, Body, Range, Store};
use crate::digest::Digest;
use crate::error::Result;

/// A transparent wrapper that records spans for one named node.
#[derive(Debug)]
pub struct Instrumented {
    name: String,
    kind: &'static str,
    inner: Store,
}

impl Instrumented {
    /// Wraps `inner`, a node of kind `kind` (e.g. `fs`) called `name` in config.
    pub fn new(name: impl Into<String>, kind: &'static str, inner: Store) -> Self {
        Instrumented {
            name: name.into(),
            kind,
            inner,
        }
    }
}

fn finish<T>(result: &Result<T>, started: Instant) {
    let micros = started.elapsed().as_micros() as u64;
    match result {
        Ok(_) => tracing::trace!(micros, "ok"),
        Err(e) => tracing::debug!(micros, error = %e, "failed"),
    }
}

#[async_trait]
impl BlobStore for Instrumented {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let span = tracing::debug_span!("store.find_missing", node = %self.name, kind = self.kind, count = digests.len());
        let started = Instant::now();
        let result = self
            .inner
            .find_missing(digests)
            .instrument(span.clone())
            .await;
        span.in_scope(|| finish(&result, started));
        result
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let span = tracing::debug_span!("store.get", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self.inner.get(digest, range).instrument(span.clone()).await;
        span.in_scope(|| finish(&result, started));
        result
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        let span = tracing::debug_span!("store.put", node = %self.name, kind = self.kind, %digest);
        let started = Instant::now();
        let result = self.inner.put(digest, body).instrument(span.clone()).await;
        span.in_scope(|| finish(&result, started));
        result
    }
}
