//! ActionCache: GetActionResult (with the completeness check and inlining) and
//! UpdateActionResult (refused on read-only instances, never faked).

use tonic::{Request, Response, Status};

use crate::action_result::{self, Inline};
use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::insights::scorecard::{self, Seen};
use crate::instance::Instances;
use crate::proto::reapi::{
    ActionResult, GetActionResultRequest, UpdateActionResultRequest,
    action_cache_server::ActionCache,
};
use crate::service::caller;

/// The ActionCache service.
#[derive(Debug, Clone)]
pub struct ActionCacheService {
    instances: Instances,
}

impl ActionCacheService {
    /// Serves the action caches of `instances`.
    pub fn new(instances: Instances) -> Self {
        ActionCacheService { instances }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_proto(function, req.action_digest.as_ref(), "action")?;
        let Some(mut result) = action_result::lookup(&instance, &action).await? else {
            instance.note(&writer, Seen::Miss(scorecard::key(&action)));
            return Err(Error::NotFound(format!("no action result for {action}")).into());
        };
        instance.note(&writer, Seen::Hit(&result));
        let want = Inline {
            stdout: req.inline_stdout,
            stderr: req.inline_stderr,
            files: &req.inline_output_files,
        };
        action_result::inline(instance.cas.as_ref(), function, &mut result, want).await?;
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::AcWrite)?;
        instance.check_writable()?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_proto(function, req.action_digest.as_ref(), "action")?;
        let result = req
            .action_result
            .ok_or_else(|| Error::InvalidArgument("action_result is missing".into()))?;
        // Malformed digests inside the result would only fail later, on read.
        action_result::validate(function, &result)?;
        action_result::store(&instance, &action, &result, writer).await?;
        Ok(Response::new(result))
    }
}
