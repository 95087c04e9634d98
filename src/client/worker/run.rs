//! Running one command: its arguments, environment and working directory
//! exactly as the Command says (nothing inherited from the worker), output
//! to files, in its own process group so a timeout or a cancellation kills
//! everything it started; measured by `kiln-measure` unless the worker
//! was told not to.

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

/// How commands are started: through a sandbox prefix, under the
/// measuring helper, as another user.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// A sandbox command prefix such as `bwrap --dev-bind / / --unshare-net`
    /// (the command's arguments follow it); empty for none.
    pub runner: &'a [String],
    /// `kiln-measure`, which runs the command (and the runner) as its only
    /// child and reports what it cost; None runs unmeasured.
    pub measure: Option<&'a Path>,
    /// Who the command runs as, when not the worker itself.
    pub user: Option<super::confine::ActionUser>,
}

/// What a run did.
#[derive(Debug)]
pub struct Ran {
    /// How it ended.
    pub exit: Exit,
    /// What it cost, when it ran measured and the helper reported.
    pub usage: Option<super::measure::Usage>,
}

/// Runs `command` in `cwd` (its working directory, already resolved inside
/// the input root) as `launch` says, writing its output to `stdout` and
/// `stderr`. Dropping the future kills the process group.
pub async fn run(
    command: &Command,
    cwd: &Path,
    launch: Launch<'_>,
    timeout: Duration,
    stdout: &Path,
    stderr: &Path,
) -> Result<Ran> {
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
    let program = argv[0].clone();
    if !launch.runner.is_empty() {
        let mut wrapped = launch.runner.to_vec();
        wrapped.extend(argv);
        argv = wrapped;
    }
    // The helper reports on a socket it gets as standard input; the
    // command itself gets /dev/null there.
    let mut report = None;
    let mut stdin = Stdio::null();
    if let Some(helper) = launch.measure {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating the usage socket", e))?;
        stdin = Stdio::from(std::os::fd::OwnedFd::from(theirs));
        report = Some(ours);
        let mut wrapped = vec![helper.to_string_lossy().into_owned(), "--".into()];
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
        .stdin(stdin)
        .stdout(file(stdout)?)
        .stderr(file(stderr)?)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = launch.user {
        // std drops the supplementary groups of root when it sets the uid.
        cmd.uid(u.uid).gid(u.gid);
    }
    let not_started = |why: &dyn std::fmt::Display| {
        Error::FailedPrecondition(format!(
            "cannot start {program:?} in {}: {why}",
            cwd.display()
        ))
    };
    let mut child = cmd.spawn().map_err(|e| not_started(&e))?;
    // Our copy of the helper's end goes, so its exit ends the report.
    drop(cmd);
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
    let usage = match (report, &exit) {
        (Some(socket), Exit::Code(_)) => match read_report(socket).await {
            Some(super::measure::Report::Ran(usage)) => Some(usage),
            Some(super::measure::Report::NotStarted(why)) => return Err(not_started(&why)),
            None => None,
        },
        _ => None,
    };
    let exit = match usage {
        Some(u) => Exit::Code(u.exit),
        None => exit,
    };
    Ok(Ran { exit, usage })
}

/// The helper's one line, read once it has exited (so at most a short
/// wait, and never more than a line's worth of bytes).
async fn read_report(socket: std::os::unix::net::UnixStream) -> Option<super::measure::Report> {
    use tokio::io::AsyncReadExt;
    socket.set_nonblocking(true).ok()?;
    let socket = tokio::net::UnixStream::from_std(socket).ok()?;
    let mut text = Vec::new();
    let mut socket = socket.take(1024);
    let read = socket.read_to_end(&mut text);
    tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .ok()?
        .ok()?;
    super::measure::Report::parse(std::str::from_utf8(&text).ok()?)
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
