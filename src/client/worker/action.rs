//! One lease's action: the Action and Command, the input root built from
//! the CAS, the command run, its outputs and logs uploaded, and the run
//! directory removed whatever happens.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prost::Message;

use super::cas::Cas;
use super::{Ctx, confine, inputs, outputs, run, sandbox};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::proto::reapi::{Action, ActionResult, Command, ExecutedActionMetadata};
use crate::proto::remoteworkers::Lease;

fn timestamp() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(SystemTime::now()))
}

/// The digest function a lease asks for (kiln says so in the lease's
/// requirements; SHA-256 otherwise, as for any REAPI server).
fn lease_function(lease: &Lease) -> DigestFunction {
    lease
        .requirements
        .as_ref()
        .and_then(|w| w.configs.iter().find(|c| c.key == "digest_function"))
        .and_then(|c| DigestFunction::from_name(&c.value))
        .unwrap_or(DigestFunction::Sha256)
}

/// The platform properties a lease requires.
fn lease_properties(lease: &Lease) -> Vec<(String, String)> {
    lease
        .requirements
        .as_ref()
        .map(|w| {
            w.properties
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Output collection gets what is left of the action's timeout, but at
/// least this (a command that used its whole timeout still has its
/// outputs collected, within bounds).
const MIN_COLLECTION: Duration = Duration::from_secs(30);

/// Builds the input root, runs the command and uploads its outputs, as the
/// user of slot `slot`.
pub(super) async fn execute(
    ctx: &Ctx,
    lease: &Lease,
    slot: usize,
) -> Result<(ActionResult, tonic_types::pb::Status)> {
    let user = ctx.users.get(slot).copied().flatten();
    let function = lease_function(lease);
    let properties = lease_properties(lease);
    let image = properties
        .iter()
        .find(|(k, _)| k == super::images::IMAGE_PROPERTY)
        .map(|(_, v)| v.as_str());
    let network = sandbox::Wants::network_of(&properties)?;
    let cas =
        Cas::new(ctx.conn.clone(), ctx.instance.clone(), function).splicing(ctx.splicing.clone());
    let wants = sandbox::Wants {
        network,
        rootfs: match image {
            Some(value) => Some(ctx.images.rootfs(value, &cas).await?),
            None => None,
        },
    };
    let payload = lease
        .payload
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument(format!("lease {} has no payload", lease.id)))?;
    let action = if payload
        .type_url
        .ends_with("/build.bazel.remote.execution.v2.Action")
    {
        Action::decode(&payload.value[..])?
    } else if payload
        .type_url
        .ends_with("/build.bazel.remote.execution.v2.Digest")
    {
        let digest = crate::proto::reapi::Digest::decode(&payload.value[..])?;
        let digest = Digest::from_proto(function, Some(&digest), "action")?;
        Action::decode(cas.read(&digest).await?)?
    } else {
        return Err(Error::InvalidArgument(format!(
            "lease payload of unknown type {}",
            payload.type_url
        )));
    };
    let mut meta = ExecutedActionMetadata {
        worker: ctx.bot_id.clone(),
        worker_start_timestamp: timestamp(),
        input_fetch_start_timestamp: timestamp(),
        ..Default::default()
    };
    let command_digest = Digest::from_proto(function, action.command_digest.as_ref(), "command")?;
    // Builds send the same few Commands over and over: keep them.
    let command_bytes = ctx
        .commands
        .try_get_with(command_digest, cas.read(&command_digest))
        .await
        .map_err(|e| (*e).clone())?;
    let command = Command::decode(command_bytes)?;
    // Before anything is created: no path the action names may lead out.
    crate::execution::validate::check_command(&command)?;
    let input_root = Digest::from_proto(function, action.input_root_digest.as_ref(), "input root")?;
    // Actions that ask nothing special run in their slot's resident
    // sandbox, under its directory.
    let resident = ctx
        .resident
        .as_ref()
        .filter(|_| wants == sandbox::Wants::default());
    let run_name = format!("{}-{}", sanitized(&lease.id), uuid::Uuid::new_v4());
    let run_dir = match resident {
        Some(r) => r.dir(slot).join(&run_name),
        None => ctx.runs.join(&run_name),
    };
    let root = run_dir.join("root");
    let _cleanup = RemoveOnDrop(run_dir.clone());
    inputs::materialize(&cas, &ctx.cache, &input_root, &root, user).await?;
    let root = std::fs::canonicalize(&root)
        .map_err(|e| Error::io(format!("resolving {}", root.display()), e))?;
    // The working directory and every output's parent are made inside the
    // root, following input symlinks only while they stay inside it.
    let cwd_rel = std::path::Path::new(&command.working_directory);
    for out in command
        .output_files
        .iter()
        .chain(&command.output_directories)
        .chain(&command.output_paths)
    {
        if let Some(parent) = cwd_rel.join(out).parent() {
            confine::mkdirs_within(&root, parent, user)?;
        }
    }
    let cwd = confine::mkdirs_within(&root, cwd_rel, user)?;
    let (sandbox_prefix, inside_cwd) = ctx.sandbox.prefix(&root, cwd_rel, &wants)?;
    meta.input_fetch_completed_timestamp = timestamp();
    let timeout = action
        .timeout
        .and_then(|t| Duration::try_from(t).ok())
        .filter(|t| !t.is_zero())
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(24 * 3600));
    let (stdout, stderr) = run::log_paths(&run_dir);
    meta.execution_start_timestamp = timestamp();
    let launch = run::Launch {
        sandbox: &sandbox_prefix,
        inside_cwd: &inside_cwd,
        runner: &ctx.runner,
        measure: ctx.measure.as_deref(),
        user,
    };
    let started = tokio::time::Instant::now();
    let ran = match resident {
        Some(r) => {
            r.prepare_logs(slot, &run_dir)?;
            let mut argv = ctx.runner.clone();
            argv.extend(run::command_line(&command, &inside_cwd)?);
            let run = super::resident::Run {
                run: run_name,
                cwd: inside_cwd.to_string_lossy().into_owned(),
                argv,
                env: command
                    .environment_variables
                    .iter()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect(),
                measure: ctx.measure.is_some(),
            };
            r.run(slot, run, timeout).await?
        }
        None => run::run(&command, &cwd, launch, timeout, &stdout, &stderr).await?,
    };
    meta.execution_completed_timestamp = timestamp();
    meta.output_upload_start_timestamp = timestamp();
    let mut result = ActionResult::default();
    let status = match ran.exit {
        run::Exit::Code(code) => {
            result.exit_code = code;
            crate::error::ok_rpc_status()
        }
        run::Exit::TimedOut => {
            result.exit_code = -1;
            tonic_types::pb::Status {
                code: tonic::Code::DeadlineExceeded as i32,
                message: format!(
                    "the action ran longer than its timeout of {timeout:?} and was killed"
                ),
                details: Vec::new(),
            }
        }
    };
    // Every process of the action is gone now; what it left is read from
    // the root's descriptor, within what remains of its timeout.
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(MIN_COLLECTION);
    let collect = async {
        let exec_root = std::sync::Arc::new(outputs::Root::open(&root)?);
        let mut budget = outputs::Budget::new(ctx.max_output);
        budget = outputs::collect(&cas, &command, exec_root, cwd_rel, budget, &mut result).await?;
        result.stdout_digest = Some(outputs::log(&cas, &stdout, &mut budget).await?.to_proto());
        result.stderr_digest = Some(outputs::log(&cas, &stderr, &mut budget).await?.to_proto());
        Ok::<_, Error>(())
    };
    tokio::time::timeout(left, collect).await.map_err(|_| {
        Error::DeadlineExceeded(format!(
            "collecting the action's outputs took longer than its timeout ({timeout:?}, at least {MIN_COLLECTION:?} for collection)"
        ))
    })??;
    meta.output_upload_completed_timestamp = timestamp();
    meta.worker_completed_timestamp = timestamp();
    if let Some(usage) = ran.usage {
        meta.auxiliary_metadata
            .push(super::measure::report(&usage, &meta));
    }
    result.execution_metadata = Some(meta);
    Ok((result, status))
}

/// A lease id as one plain file name (ids are the server's, but a run
/// directory's name must not be able to lead anywhere).
fn sanitized(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Deletes a run directory however the run ends (read-only directories an
/// action left are made writable first).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let path = self.0.clone();
        if std::fs::remove_dir_all(&path).is_ok() {
            return;
        }
        make_writable(&path);
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a run directory");
        }
    }
}

fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}
