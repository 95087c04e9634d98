//! The worker side of the scheduler: handing out leases, keeping them
//! alive, taking them back, and finishing jobs with what workers report.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::{Outcome, Scheduler, millis};
use crate::digest::Digest;
use crate::error::{Result, ok_rpc_status};
use crate::execution::job::{Job, Offers, Stage};
use crate::proto::reapi::{ActionResult, ExecuteResponse};
use crate::time::now_ms;

/// The parts of a leased job that completing it needs.
#[derive(Debug, Clone)]
pub(super) struct Leased {
    instance: String,
    digest: Digest,
    do_not_cache: bool,
    /// The bot session the lease went to.
    bot: String,
}

impl Leased {
    fn of(job: &Job, bot: &str) -> Self {
        Leased {
            instance: job.instance.clone(),
            digest: job.action_digest,
            do_not_cache: job.do_not_cache,
            bot: bot.to_string(),
        }
    }
}

impl Scheduler {
    /// Waits up to `wait` for a job `offers` can run and leases it to `bot`.
    pub async fn take(
        &self,
        instance: &str,
        bot: &str,
        offers: &Offers,
        wait: Duration,
    ) -> Result<Option<Job>> {
        let deadline = tokio::time::Instant::now() + wait;
        let taker = self.idle.taker(instance, offers);
        loop {
            // In line before the claim: a job queued after a failed claim
            // still wakes this taker (its permit is kept).
            taker.wait_in_line();
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let now = now_ms();
            let lease = now + millis(self.settings.lease_timeout);
            if let Some(job) = self.store.claim(instance, bot, offers, now, lease).await? {
                self.metrics
                    .queue_wait
                    .observe((now - job.ready_at).max(0) as f64 / 1000.0);
                self.leased.insert(job.id.clone(), Leased::of(&job, bot));
                self.changed(&job);
                return Ok(Some(job));
            }
            tokio::select! {
                _ = taker.woken() => {}
                _ = tokio::time::sleep(self.poll_every()) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// True while `bot` holds the unfinished job `id` (else its worker must
    /// stop: the job was cancelled, or re-queued after its lease ran out).
    pub async fn holds(&self, bot: &str, id: &str) -> Result<bool> {
        Ok(self
            .store
            .get(id)
            .await?
            .is_some_and(|j| j.stage == Stage::Executing && j.bot.as_deref() == Some(bot)))
    }

    /// Waits up to `limit` for the job `id` to stop being `bot`'s
    /// (cancelled, finished or re-queued); true when it did. Lets a bot's
    /// renewal be held open so that it hears of a cancellation at once.
    pub async fn until_released(&self, bot: &str, id: &str, limit: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let job = self.wait(id, seen, left).await?;
            if job.stage != Stage::Executing || job.bot.as_deref() != Some(bot) {
                return Ok(true);
            }
            if job.version <= seen || left.is_zero() {
                return Ok(false);
            }
            seen = job.version;
        }
    }

    /// Keeps `bot`'s leases alive; called on every update it sends.
    pub async fn renew(&self, bot: &str) -> Result<()> {
        let now = now_ms();
        let lease = millis(self.settings.lease_timeout);
        self.store.renew(bot, now + lease / 2, now + lease).await
    }

    /// Gives back every job `bot` holds but did not report (`reported`):
    /// the response that handed it out never reached the bot (a pod died
    /// or the connection broke on the way), so nobody runs it, and renewing
    /// the bot's leases would keep it from expiring for ever.
    pub async fn release_unreported(&self, bot: &str, reported: &[&str]) -> Result<()> {
        for id in self.store.held(bot).await? {
            if !reported.contains(&id.as_str()) {
                tracing::warn!(job = %id, bot, "the bot does not report a lease it holds; re-queueing the job");
                self.give_back(bot, &id, true).await?;
            }
        }
        Ok(())
    }

    /// A lease comes back unfinished: another worker gets the job. `refund`
    /// when the bot gave it back (the attempt was not the job's failure).
    pub async fn give_back(&self, bot: &str, id: &str, refund: bool) -> Result<()> {
        if let Some(job) = self.store.requeue(id, bot, now_ms(), refund).await? {
            self.count("requeued");
            self.changed(&job);
            self.idle.wake_for(&job);
        }
        Ok(())
    }

    /// The lease `id` as `bot` holds it, from this pod's record when it
    /// names this bot, else from the store; None when the bot does not hold
    /// it (the finish re-checks the holder in the store either way).
    async fn held_by(&self, bot: &str, id: &str) -> Result<Option<Leased>> {
        if let Some(leased) = self.leased.get(id)
            && leased.bot == bot
        {
            return Ok(Some(leased));
        }
        Ok(match self.store.get(id).await? {
            Some(job) if job.stage == Stage::Executing && job.bot.as_deref() == Some(bot) => {
                Some(Leased::of(&job, bot))
            }
            _ => None,
        })
    }

    /// Finishes the job `bot` ran on `instance` (the instance its session
    /// was authorised on): stores a successful cacheable result in the
    /// action cache, then wakes the job's watchers (so a watcher told "done"
    /// by this pod finds the result cached). A report for a job the bot does
    /// not hold, or of another instance, is dropped without touching the
    /// action cache.
    pub async fn complete(
        &self,
        bot: &str,
        instance: &str,
        id: &str,
        outcome: Outcome,
    ) -> Result<()> {
        let drop_report = || {
            tracing::info!(
                job = id,
                bot,
                "dropping a result for a job the bot does not hold"
            );
            Ok(())
        };
        let Some(job) = self.held_by(bot, id).await? else {
            return drop_report();
        };
        if job.instance != instance {
            tracing::warn!(
                job = id,
                bot,
                job_instance = %job.instance,
                session_instance = instance,
                "refusing a result reported through another instance's bot session"
            );
            return Err(crate::error::Error::PermissionDenied(format!(
                "lease {id} is not a job of instance {instance:?}"
            )));
        }
        let usage = outcome
            .result
            .as_ref()
            .and_then(crate::execution::usage::of);
        let settled = settle(&job, outcome)?;
        let now = now_ms();
        // The conditional finish checks in the database that this bot holds
        // the lease; only then may its result reach the action cache.
        let Some(done) = self
            .store
            .finish(id, Some(bot), settled.response, false, now)
            .await?
        else {
            return drop_report();
        };
        if let Some(result) = settled.cache {
            let instance = self.instances.get(&job.instance)?;
            let writer = crate::insights::Writer {
                invocation: done.invocation_id.as_str().into(),
                target: done.target.as_str().into(),
                mnemonic: done.mnemonic.as_str().into(),
            };
            if let Err(e) =
                crate::action_result::store(&instance, &job.digest, &result, writer).await
            {
                tracing::warn!(action = %job.digest, error = %e, "could not cache an action result");
            }
        }
        self.leased.invalidate(id);
        self.metrics
            .run
            .observe((now - done.started_at).max(0) as f64 / 1000.0);
        self.count(if settled.ok { "completed" } else { "failed" });
        if let Some(u) = &usage {
            self.metrics.usage.observe(u);
        }
        self.changed(&done);
        Ok(())
    }
}

/// What a worker's report makes of a job.
struct Settled {
    /// The ExecuteResponse to store, encoded.
    response: Bytes,
    /// The ActionResult to cache, when it may be.
    cache: Option<ActionResult>,
    /// Whether the action ran to completion.
    ok: bool,
}

/// Checks a worker's report and turns it into the job's response and,
/// for a successful cacheable action, the result to cache.
fn settle(job: &Leased, outcome: Outcome) -> Result<Settled> {
    let ok = outcome.status.code == 0;
    let mut cache = None;
    if let Some(result) = &outcome.result {
        crate::action_result::validate(job.digest.function, result)?;
        if ok && result.exit_code == 0 && !job.do_not_cache {
            cache = Some(result.clone());
        }
    }
    let message = if ok {
        String::new()
    } else {
        outcome.status.message.clone()
    };
    let response = ExecuteResponse {
        result: outcome.result,
        cached_result: false,
        status: Some(if ok { ok_rpc_status() } else { outcome.status }),
        message,
        ..Default::default()
    };
    Ok(Settled {
        response: Bytes::from(response.encode_to_vec()),
        cache,
        ok,
    })
}
