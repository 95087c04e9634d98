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

/// Processes the leases a bot reports and, if it is idle and healthy,
/// waits up to `wait` for a new one; returns the session to send back and
/// the new lease's `traceparent` (empty without one).
pub async fn update(
    scheduler: &Scheduler,
    instance: &str,
    mut session: BotSession,
    wait: Duration,
) -> Result<(BotSession, String)> {
    let bot = session.name.clone();
    let mut kept = Vec::new();
    for mut lease in std::mem::take(&mut session.leases) {
        match LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified) {
            LeaseState::Completed => {
                scheduler
                    .complete(&bot, instance, &lease.id, outcome(&lease)?)
                    .await?
            }
            LeaseState::Cancelled => scheduler.give_back(&bot, &lease.id).await?,
            LeaseState::Pending | LeaseState::Active => {
                if !scheduler.holds(&bot, &lease.id).await? {
                    // Cancelled, or re-queued after this bot went quiet.
                    lease.state = LeaseState::Cancelled as i32;
                    lease.payload = None;
                }
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
    let reported: Vec<&str> = kept
        .iter()
        .filter(|l| l.state != LeaseState::Cancelled as i32)
        .map(|l| l.id.as_str())
        .collect();
    scheduler.release_unreported(&bot, &reported).await?;
    scheduler.renew(&bot).await?;
    let busy = kept.iter().any(|l| l.state != LeaseState::Cancelled as i32);
    let healthy = matches!(
        BotStatus::try_from(session.status).unwrap_or(BotStatus::Unspecified),
        BotStatus::Ok | BotStatus::Unspecified
    );
    let mut trace = String::new();
    let offered = offers(session.worker.as_ref());
    scheduler.saw_worker(&bot, &session.bot_id, instance, &offered, busy);
    if !busy
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
