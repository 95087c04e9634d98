//! google.longrunning Operations over the scheduler's jobs (GetOperation,
//! ListOperations with a filter, CancelOperation, WaitOperation), and the
//! one Job → Operation mapping that Execute and WaitExecution share.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::edge::Caller;
use crate::error::{Error, Result};
use crate::execution::job::{Job, JobFilter, Stage};
use crate::execution::scheduler::Scheduler;
use crate::instance::Instances;
use crate::proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest, operation, operations_server,
};
use crate::proto::reapi::ExecuteOperationMetadata;
use crate::service::caller;
use crate::time::now_ms;

const METADATA_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// How long an operation stream may stay silent: an unchanged Operation is
/// re-sent after this, so proxies and clients see the call alive.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(30);

/// Longest WaitOperation without a timeout of its own.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest one WaitOperation blocks, whatever timeout it asks for.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The operation name of job `id`: `INSTANCE/operations/ID`, or
/// `operations/ID` for the default instance.
pub fn operation_name(instance: &str, id: &str) -> String {
    if instance.is_empty() {
        format!("operations/{id}")
    } else {
        format!("{instance}/operations/{id}")
    }
}

/// The instance and job id an operation name holds (a bare id means the
/// default instance), so callers are authorised before anything is looked up.
pub fn parse_name(name: &str) -> Result<(&str, &str)> {
    let (instance, id) = match name.rsplit_once("/operations/") {
        Some((instance, id)) => (instance, id),
        None => ("", name.strip_prefix("operations/").unwrap_or(name)),
    };
    if id.is_empty() || id.contains('/') {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not an operation name (INSTANCE/operations/ID)"
        )));
    }
    Ok((instance, id))
}

/// Looks up the job an operation name names, after authorising `who` as
/// `role` on its instance. A job of another instance is NOT_FOUND.
pub async fn authorized_job(
    instances: &Instances,
    scheduler: &Scheduler,
    who: &Caller,
    name: &str,
    role: Role,
) -> Result<Job> {
    let (instance, id) = parse_name(name)?;
    instances.get(instance)?.authorize(who, role)?;
    let job = scheduler.get(id).await?;
    if job.instance != instance {
        return Err(Error::NotFound(format!("no operation {name}")));
    }
    Ok(job)
}

fn any(type_url: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value,
    }
}

/// An operation with an ExecuteResponse; for jobs and for cache hits.
pub fn finished(name: String, metadata: ExecuteOperationMetadata, response: &[u8]) -> Operation {
    Operation {
        name,
        metadata: Some(any(METADATA_URL, metadata.encode_to_vec())),
        done: true,
        result: Some(operation::Result::Response(any(
            RESPONSE_URL,
            response.to_vec(),
        ))),
    }
}

/// The Operation a job is reported as.
pub fn operation(job: &Job) -> Operation {
    let metadata = ExecuteOperationMetadata {
        stage: job.stage as i32,
        action_digest: Some(job.action_digest.to_proto()),
        digest_function: job.action_digest.function.to_proto() as i32,
        ..Default::default()
    };
    let name = operation_name(&job.instance, &job.id);
    match (&job.response, job.stage) {
        (Some(response), Stage::Completed) => finished(name, metadata, response),
        _ => Operation {
            name,
            metadata: Some(any(METADATA_URL, metadata.encode_to_vec())),
            done: false,
            result: None,
        },
    }
}

/// The stream Execute and WaitExecution return: the job now, then after
/// every change, until it is done or the client goes away.
pub fn watch(
    scheduler: Arc<Scheduler>,
    mut job: Job,
    inline: Option<Inlining>,
) -> ReceiverStream<Result<Operation, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let done = job.stage == Stage::Completed;
            let sent = match (&inline, done) {
                (Some(inline), true) => operation(&inline.applied_to(&job).await),
                _ => operation(&job),
            };
            if tx.send(Ok(sent)).await.is_err() || done {
                return;
            }
            tokio::select! {
                next = scheduler.wait(&job.id, job.version, STREAM_KEEPALIVE) => match next {
                    Ok(next) => job = next,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// What an Execute asked to have inlined into the result it waits for
/// (REAPI's `inline_stdout`, `inline_stderr`, `inline_output_files`).
#[derive(Debug)]
pub struct Inlining {
    /// Where the outputs are.
    pub instance: Arc<crate::instance::Instance>,
    pub stdout: bool,
    pub stderr: bool,
    pub files: Vec<String>,
}

impl Inlining {
    /// `job` with its result's requested outputs inlined, within the
    /// inlining budget; as it is when there is nothing to inline or an
    /// output cannot be read (the client reads it by digest then, which
    /// REAPI allows).
    async fn applied_to(&self, job: &Job) -> Job {
        let Some(mut response) = job
            .response
            .as_ref()
            .and_then(|r| crate::proto::reapi::ExecuteResponse::decode(&r[..]).ok())
        else {
            return job.clone();
        };
        let Some(result) = response.result.as_mut() else {
            return job.clone();
        };
        let want = crate::action_result::Inline {
            stdout: self.stdout,
            stderr: self.stderr,
            files: &self.files,
        };
        let cas = self.instance.cas.as_ref();
        if let Err(e) =
            crate::action_result::inline(cas, job.action_digest.function, result, want).await
        {
            tracing::debug!(job = %job.id, error = %e, "not inlining outputs");
            return job.clone();
        }
        let mut inlined = job.clone();
        inlined.response = Some(bytes::Bytes::from(response.encode_to_vec()));
        inlined
    }
}

/// The Operations service.
#[derive(Debug, Clone)]
pub struct OperationsService {
    instances: Instances,
    scheduler: Arc<Scheduler>,
}

impl OperationsService {
    /// Reports on `scheduler`'s jobs, authorised per job instance.
    pub fn new(instances: Instances, scheduler: Arc<Scheduler>) -> Self {
        OperationsService {
            instances,
            scheduler,
        }
    }

    async fn job(&self, who: &Caller, name: &str, role: Role) -> Result<Job> {
        authorized_job(&self.instances, &self.scheduler, who, name, role).await
    }
}

/// Parses ListOperations' filter: terms joined by spaces or `AND`, each one
/// of `stage=QUEUED|EXECUTING|COMPLETED`, `action_digest=HASH[/SIZE]`,
/// `min_age=DURATION` or `max_age=DURATION` (`30s`, `5m`, `2h`).
pub fn parse_filter(text: &str, filter: &mut JobFilter) -> Result<()> {
    let bad = |term: &str, why: &str| {
        Error::InvalidArgument(format!(
            "filter term {term:?}: {why} (terms: stage=QUEUED|EXECUTING|COMPLETED, action_digest=HASH, min_age=5m, max_age=1h)"
        ))
    };
    let now = now_ms();
    for term in text
        .split_whitespace()
        .filter(|t| !t.eq_ignore_ascii_case("AND"))
    {
        let (key, value) = term
            .split_once('=')
            .ok_or_else(|| bad(term, "expected key=value"))?;
        let age = || -> Result<i64> {
            let d = crate::config::Duration::parse(value).map_err(|e| bad(term, &e))?;
            Ok(now - i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX))
        };
        match key {
            "stage" => {
                filter.stage = Some(Stage::parse(value).ok_or_else(|| bad(term, "unknown stage"))?)
            }
            "action_digest" => {
                let hash = value.split('/').next().unwrap_or(value);
                filter.action_hash = Some(hash.to_ascii_lowercase());
            }
            "min_age" => filter.queued_before = Some(age()?),
            "max_age" => filter.queued_after = Some(age()?),
            _ => return Err(bad(term, "unknown key")),
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl operations_server::Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let instance = req
            .name
            .strip_suffix("operations")
            .map(|s| s.trim_end_matches('/'))
            .unwrap_or(&req.name);
        self.instances.get(instance)?.authorize(&who, Role::Read)?;
        let offset = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse::<u64>().map_err(|_| {
                Error::InvalidArgument(format!("bad page_token {:?}", req.page_token))
            })?
        };
        let limit = match req.page_size {
            n if n <= 0 => 100,
            n => (n as u64).min(1000),
        };
        let mut filter = JobFilter {
            instance: Some(instance.to_string()),
            offset,
            limit: limit + 1,
            ..Default::default()
        };
        parse_filter(&req.filter, &mut filter)?;
        let mut jobs = self.scheduler.list(&filter).await?;
        let more = jobs.len() as u64 > limit;
        jobs.truncate(limit as usize);
        Ok(Response::new(ListOperationsResponse {
            operations: jobs.iter().map(operation).collect(),
            next_page_token: if more {
                (offset + limit).to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let who = caller(&request);
        let job = self.job(&who, &request.get_ref().name, Role::Read).await?;
        Ok(Response::new(operation(&job)))
    }

    async fn delete_operation(
        &self,
        _request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented(
            "DeleteOperation is not supported: finished operations expire after execution.retention",
        ))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let who = caller(&request);
        let job = self
            .job(&who, &request.get_ref().name, Role::Execute)
            .await?;
        self.scheduler.cancel(&job.id).await?;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let mut job = self.job(&who, &req.name, Role::Read).await?;
        let timeout = req
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_WAIT)
            // A client's timeout is a wish: callers wait again after this.
            .min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + timeout;
        while job.stage != Stage::Completed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            job = self.scheduler.wait(&job.id, job.version, left).await?;
        }
        Ok(Response::new(operation(&job)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_job_filters() {
        let mut f = JobFilter::default();
        parse_filter(
            "stage=queued AND action_digest=ABC/12 min_age=5m max_age=1h",
            &mut f,
        )
        .unwrap();
        assert_eq!(f.stage, Some(Stage::Queued));
        assert_eq!(f.action_hash.as_deref(), Some("abc"));
        let (before, after) = (f.queued_before.unwrap(), f.queued_after.unwrap());
        assert_eq!(before - after, 55 * 60 * 1000, "min_age 5m and max_age 1h");
        for bad in ["stage=sleeping", "min_age=soon", "color=red", "stage"] {
            let err = parse_filter(bad, &mut JobFilter::default()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn operation_names_carry_their_instance() {
        assert_eq!(parse_name("ci/operations/abc").unwrap(), ("ci", "abc"));
        assert_eq!(parse_name("operations/abc").unwrap(), ("", "abc"));
        assert_eq!(parse_name("abc").unwrap(), ("", "abc"));
        assert!(parse_name("ci/operations/").is_err());
        assert_eq!(operation_name("", "x"), "operations/x");
        assert_eq!(operation_name("ci", "x"), "ci/operations/x");
    }
}
