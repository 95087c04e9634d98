//! Nondeterminism found sooner: one in N cache hits
//! (`insights.reexecute_one_in`) has its action run again on a worker, at
//! the lowest priority and with its result not cached, so it runs when
//! workers have nothing better to do. If the fresh outputs differ from the
//! cached result's, the action is recorded as not deterministic exactly as
//! a differing write would be, naming [`INVOCATION`] as the later writer.
//!
//! Domain code: the scheduler runs the action ([`Rerun`]); what this
//! module knows is when to ask and what to make of the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::digest::Digest;
use crate::proto::reapi::ActionResult;

/// The invocation a re-execution's job and its findings are filed under.
pub const INVOCATION: &str = "kiln-reexecution";

/// Runs an action again and returns its fresh result (None when it could
/// not: its inputs are gone, it failed, or the server is stopping).
pub trait Rerun: Send + Sync {
    /// Runs `action` of `instance` once more, its result not cached.
    fn rerun(
        self: Arc<Self>,
        instance: String,
        action: Digest,
    ) -> futures::future::BoxFuture<'static, Option<ActionResult>>;
}

/// Which hits are sampled and how many re-executions run at once.
pub(super) struct Sampler {
    one_in: u64,
    max_running: u64,
    hits: AtomicU64,
    running: Arc<AtomicU64>,
    rerun: OnceLock<Weak<dyn Rerun>>,
    /// Re-executions by instance and outcome (`same`, `different`,
    /// `failed`, `not_run`, `busy`).
    counted: Family<Vec<(&'static str, String)>, Counter>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("one_in", &self.one_in)
            .field("max_running", &self.max_running)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    pub(super) fn new(
        config: &crate::config::InsightsConfig,
        metrics: &crate::metrics::Metrics,
    ) -> Sampler {
        let counted = Family::default();
        metrics.register(
            "reexecutions",
            "Cache hits whose action was run again to check it is deterministic, by instance and outcome (same, different, failed: the run did not succeed, not_run: its inputs were gone or the server stopped, busy: too many already running)",
            counted.clone(),
        );
        Sampler {
            one_in: u64::from(config.reexecute_one_in),
            max_running: u64::from(config.reexecute_max_running.max(1)),
            hits: AtomicU64::new(0),
            running: Arc::new(AtomicU64::new(0)),
            rerun: OnceLock::new(),
            counted,
        }
    }

    /// Who runs actions again (the scheduler, once it exists).
    pub(super) fn set(&self, rerun: Weak<dyn Rerun>) {
        let _ = self.rerun.set(rerun);
    }

    fn count(&self, instance: &str, outcome: &str) {
        self.counted
            .get_or_create(&vec![
                ("instance", instance.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Called on every cache hit: for one in N successful results, with a
    /// slot free, starts running the action again and returns it (the
    /// caller finishes it in the background); None for every other hit,
    /// which then costs a counter increment.
    pub(super) fn sample(
        self: &Arc<Self>,
        instance: &str,
        action: Digest,
        cached: &ActionResult,
    ) -> Option<Sampled> {
        if self.one_in == 0
            || cached.exit_code != 0
            || !self
                .hits
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.one_in)
        {
            return None;
        }
        let rerun = self.rerun.get().and_then(Weak::upgrade)?;
        let taken = self
            .running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_running).then_some(n + 1)
            });
        if taken.is_err() {
            self.count(instance, "busy");
            return None;
        }
        Some(Sampled {
            sampler: self.clone(),
            instance: instance.to_string(),
            cached: cached.clone(),
            fresh: rerun.rerun(instance.to_string(), action),
        })
    }
}

/// A sampled hit whose action is running again; its slot is given back
/// when it is finished or dropped.
pub(super) struct Sampled {
    sampler: Arc<Sampler>,
    instance: String,
    cached: ActionResult,
    fresh: futures::future::BoxFuture<'static, Option<ActionResult>>,
}

impl Sampled {
    /// Waits for the fresh result, hands it with the cached one to
    /// `compare` (which records a difference and says whether there was
    /// one), and counts the outcome.
    pub(super) async fn finish(
        mut self,
        compare: impl AsyncFnOnce(&ActionResult, &ActionResult) -> bool,
    ) {
        let outcome = match (&mut self.fresh).await {
            None => "not_run",
            Some(fresh) if fresh.exit_code != 0 => "failed",
            Some(fresh) if compare(&self.cached, &fresh).await => "different",
            Some(_) => "same",
        };
        self.sampler.count(&self.instance, outcome);
    }
}

impl Drop for Sampled {
    fn drop(&mut self) {
        self.sampler.running.fetch_sub(1, Ordering::SeqCst);
    }
}
