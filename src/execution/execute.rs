//! Execute's decision, apart from gRPC: serve a cached result, or check the
//! action's inputs and queue it (joining an identical job in flight). The
//! Execution service only translates a request into [`Request`] and the
//! [`Started`] back into an operation stream.

use crate::action_result::{self, Inline};
use crate::digest::Digest;
use crate::error::Result;
use crate::instance::Instance;
use crate::proto::reapi::ActionResult;

use super::inputs;
use super::job::Job;
use super::scheduler::Scheduler;

/// What Execute was asked to do.
#[derive(Debug)]
pub struct Request<'a> {
    /// The action.
    pub action: Digest,
    /// Run it even if a result is cached.
    pub skip_cache_lookup: bool,
    /// Lower runs sooner.
    pub priority: i32,
    /// What to inline into a cached result.
    pub inline: Inline<'a>,
    /// The client's W3C `traceparent`, for the worker's span.
    pub traceparent: String,
    /// The client's invocation (RequestMetadata), or empty.
    pub invocation_id: String,
    /// The target and mnemonic the client names (RequestMetadata), or empty.
    pub target: String,
    pub mnemonic: String,
}

/// How an Execute began.
#[derive(Debug)]
pub enum Started {
    /// A complete cached result, with the requested outputs inlined.
    Cached(Box<ActionResult>),
    /// The job that will run it (new, or an identical one in flight).
    Queued(Box<Job>),
}

/// Serves `request` on `instance`: the cache first (unless skipped), then
/// the input check (FAILED_PRECONDITION with MISSING violations) and the
/// scheduler.
pub async fn execute(
    instance: &Instance,
    scheduler: &Scheduler,
    request: Request<'_>,
) -> Result<Started> {
    let digest = request.action;
    if !request.skip_cache_lookup
        && let Some(mut result) = action_result::lookup(instance, &digest).await?
    {
        action_result::inline(
            instance.cas.as_ref(),
            digest.function,
            &mut result,
            request.inline,
        )
        .await?;
        return Ok(Started::Cached(Box::new(result)));
    }
    let checked = inputs::check(instance, digest).await?;
    let job = scheduler
        .submit(
            &instance.name,
            digest,
            checked.action,
            &checked.command,
            request.priority,
            super::scheduler::Submitter {
                traceparent: request.traceparent,
                invocation_id: request.invocation_id,
                target: request.target,
                mnemonic: request.mnemonic,
            },
        )
        .await?;
    Ok(Started::Queued(Box::new(job)))
}
