//! The Remote Workers API Bots service: how `kiln worker` (and any bot that
//! speaks BuildGrid's protocol) takes work. A bot creates a session, then
//! keeps updating it: each update reports its leases (accepted, finished,
//! given up), renews them, and, when the bot is idle, waits up to
//! `execution.bot_wait` for a new lease. Sessions are not stored: a lease is
//! the job row naming the session, so any pod can serve any update.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::execution::job::Offers;
use crate::execution::scheduler::{Outcome, Scheduler};
use crate::instance::Instances;
use crate::proto::reapi::{ActionResult, ExecuteResponse};
use crate::proto::remoteworkers::{
    BotSession, BotStatus, CreateBotSessionRequest, Lease, LeaseState, PostBotEventTempRequest,
    UpdateBotSessionRequest, Worker, bots_server::Bots, worker,
};
use crate::service::caller;

const ACTION_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Action";

/// The Bots service.
#[derive(Debug, Clone)]
pub struct BotsService {
    instances: Instances,
    scheduler: Arc<Scheduler>,
}

impl BotsService {
    /// Hands `scheduler`'s jobs to bots of `instances`.
    pub fn new(instances: Instances, scheduler: Arc<Scheduler>) -> Self {
        BotsService {
            instances,
            scheduler,
        }
    }
}

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

/// The instance a bot session name (`INSTANCE/botSessions/ID`) belongs to.
fn session_instance(name: &str) -> Result<&str> {
    match name.rsplit_once("botSessions/") {
        Some((prefix, id)) if !id.is_empty() && (prefix.is_empty() || prefix.ends_with('/')) => {
            Ok(prefix.trim_end_matches('/'))
        }
        _ => Err(Error::InvalidArgument(format!(
            "{name:?} is not a bot session name (INSTANCE/botSessions/ID)"
        ))),
    }
}

impl BotsService {
    /// Processes the leases a bot reports and, if it is idle and healthy,
    /// waits up to `wait` for a new one.
    async fn update(
        &self,
        instance: &str,
        mut session: BotSession,
        wait: Duration,
    ) -> Result<Response<BotSession>> {
        let bot = session.name.clone();
        let mut kept = Vec::new();
        for mut lease in std::mem::take(&mut session.leases) {
            match LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified) {
                LeaseState::Completed => {
                    self.scheduler
                        .complete(&bot, instance, &lease.id, outcome(&lease)?)
                        .await?
                }
                LeaseState::Cancelled => self.scheduler.give_back(&bot, &lease.id).await?,
                LeaseState::Pending | LeaseState::Active => {
                    if !self.scheduler.holds(&bot, &lease.id).await? {
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
        self.scheduler.renew(&bot).await?;
        let busy = kept.iter().any(|l| l.state != LeaseState::Cancelled as i32);
        let healthy = matches!(
            BotStatus::try_from(session.status).unwrap_or(BotStatus::Unspecified),
            BotStatus::Ok | BotStatus::Unspecified
        );
        let mut trace = String::new();
        if !busy && healthy {
            let offered = offers(session.worker.as_ref());
            if let Some(job) = self.scheduler.take(instance, &bot, &offered, wait).await? {
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
        }
        session.leases = kept;
        session.expire_time = Some(prost_types::Timestamp::from(
            SystemTime::now() + self.scheduler.settings().lease_timeout,
        ));
        let mut response = Response::new(session);
        if let Ok(value) = MetadataValue::try_from(trace.as_str())
            && !trace.is_empty()
        {
            response.metadata_mut().insert("traceparent", value);
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl Bots for BotsService {
    async fn create_bot_session(
        &self,
        request: Request<CreateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        self.instances
            .get(&req.parent)?
            .authorize(&who, Role::Worker)?;
        let mut session = req
            .bot_session
            .ok_or_else(|| Error::InvalidArgument("bot_session is missing".into()))?;
        if session.bot_id.is_empty() {
            return Err(Error::InvalidArgument("bot_session.bot_id must be set".into()).into());
        }
        let id = uuid::Uuid::new_v4();
        session.name = if req.parent.is_empty() {
            format!("botSessions/{id}")
        } else {
            format!("{}/botSessions/{id}", req.parent)
        };
        tracing::info!(bot_id = %session.bot_id, session = %session.name, "bot session created");
        Ok(self.update(&req.parent, session, Duration::ZERO).await?)
    }

    async fn update_bot_session(
        &self,
        request: Request<UpdateBotSessionRequest>,
    ) -> Result<Response<BotSession>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let instance = session_instance(&req.name)?;
        self.instances
            .get(instance)?
            .authorize(&who, Role::Worker)?;
        let mut session = req
            .bot_session
            .ok_or_else(|| Error::InvalidArgument("bot_session is missing".into()))?;
        session.name = req.name.clone();
        let wait = self.scheduler.settings().bot_wait;
        Ok(self.update(instance, session, wait).await?)
    }

    async fn post_bot_event_temp(
        &self,
        request: Request<PostBotEventTempRequest>,
    ) -> Result<Response<()>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let instance = session_instance(&req.name)?;
        self.instances
            .get(instance)?
            .authorize(&who, Role::Worker)?;
        // A bot's words go to the log: keep one event to a line's worth.
        let msg: String = req.msg.chars().take(1024).collect();
        tracing::info!(session = %req.name, kind = req.r#type, message = %msg, "bot event");
        Ok(Response::new(()))
    }
}
