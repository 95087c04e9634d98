//! [`JobStore`] in process memory: for tests and single-process setups that
//! accept losing the queue on restart (`execution.database: memory`).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::job::{Job, JobFilter, Offers, Stage};
use super::store::JobStore;
use crate::error::Result;

/// Jobs in a map; one lock makes every step atomic.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, Job>,
    /// merge_key → id of the unfinished job holding it.
    merging: HashMap<String, String>,
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn insert(&self, job: Job) -> Result<(Job, bool)> {
        let mut s = self.state();
        if let Some(key) = &job.merge_key {
            if let Some(existing) = s.merging.get(key).and_then(|id| s.jobs.get(id)) {
                return Ok((existing.clone(), true));
            }
            s.merging.insert(key.clone(), job.id.clone());
        }
        s.jobs.insert(job.id.clone(), job.clone());
        Ok((job, false))
    }

    async fn get(&self, id: &str) -> Result<Option<Job>> {
        Ok(self.state().jobs.get(id).cloned())
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let s = self.state();
        let mut jobs: Vec<Job> = s
            .jobs
            .values()
            .filter(|j| filter.matches(j))
            .cloned()
            .collect();
        jobs.sort_by(|a, b| b.queued_at.cmp(&a.queued_at).then(b.id.cmp(&a.id)));
        Ok(jobs
            .into_iter()
            .skip(filter.offset as usize)
            .take(filter.limit as usize)
            .collect())
    }

    async fn claim(
        &self,
        instance: &str,
        bot: &str,
        offers: &Offers,
        now: i64,
        lease_expires: i64,
    ) -> Result<Option<Job>> {
        let mut s = self.state();
        let best = s
            .jobs
            .values()
            .filter(|j| {
                j.stage == Stage::Queued
                    && j.instance == instance
                    && j.platform.satisfied_by(offers)
            })
            .min_by_key(|j| (j.priority, j.ready_at))
            .map(|j| j.id.clone());
        Ok(best.and_then(|id| {
            let job = s.jobs.get_mut(&id)?;
            job.stage = Stage::Executing;
            job.bot = Some(bot.to_string());
            job.lease_expires = lease_expires;
            job.started_at = now;
            job.attempts += 1;
            job.version += 1;
            Some(job.clone())
        }))
    }

    async fn renew(&self, bot: &str, renew_before: i64, lease_expires: i64) -> Result<()> {
        for job in self.state().jobs.values_mut() {
            if job.stage == Stage::Executing
                && job.bot.as_deref() == Some(bot)
                && job.lease_expires < renew_before
            {
                job.lease_expires = lease_expires;
            }
        }
        Ok(())
    }

    async fn held(&self, bot: &str) -> Result<Vec<String>> {
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|j| j.stage == Stage::Executing && j.bot.as_deref() == Some(bot))
            .map(|j| j.id.clone())
            .collect())
    }

    async fn finish(
        &self,
        id: &str,
        holder: Option<&str>,
        response: Bytes,
        cancelled: bool,
        now: i64,
    ) -> Result<Option<Job>> {
        let mut s = self.state();
        let Some(job) = s.jobs.get_mut(id) else {
            return Ok(None);
        };
        if job.stage == Stage::Completed || holder.is_some_and(|h| job.bot.as_deref() != Some(h)) {
            return Ok(None);
        }
        job.stage = Stage::Completed;
        job.response = Some(response);
        job.cancelled = cancelled;
        job.completed_at = now;
        job.version += 1;
        let done = job.clone();
        if let Some(key) = job.merge_key.take() {
            s.merging.remove(&key);
        }
        Ok(Some(done))
    }

    async fn requeue(&self, id: &str, bot: &str, now: i64, refund: bool) -> Result<Option<Job>> {
        let mut s = self.state();
        let Some(job) = s.jobs.get_mut(id) else {
            return Ok(None);
        };
        if job.stage != Stage::Executing || job.bot.as_deref() != Some(bot) {
            return Ok(None);
        }
        job.stage = Stage::Queued;
        job.bot = None;
        job.ready_at = now;
        if refund {
            job.attempts = job.attempts.saturating_sub(1);
        }
        job.version += 1;
        Ok(Some(job.clone()))
    }

    async fn expired_leases(&self, now: i64) -> Result<Vec<Job>> {
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|j| j.stage == Stage::Executing && j.lease_expires < now)
            .cloned()
            .collect())
    }

    async fn stale_queued(&self, before: i64) -> Result<Vec<Job>> {
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|j| j.stage == Stage::Queued && j.ready_at < before)
            .cloned()
            .collect())
    }

    async fn demand(&self) -> Result<Vec<crate::execution::job::Demand>> {
        let mut by: std::collections::BTreeMap<String, crate::execution::job::Demand> =
            std::collections::BTreeMap::new();
        for job in self.state().jobs.values() {
            if job.stage == Stage::Completed {
                continue;
            }
            let key = job.platform.encode();
            let d = by
                .entry(key.clone())
                .or_insert(crate::execution::job::Demand {
                    platform: key,
                    queued: 0,
                    executing: 0,
                    oldest_queued_at: 0,
                });
            if job.stage == Stage::Queued {
                d.queued += 1;
                if d.oldest_queued_at == 0 || job.queued_at < d.oldest_queued_at {
                    d.oldest_queued_at = job.queued_at;
                }
            } else {
                d.executing += 1;
            }
        }
        Ok(by.into_values().collect())
    }

    async fn purge(&self, before: i64) -> Result<u64> {
        let mut s = self.state();
        let n = s.jobs.len();
        s.jobs
            .retain(|_, j| !(j.stage == Stage::Completed && j.completed_at < before));
        Ok((n - s.jobs.len()) as u64)
    }
}
