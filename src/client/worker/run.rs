//! Running one command: its arguments, environment and working directory
//! exactly as the Command says (nothing inherited from the worker), output
//! to files, in its own process group so a timeout or a cancellation kills
//! everything it started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::proto::reapi::Command;

/// How a run ended.
#[derive(Debug)]
pub enum Exit {
    /// It exited (a signal death is 128 + the signal, as shells report it).
    Code(i32),
    /// It ran past its timeout and was killed.
    TimedOut,
}

/// Runs `command` in `cwd` (its working directory, already resolved inside
/// the input root), as `user` when given, optionally through `runner` (a
/// sandbox command prefix such as `bwrap --dev-bind / / --unshare-net`; the
/// command's arguments follow it), writing its output to `stdout` and
/// `stderr`. Dropping the future kills the process group.
pub async fn run(
    command: &Command,
    cwd: &Path,
    runner: &[String],
    user: Option<super::confine::ActionUser>,
    timeout: Duration,
    stdout: &Path,
    stderr: &Path,
) -> Result<Exit> {
    let mut argv: Vec<String> = command.arguments.clone();
    if argv.is_empty() {
        return Err(Error::InvalidArgument(
            "the command has no arguments".into(),
        ));
    }
    // A relative program with a slash is relative to the working directory.
    if argv[0].contains('/') && !argv[0].starts_with('/') {
        argv[0] = cwd.join(&argv[0]).to_string_lossy().into_owned();
    }
    if !runner.is_empty() {
        let mut wrapped = runner.to_vec();
        wrapped.extend(argv);
        argv = wrapped;
    }
    let file = |p: &Path| {
        std::fs::File::create(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(
            command
                .environment_variables
                .iter()
                .map(|e| (e.name.clone(), e.value.clone())),
        )
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(file(stdout)?)
        .stderr(file(stderr)?)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = user {
        // std drops the supplementary groups of root when it sets the uid.
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::FailedPrecondition(format!(
            "cannot start {:?} in {}: {e}",
            argv[0],
            cwd.display()
        ))
    })?;
    let group = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let guard = GroupKiller(group);
    let exit = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|e| Error::io("waiting for the command", e))?;
            use std::os::unix::process::ExitStatusExt;
            Exit::Code(
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1),
            )
        }
        Err(_) => Exit::TimedOut,
    };
    // Children that outlive the command (daemons, stragglers) go too.
    drop(guard);
    Ok(exit)
}

/// Kills a process group when dropped (on completion, timeout or cancellation).
struct GroupKiller(Option<nix::unistd::Pid>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Where a run's output files go: beside the input root, not inside it.
pub fn log_paths(run_dir: &Path) -> (PathBuf, PathBuf) {
    (run_dir.join("stdout"), run_dir.join("stderr"))
}
