//! The scheduler's data-store seam (BuildGrid's "data store interface"): the
//! few atomic steps a job goes through. Every step that two pods might race
//! on is conditional, so whichever pod wins, a job is run, finished or
//! re-queued exactly once. [`super::memory`] serves one process;
//! [`super::sql`] many pods and restarts.

use async_trait::async_trait;
use bytes::Bytes;

use super::job::{Job, JobFilter, Offers};
use crate::error::Result;

/// Durable job state.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Stores a new queued job; when an unfinished job already has its
    /// `merge_key`, stores nothing and returns that job with `true`.
    async fn insert(&self, job: Job) -> Result<(Job, bool)>;

    /// One job by id.
    async fn get(&self, id: &str) -> Result<Option<Job>>;

    /// Jobs matching `filter`, newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// Gives `bot` the most urgent queued job of `instance` whose platform
    /// `offers` satisfy (lowest priority value, then longest waiting): it
    /// becomes EXECUTING with a lease until `lease_expires`.
    async fn claim(
        &self,
        instance: &str,
        bot: &str,
        offers: &Offers,
        now: i64,
        lease_expires: i64,
    ) -> Result<Option<Job>>;

    /// Extends every lease `bot` holds that runs out before `renew_before`
    /// to `lease_expires` (so a busy bot writes only now and then).
    async fn renew(&self, bot: &str, renew_before: i64, lease_expires: i64) -> Result<()>;

    /// Finishes an unfinished job with `response`; with `holder`, only while
    /// that bot holds it. Returns the finished job, or None when the
    /// condition did not hold (already finished, or taken away).
    async fn finish(
        &self,
        id: &str,
        holder: Option<&str>,
        response: Bytes,
        cancelled: bool,
        now: i64,
    ) -> Result<Option<Job>>;

    /// Puts a job `bot` holds back in the queue, counting the attempt.
    async fn requeue(&self, id: &str, bot: &str, now: i64) -> Result<Option<Job>>;

    /// Executing jobs whose lease ran out before `now`.
    async fn expired_leases(&self, now: i64) -> Result<Vec<Job>>;

    /// Queued jobs that became ready before `before`.
    async fn stale_queued(&self, before: i64) -> Result<Vec<Job>>;

    /// How many jobs wait for a worker.
    async fn queued_count(&self) -> Result<u64>;

    /// Deletes jobs finished before `before`; returns how many.
    async fn purge(&self, before: i64) -> Result<u64>;
}
