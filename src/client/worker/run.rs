//! Running one command: its arguments, environment and working directory
//! exactly as the Command says (nothing inherited from the worker), output
//! to files, inside the action's sandbox; measured by `kiln-measure` unless
//! the worker was told not to. A timeout or a cancellation kills the whole
//! process tree (in the sandbox, every process of the action is a
//! descendant: its PID namespace's init adopts orphans), and a run returns
//! only once every process of the action is gone, so nothing it started
//! can touch its outputs while they are collected.

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
    /// The sandbox's command prefix (see [`super::sandbox`]); empty for none.
    pub sandbox: &'a [String],
    /// The working directory the command sees (inside the sandbox).
    pub inside_cwd: &'a Path,
    /// The operator's `--runner` prefix, run inside the sandbox.
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
    let mut argv = command_line(command, launch.inside_cwd)?;
    let program = argv[0].clone();
    let sandboxed = !launch.sandbox.is_empty();
    for prefix in [launch.runner, launch.sandbox] {
        if !prefix.is_empty() {
            let mut wrapped = prefix.to_vec();
            wrapped.extend(argv);
            argv = wrapped;
        }
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
    let not_started = |why: &dyn std::fmt::Display| not_started(&program, cwd, why);
    let mut child = cmd.spawn().map_err(|e| not_started(&e))?;
    // Our copy of the helper's end goes, so its exit ends the report.
    drop(cmd);
    let group = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let guard = TreeKiller(group);
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
        Err(_) => {
            let killed = guard.kill();
            // Every process of the action is gone before outputs are read.
            let _ = tokio::time::timeout(TREE_GONE, child.wait()).await;
            let deadline = tokio::time::Instant::now() + TREE_GONE;
            while killed.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Exit::TimedOut
        }
    };
    // The helper has been reaped, so its pid may already name another
    // process: nothing is looked up by it any more. In a sandbox every
    // process of the action is gone already (its PID namespace died with
    // its init); without one, what is left in the command's process group
    // (daemons, stragglers) goes, as the group outlives its leader's pid.
    guard.after_exit(sandboxed);
    if sandboxed && matches!(exit, Exit::Code(1)) {
        let mut head = String::new();
        use std::io::Read;
        if let Ok(f) = std::fs::File::open(stderr) {
            let _ = f.take(512).read_to_string(&mut head);
        }
        if let Some(why) = super::sandbox::not_started(&head) {
            return Err(not_started(&why));
        }
    }
    let report = match (report, &exit) {
        (Some(socket), Exit::Code(_)) => read_report(socket).await,
        _ => None,
    };
    ran(exit, report, &program, cwd)
}

/// How a run ended, given the measuring helper's report when there is one:
/// the report's exit code is the command's own, and a report that the
/// command could not start is the action's FAILED_PRECONDITION.
pub fn ran(
    exit: Exit,
    report: Option<super::measure::Report>,
    program: &str,
    cwd: &Path,
) -> Result<Ran> {
    match report {
        Some(super::measure::Report::Ran(usage)) => Ok(Ran {
            exit: Exit::Code(usage.exit),
            usage: Some(usage),
        }),
        Some(super::measure::Report::NotStarted(why)) => Err(not_started(program, cwd, &why)),
        None => Ok(Ran { exit, usage: None }),
    }
}

/// The error for a command that could not be started.
pub fn not_started(program: &str, cwd: &Path, why: &dyn std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!(
        "cannot start {program:?} in {}: {why}",
        cwd.display()
    ))
}

/// The command's argument list as run inside the sandbox, whose working
/// directory is `inside_cwd`: a relative program with a slash is relative
/// to the working directory.
pub fn command_line(command: &Command, inside_cwd: &Path) -> Result<Vec<String>> {
    let mut argv: Vec<String> = command.arguments.clone();
    if argv.is_empty() {
        return Err(Error::InvalidArgument(
            "the command has no arguments".into(),
        ));
    }
    if argv[0].contains('/') && !argv[0].starts_with('/') {
        argv[0] = inside_cwd.join(&argv[0]).to_string_lossy().into_owned();
    }
    Ok(argv)
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

/// How long a killed tree may take to go (the kernel tears a PID namespace
/// down in milliseconds; this only bounds a wedged kernel).
const TREE_GONE: Duration = Duration::from_secs(5);

/// Kills a run's whole process tree when dropped (on completion, timeout or
/// cancellation): its process group, and every descendant, which in a
/// sandbox includes processes that started sessions of their own (killing
/// the namespace's init then takes the rest with it).
struct TreeKiller(Option<nix::unistd::Pid>);

impl TreeKiller {
    /// The run's process has exited and been reaped: disarms the guard,
    /// first killing what is left of the process group unless sandboxed.
    fn after_exit(mut self, sandboxed: bool) {
        if let Some(pid) = self.0.take()
            && !sandboxed
        {
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Sends SIGKILL to the tree; returns the processes it killed.
    fn kill(&self) -> Vec<nix::unistd::Pid> {
        use nix::sys::signal::{Signal, kill, killpg};
        let Some(pid) = self.0 else {
            return Vec::new();
        };
        let tree = descendants(pid);
        // Deepest first, so no process is orphaned out of reach.
        for p in tree.iter().rev() {
            let _ = kill(*p, Signal::SIGKILL);
        }
        let _ = killpg(pid, Signal::SIGKILL);
        tree
    }
}

/// True while `pid` runs (a zombie has stopped running; a namespace's init
/// turns zombie only after every other process in it is gone).
fn alive(pid: nix::unistd::Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

impl Drop for TreeKiller {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Every descendant of `pid`, parents before children, from the kernel's
/// per-task child lists (bounded, in case of a fork bomb in progress).
fn descendants(pid: nix::unistd::Pid) -> Vec<nix::unistd::Pid> {
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([pid.as_raw()]);
    while let Some(p) = queue.pop_front() {
        if found.len() >= 100_000 {
            break;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                found.push(nix::unistd::Pid::from_raw(child));
                queue.push_back(child);
            }
        }
    }
    found
}

/// Where a run's output files go: beside the input root, not inside it.
pub fn log_paths(run_dir: &Path) -> (PathBuf, PathBuf) {
    (run_dir.join("stdout"), run_dir.join("stderr"))
}
