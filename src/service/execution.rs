//! REAPI Execution: Execute and WaitExecution, translated to and from
//! [`crate::execution::execute`] (which decides between a cached result and
//! a queued job) and the scheduler's job watch.

use std::sync::Arc;

use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::action_result::Inline;
use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::ok_rpc_status;
use crate::execution::execute::{self, Started};
use crate::execution::scheduler::Scheduler;
use crate::insights::scorecard::{self, Seen};
use crate::instance::Instances;
use crate::proto::longrunning::Operation;
use crate::proto::reapi::{
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, WaitExecutionRequest,
    execution_server::Execution, execution_stage,
};
use crate::service::caller;
use crate::service::operations::{Inlining, authorized_job, finished, operation_name, watch};

/// The Execution service.
#[derive(Debug, Clone)]
pub struct ExecutionService {
    instances: Instances,
    scheduler: Arc<Scheduler>,
}

impl ExecutionService {
    /// Runs `instances`' actions through `scheduler`.
    pub fn new(instances: Instances, scheduler: Arc<Scheduler>) -> Self {
        ExecutionService {
            instances,
            scheduler,
        }
    }
}

type OperationStream = ReceiverStream<Result<Operation, Status>>;

/// A stream of one finished operation: what a cache hit returns.
fn done_now(operation: Operation) -> OperationStream {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Ok(operation));
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Execute)?;
        instance.check_writable()?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_proto(function, req.action_digest.as_ref(), "action")?;
        let request = execute::Request {
            action: digest,
            skip_cache_lookup: req.skip_cache_lookup,
            priority: req.execution_policy.map(|p| p.priority).unwrap_or(0),
            inline: Inline {
                stdout: req.inline_stdout,
                stderr: req.inline_stderr,
                files: &req.inline_output_files,
            },
            traceparent: crate::edge::trace::current_traceparent(),
            invocation_id: writer.invocation.to_string(),
            target: writer.target.to_string(),
            mnemonic: writer.mnemonic.to_string(),
        };
        let started = execute::execute(&instance, &self.scheduler, request).await?;
        let seen = match &started {
            Started::Cached(result) => Seen::Hit(result),
            Started::Queued(_) => Seen::Executed(scorecard::key(&digest)),
        };
        instance.note(&writer, seen);
        match started {
            Started::Cached(result) => {
                let response = ExecuteResponse {
                    result: Some(*result),
                    cached_result: true,
                    status: Some(ok_rpc_status()),
                    ..Default::default()
                };
                let metadata = ExecuteOperationMetadata {
                    stage: execution_stage::Value::Completed as i32,
                    action_digest: Some(digest.to_proto()),
                    digest_function: function.to_proto() as i32,
                    ..Default::default()
                };
                let name = operation_name(&req.instance_name, &uuid::Uuid::new_v4().to_string());
                let operation = finished(name, metadata, &response.encode_to_vec());
                Ok(Response::new(done_now(operation)))
            }
            Started::Queued(job) => {
                let wanted =
                    req.inline_stdout || req.inline_stderr || !req.inline_output_files.is_empty();
                let inline = wanted.then(|| Inlining {
                    instance,
                    stdout: req.inline_stdout,
                    stderr: req.inline_stderr,
                    files: req.inline_output_files,
                });
                Ok(Response::new(watch(self.scheduler.clone(), *job, inline)))
            }
        }
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let who = caller(&request);
        let job = authorized_job(
            &self.instances,
            &self.scheduler,
            &who,
            &request.get_ref().name,
            Role::Execute,
        )
        .await?;
        Ok(Response::new(watch(self.scheduler.clone(), job, None)))
    }
}
