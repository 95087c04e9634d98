//! The Remote Workers API Bots service: how `kiln worker` (and any bot that
//! speaks BuildGrid's protocol) takes work. It authorises each call (the
//! `worker` role on the session's instance) and hands the session to
//! [`crate::execution::bots`], where leases are reported, renewed and
//! handed out.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::error::{Error, Result};
use crate::execution::bots;
use crate::execution::scheduler::Scheduler;
use crate::instance::Instances;
use crate::proto::remoteworkers::{
    BotSession, CreateBotSessionRequest, PostBotEventTempRequest, UpdateBotSessionRequest,
    bots_server::Bots,
};
use crate::service::caller;

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

/// The session to send back, with the new lease's `traceparent` (so the
/// worker's span joins the client's trace).
fn respond((session, trace): (BotSession, String)) -> Result<Response<BotSession>, Status> {
    let mut response = Response::new(session);
    if let Ok(value) = MetadataValue::try_from(trace.as_str())
        && !trace.is_empty()
    {
        response.metadata_mut().insert("traceparent", value);
    }
    Ok(response)
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
        respond(bots::update(&self.scheduler, &req.parent, session, Duration::ZERO).await?)
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
        respond(bots::update(&self.scheduler, instance, session, wait).await?)
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
