//! The resident helper's side (`kiln-measure --resident`): bubblewrap's
//! command, the init of a slot's sandbox, holding CAP_SYS_ADMIN in the
//! slot's user namespace only. It reads one request at a time on its
//! standard input (a socket from the worker) and, per action, in a thread
//! of its own:
//! - enters a new mount and IPC namespace (thread-local, so the helper's
//!   own view is never changed) with a fresh tmpfs on `/tmp` and
//!   `/dev/shm` and the action's exec root bound at `/kiln/exec`; the
//!   slot directory is covered in that view, so the action sees no other
//!   run's files, nor its own logs;
//! - starts the command with no capabilities, measuring it itself (no
//!   second process per action): the ambient set bubblewrap gave the helper is
//!   cleared in that thread, and the action's uid is not 0;
//! - when the command's process exits (or the worker says `kill`), kills
//!   every other process in the slot's PID namespace (`kill(-1)` from its
//!   init) and reaps them all before it answers, so nothing of the action
//!   survives into output collection or into the next action.
//!
//! The helper is not dumpable, so an action (same uid, no capabilities)
//! can neither trace it nor read its descriptors through /proc; as its
//! namespace's init it gets no signal it has no handler for.

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::path::{Component, Path};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::{Request, Response, SLOT};
use crate::client::worker::sandbox::EXEC_ROOT;

/// Where the helper is bound inside the sandbox.
pub const HELPER: &str = "/kiln/measure";

/// The helper's whole life; returns its exit code.
pub fn main() -> i32 {
    let _ = nix::sys::prctl::set_dumpable(false);
    // The slot's view does not change (each action's mounts are made in a
    // namespace of its own): what it mounted under /tmp is read once.
    let under_tmp = match mounts_under_tmp() {
        Ok(m) => Arc::new(m),
        Err(e) => {
            answer(&Response::error(&e));
            return 2;
        }
    };
    let busy = Arc::new(AtomicBool::new(false));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Kill) => kill_all(),
            Ok(Request::Run(run)) => {
                if busy.swap(true, Ordering::SeqCst) {
                    answer(&Response::error("the slot is busy"));
                    continue;
                }
                let (free, under_tmp) = (busy.clone(), under_tmp.clone());
                let started = std::thread::Builder::new()
                    .name("action".into())
                    .spawn(move || {
                        let response = run_one(&run, &under_tmp);
                        free.store(false, Ordering::SeqCst);
                        answer(&response);
                    });
                if let Err(e) = started {
                    busy.store(false, Ordering::SeqCst);
                    answer(&Response::error(&format!("starting a thread: {e}")));
                }
            }
            Err(e) => answer(&Response::error(&format!("bad request: {e}"))),
        }
    }
    // The worker is gone: so is everything it started here.
    kill_all();
    0
}

/// One answer line on standard output (the worker's socket); the lock
/// keeps concurrent answers whole.
fn answer(response: &Response) {
    let mut line = serde_json::to_string(response).unwrap_or_default();
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

/// SIGKILL to every process of the slot's PID namespace but the helper.
fn kill_all() {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-1),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills and reaps every process of the namespace but the helper: returns
/// once none is left (orphans were reparented to the helper, its init).
/// SIGKILL lands asynchronously, so a process may fork once more before it
/// dies: the kill is repeated while any child is left, never waited out.
fn clear_namespace() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    loop {
        kill_all();
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::EINTR)
            | Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {}
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(1)),
            Ok(_) => {}
            Err(_) => break, // ECHILD: nothing is left
        }
    }
}

fn run_one(req: &super::Run, under_tmp: &[PathBuf]) -> Response {
    let response = match start_and_wait(req, under_tmp) {
        Ok(r) => r,
        Err(e) => Response::error(&e),
    };
    clear_namespace();
    response
}

fn start_and_wait(req: &super::Run, under_tmp: &[PathBuf]) -> Result<Response, String> {
    let mut parts = Path::new(&req.run).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(format!("run {:?} is not one plain name", req.run));
    }
    let (program, args) = req
        .argv
        .split_first()
        .ok_or_else(|| "the command has no arguments".to_string())?;
    let run_dir = Path::new(SLOT).join(&req.run);
    enter_own_view(&run_dir, under_tmp)?;
    let open = |name: &str| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(run_dir.join(name))
            .map_err(|e| format!("opening the action's {name}: {e}"))
    };
    let (stdout, stderr) = (open("stdout")?, open("stderr")?);
    // From here the action's view is complete: its exec root is bound, and
    // the slot (other runs' logs, this run's own) is out of sight.
    bind(&run_dir.join("root"), Path::new(EXEC_ROOT))?;
    // bubblewrap locks the mounts it made, so the slot cannot be unmounted
    // here: an empty read-only tmpfs covers it instead (no capability is
    // left to the action to uncover it).
    mount(
        Some("tmpfs"),
        SLOT,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0555,size=4k"),
    )
    .map_err(|e| format!("covering {SLOT}: {e}"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| format!("dropping capabilities: {e}"))?;
    caps::clear(None, caps::CapSet::Inheritable)
        .map_err(|e| format!("dropping capabilities: {e}"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&req.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    // One action at a time runs here, and the namespace is cleared before
    // the next starts: the helper's children's usage grows by this
    // action's alone (orphans it reaps included).
    let before = children_usage();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Response::not_started(&format!("{e}"))),
    };
    drop(cmd);
    let ended = wait4::Wait4::wait4(child).map_err(|e| format!("waiting for the command: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    let status = ended.status;
    let exit = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    clear_namespace();
    let report = req.measure.then(|| {
        let after = children_usage();
        measured(exit, ended.rusage.maxrss, before, after)
    });
    Ok(Response {
        exit,
        report,
        error: None,
        not_started: None,
    })
}

/// getrusage(RUSAGE_CHILDREN): the usage of every child the helper reaped.
fn children_usage() -> Option<nix::sys::resource::Usage> {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok()
}

/// The report line for one action: CPU and block I/O as the growth of the
/// helper's children's usage over the action, the peak memory from wait4
/// (the children's own high-water mark never falls, so it cannot be
/// differenced).
fn measured(
    exit: i32,
    max_rss: u64,
    before: Option<nix::sys::resource::Usage>,
    after: Option<nix::sys::resource::Usage>,
) -> String {
    use crate::client::worker::measure::{Report, Usage};
    let (Some(b), Some(a)) = (before, after) else {
        return Report::NotStarted("getrusage failed".into()).line();
    };
    use crate::client::worker::measure::{BLOCK, timeval as time};
    Report::Ran(Usage {
        exit,
        user: time(a.user_time()).saturating_sub(time(b.user_time())),
        system: time(a.system_time()).saturating_sub(time(b.system_time())),
        max_rss_bytes: i64::try_from(max_rss).unwrap_or(i64::MAX),
        read_bytes: (a.block_reads() - b.block_reads()).saturating_mul(BLOCK),
        written_bytes: (a.block_writes() - b.block_writes()).saturating_mul(BLOCK),
    })
    .line()
}

/// Gives the calling thread (and what it starts) a mount and IPC
/// namespace of its own, with fresh `/tmp` and `/dev/shm`.
fn enter_own_view(run_dir: &Path, under_tmp: &[PathBuf]) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
        .map_err(|e| format!("unsharing the mount and IPC namespaces: {e}"))?;
    // Nothing mounted here reaches the helper's view.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making the view private: {e}"))?;
    mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| format!("mounting a tmpfs on /dev/shm: {e}"))?;
    fresh_tmp(under_tmp)?;
    if !run_dir.join("root").is_dir() {
        return Err(format!("{} has no exec root", run_dir.display()));
    }
    Ok(())
}

/// The outermost mounts below `/tmp` in the slot's view (the operator's
/// shared writable paths may be there), each bound later with what is
/// mounted below it.
fn mounts_under_tmp() -> Result<Vec<PathBuf>, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading mountinfo: {e}"))?;
    let mut under: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with("/tmp") && p != Path::new("/tmp"))
        .collect();
    under.sort();
    let mut outermost: Vec<PathBuf> = Vec::new();
    for path in under {
        if !outermost.iter().any(|k| path.starts_with(k)) {
            outermost.push(path);
        }
    }
    Ok(outermost)
}

/// A fresh tmpfs on `/tmp` that keeps the slot's mounts `under_tmp`: the
/// new tmpfs is made at the exec root's (still empty) mount point, those
/// mounts are bound into it, and it is moved onto `/tmp` as a whole.
fn fresh_tmp(under_tmp: &[PathBuf]) -> Result<(), String> {
    let staging = Path::new(EXEC_ROOT);
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| format!("mounting a tmpfs for /tmp: {e}"))?;
    for path in under_tmp {
        let rel = path.strip_prefix("/tmp").expect("only paths under /tmp");
        let at = staging.join(rel);
        let made = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => std::fs::create_dir_all(&at),
            Ok(_) => at
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::File::create(&at).map(drop)),
            Err(_) => continue,
        };
        made.map_err(|e| format!("making {}: {e}", at.display()))?;
        bind(path, &at)?;
    }
    mount(
        Some(staging),
        "/tmp",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| format!("moving the new tmpfs onto /tmp: {e}"))
}

/// A mountinfo path field: octal escapes (`\040` is a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            let code = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bind(from: &Path, to: &Path) -> Result<(), String> {
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("binding {} at {}: {e}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(super::unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(super::unescape("/tmp/x\\134y"), "/tmp/x\\y");
        assert_eq!(super::unescape("/tmp/\\04"), "/tmp/\\04");
        assert_eq!(super::unescape("/tmp/é"), "/tmp/é");
    }
}
