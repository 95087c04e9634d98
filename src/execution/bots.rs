//! The Remote Workers API's session logic, apart from gRPC: a bot's update
//! reports its leases (accepted, finished, given up), renews them, and, when
//! the bot is idle, waits up to `execution.bot_wait` for a new lease.
//! Sessions are not stored: a lease is the job row naming the session, so
//! any pod can serve any update. The Bots service authorises the call and
//! hands the session here.

use std::time::{Duration, SystemTime};

use prost::Message;

use super::job::Offers;
use super::scheduler::{Outcome, Scheduler};
use crate::error::{Error, Result};
use crate::proto::reapi::{ActionResult, ExecuteResponse};
use crate::proto::remoteworkers::{BotSession, BotStatus, Lease, LeaseState, Worker, worker};

const ACTION_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Action";

/// Everything a worker offers: its own properties and its devices'.
pub fn offers(worker: Option<&Worker>) -> Offers {
    let mut offers = Offers::new();
    if let Some(w) = worker {
        let pairs = w.properties.iter().map(|p| (&p.key, &p.value)).chain(
            w.devices
                .iter()
                .flat_map(|d| d.properties.iter().map(|p| (&p.key, &p.value))),
        );
        for (k, v) in pairs {
            offers.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    offers
}

/// What a finished lease reports: its result (an ActionResult, or an
/// ExecuteResponse carrying one) and its status.
fn outcome(lease: &Lease) -> Result<Outcome> {
    let mut status = lease
        .status
        .clone()
        .unwrap_or_else(crate::error::ok_rpc_status);
    let result = match &lease.result {
        None => None,
        Some(any)
            if any
                .type_url
                .ends_with("/build.bazel.remote.execution.v2.ActionResult") =>
        {
            Some(ActionResult::decode(&any.value[..])?)
        }
        Some(any)
            if any
                .type_url
                .ends_with("/build.bazel.remote.execution.v2.ExecuteResponse") =>
        {
            let response = ExecuteResponse::decode(&any.value[..])?;
            if let Some(s) = response.status.filter(|s| s.code != 0) {
                status = s;
            }
            response.result
        }
        Some(any) => {
            return Err(Error::InvalidArgument(format!(
                "lease {}: result of unexpected type {}",
                lease.id, any.type_url
            )));
        }
    };
    Ok(Outcome { result, status })
}

/// The Worker config by which a bot says its renewals may be held open
/// (see [`update`]): kiln's own worker sends it; other bots, which may not
/// expect a renewal to wait, get a prompt answer as before.
pub const RENEWAL_WAITS: (&str, &str) = ("kiln.renewal", "wait");

/// The worker property by which kiln's worker says how it confines
/// actions (`bwrap`, or `none` when run with `--sandbox none`), shown on
/// /operations so an unconfined worker stands out.
pub const SANDBOX_PROPERTY: &str = "kiln.sandbox";

fn renewal_waits(session: &BotSession) -> bool {
    session.worker.as_ref().is_some_and(|w| {
        w.configs
            .iter()
            .any(|c| c.key == RENEWAL_WAITS.0 && c.value == RENEWAL_WAITS.1)
    })
}

/// Marks `lease` cancelled (and drops its payload) unless `bot` still holds
/// it; true when it was cancelled here.
async fn recheck(scheduler: &Scheduler, bot: &str, lease: &mut Lease) -> Result<bool> {
    if lease.state == LeaseState::Cancelled as i32 || scheduler.holds(bot, &lease.id).await? {
        return Ok(false);
    }
    lease.state = LeaseState::Cancelled as i32;
    lease.payload = None;
    Ok(true)
}

/// Processes the leases a bot reports and answers.
///
/// - A bot that reports a lease it no longer holds (cancelled, or re-queued
///   after it went quiet) is told at once, and this answer hands it nothing
///   new: a worker stopping a cancelled action should not have to take a
///   new lease in the same breath (one it might drop, costing the job an
///   attempt).
/// - A busy bot that asked for it ([`RENEWAL_WAITS`]) has its renewal held
///   up to `wait` (at most a third of the lease timeout) until its lease is
///   cancelled, so a cancellation reaches it in milliseconds, not at its
///   next renewal.
/// - An idle, healthy bot waits up to `wait` for a new lease.
///
/// Returns the session to send back and the new lease's `traceparent`
/// (empty without one).
pub async fn update(
    scheduler: &Scheduler,
    instance: &str,
    mut session: BotSession,
    wait: Duration,
) -> Result<(BotSession, String)> {
    let bot = session.name.clone();
    let mut kept = Vec::new();
    let mut ended = false;
    for mut lease in std::mem::take(&mut session.leases) {
        match LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified) {
            LeaseState::Completed => {
                scheduler
                    .complete(&bot, instance, &lease.id, outcome(&lease)?)
                    .await?
            }
            LeaseState::Cancelled => scheduler.give_back(&bot, &lease.id, true).await?,
            LeaseState::Pending | LeaseState::Active => {
                ended |= recheck(scheduler, &bot, &mut lease).await?;
                kept.push(lease);
            }
            LeaseState::Unspecified => {
                return Err(Error::InvalidArgument(format!(
                    "lease {}: state must be set",
                    lease.id
                )));
            }
        }
    }
    let running = |kept: &[Lease]| -> Vec<String> {
        kept.iter()
            .filter(|l| l.state != LeaseState::Cancelled as i32)
            .map(|l| l.id.clone())
            .collect()
    };
    let reported = running(&kept);
    let reported_refs: Vec<&str> = reported.iter().map(String::as_str).collect();
    scheduler.release_unreported(&bot, &reported_refs).await?;
    scheduler.renew(&bot).await?;
    let healthy = matches!(
        BotStatus::try_from(session.status).unwrap_or(BotStatus::Unspecified),
        BotStatus::Ok | BotStatus::Unspecified
    );
    let offered = offers(session.worker.as_ref());
    scheduler.saw_worker(
        &bot,
        &session.bot_id,
        instance,
        &offered,
        !reported.is_empty(),
    );
    if !ended && healthy && reported.len() == 1 && !wait.is_zero() && renewal_waits(&session) {
        let limit = wait.min(scheduler.settings().lease_timeout / 3);
        if scheduler.until_released(&bot, &reported[0], limit).await? {
            for lease in &mut kept {
                ended |= recheck(scheduler, &bot, lease).await?;
            }
        }
    }
    let busy = !running(&kept).is_empty();
    let mut trace = String::new();
    if !busy
        && !ended
        && healthy
        && let Some(job) = scheduler.take(instance, &bot, &offered, wait).await?
    {
        trace = job.trace.clone();
        kept.push(Lease {
            id: job.id.clone(),
            payload: Some(prost_types::Any {
                type_url: ACTION_URL.into(),
                value: job.action.to_vec(),
            }),
            state: LeaseState::Pending as i32,
            // What the lease needs: the platform it asked for, and
            // the digest function to hash its outputs with.
            requirements: Some(Worker {
                properties: job
                    .platform
                    .0
                    .iter()
                    .map(|(k, v)| worker::Property {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                configs: vec![worker::Config {
                    key: "digest_function".into(),
                    value: job.action_digest.function.name().into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    session.leases = kept;
    session.expire_time = Some(prost_types::Timestamp::from(
        SystemTime::now() + scheduler.settings().lease_timeout,
    ));
    Ok((session, trace))
}
