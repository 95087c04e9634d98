//! Small stores for unit tests, shared so each layer's tests need no fake
//! of their own: [`Counting`] counts what reaches the inner store, and
//! [`Gated`] holds every call at a gate the test opens, so a test can line
//! up concurrent callers by observation instead of by sleeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::memory::MemoryStore;
use super::{BlobStore, Body, Range};
use crate::digest::{Digest, HashKey};
use crate::error::{Error, Result};

/// A memory store that counts calls (and digests asked) on their way in.
#[derive(Debug)]
pub(crate) struct Counting {
    inner: MemoryStore,
    /// Digests asked of `find_missing`, summed over calls.
    pub asked: AtomicUsize,
    /// Calls of `get`.
    pub gets: AtomicUsize,
    /// Calls of `put`.
    pub puts: AtomicUsize,
}

impl Counting {
    pub(crate) fn new() -> Self {
        Counting {
            inner: MemoryStore::new(64 << 20),
            asked: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
        }
    }

    pub(crate) fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    pub(crate) fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    pub(crate) fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl BlobStore for Counting {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.asked.fetch_add(digests.len(), Ordering::SeqCst);
        self.inner.find_missing(digests).await
    }
    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        self.inner.resolve(key).await
    }
    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(digest, range).await
    }
    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(digest, body).await
    }
}

/// A [`Counting`] store whose `get` and `put` wait at a gate until the test
/// calls [`Gated::open`]; optionally the first put then fails.
#[derive(Debug)]
pub(crate) struct Gated {
    /// What the calls reach once through the gate.
    pub inner: Counting,
    gate: Semaphore,
    entered: AtomicUsize,
    fail_first_put: bool,
}

impl Gated {
    pub(crate) fn new(fail_first_put: bool) -> Self {
        Gated {
            inner: Counting::new(),
            gate: Semaphore::new(0),
            entered: AtomicUsize::new(0),
            fail_first_put,
        }
    }

    /// Lets every waiting and later call through.
    pub(crate) fn open(&self) {
        self.gate.add_permits(1);
    }

    /// Waits (yielding, up to a deadline) until `n` calls wait at the gate.
    pub(crate) async fn wait_entered(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.entered.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{n} calls never reached the gate"
            );
            tokio::task::yield_now().await;
        }
    }

    async fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        // One permit, handed from call to call once the gate is open.
        let _permit = self.gate.acquire().await.expect("the gate is never closed");
    }
}

#[async_trait]
impl BlobStore for Gated {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(digests).await
    }
    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        self.inner.resolve(key).await
    }
    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        self.pass().await;
        self.inner.get(digest, range).await
    }
    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        self.pass().await;
        if self.fail_first_put && self.inner.puts() == 0 {
            self.inner.puts.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Unavailable("the first upload broke".into()));
        }
        self.inner.put(digest, body).await
    }
}
