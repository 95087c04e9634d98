//! The scheduler's housekeeping, which every pod runs (each step is a
//! conditional store call, so pods never double up): jobs whose worker
//! vanished, jobs nobody took, the queue gauge, and purging old jobs.

use std::sync::Arc;
use std::time::Duration;

use super::{Scheduler, failure, millis};
use crate::error::Result;
use crate::time::now_ms;

impl Scheduler {
    /// One pass of housekeeping, which every pod runs (each step is
    /// conditional, so pods never double up): re-queue or fail jobs whose
    /// worker vanished, fail jobs nobody took.
    pub async fn housekeep(&self) -> Result<()> {
        let now = now_ms();
        for job in self.store.expired_leases(now).await? {
            let bot = job.bot.clone().unwrap_or_default();
            if job.attempts >= self.settings.max_attempts {
                let message = format!(
                    "the worker running this action stopped responding (bot {bot}); gave up after {} attempts",
                    job.attempts
                );
                let response = failure(tonic::Code::Unavailable, message);
                if let Some(done) = self
                    .store
                    .finish(&job.id, Some(&bot), response, false, now)
                    .await?
                {
                    self.count("failed");
                    self.changed(&done);
                }
            } else {
                tracing::warn!(job = %job.id, %bot, attempts = job.attempts, "lease expired; re-queueing the job");
                self.give_back(&bot, &job.id, false).await?;
            }
        }
        let before = now - millis(self.settings.queue_timeout);
        for job in self.store.stale_queued(before).await? {
            let message = format!(
                "no worker took this action within {:?}; it needs platform properties {} on instance {:?}",
                self.settings.queue_timeout, job.platform, job.instance
            );
            let response = failure(tonic::Code::FailedPrecondition, message);
            if let Some(done) = self
                .store
                .finish(&job.id, None, response, false, now)
                .await?
            {
                self.count("timed_out");
                self.changed(&done);
            }
        }
        self.refresh_demand().await
    }

    /// Runs [`Scheduler::housekeep`] every second, and purges finished jobs
    /// past `retention` every minute, until the scheduler is dropped.
    pub fn start_housekeeping(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { return };
                if let Err(e) = s.housekeep().await {
                    tracing::warn!(error = %e, "scheduler housekeeping failed");
                }
                // Finished jobs are purged once a minute.
                if n % 60 == 0
                    && let Err(e) = s.store.purge(now_ms() - millis(s.settings.retention)).await
                {
                    tracing::warn!(error = %e, "purging finished jobs failed");
                }
            }
        });
        self.adopt(task);
    }
}
