//! A resident sandbox per slot: one bubblewrap started once per slot (its
//! user, PID, network, IPC and UTS namespaces, and the host's read-only
//! allow list mounted once), with a small helper as its init that starts
//! each action of the slot inside it. An action then costs a thread, one
//! mount and IPC namespace and three mounts instead of a whole bubblewrap
//! (every namespace and ~20 mounts made and torn down again, several
//! milliseconds here: BENCHMARKS.md, "The action sandbox").
//!
//! What the one-shot sandbox gives an action, the resident one gives too
//! (see [`super::sandbox`]): only its own exec root is writable (at the same
//! path), `/tmp` and `/dev/shm` are its own, SysV IPC is its own, the
//! network is none, no capabilities. Actions of one slot run one after the
//! other: when one ends, every process left in the slot's PID namespace is
//! killed and reaped before the worker hears of the end, so none reaches the
//! next action. What slot-mates share is the slot's uid's kernel keyring and
//! the slot's loopback interface, in turn, never at the same time (README,
//! "Security model"). Actions that ask for the network or a container
//! image run in a one-shot sandbox as before.

pub mod helper;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::confine::ActionUser;
use super::run::{Exit, Ran};
use crate::error::{Error, Result};

/// Where the slot directory (holding each run's exec root and logs) is
/// bound in the helper's view; each action's view detaches it.
pub const SLOT: &str = "/kiln/slot";

/// What the worker asks of a slot's helper, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start one action and answer when every process of it is gone.
    Run(Run),
    /// Kill the running action's processes (a timeout or a cancel).
    Kill,
}

/// One action to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    /// The run directory's name under the slot directory.
    pub run: String,
    /// The working directory, inside the sandbox.
    pub cwd: String,
    /// The command line, the program first.
    pub argv: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Whether to run it under `kiln-measure`.
    pub measure: bool,
}

/// The helper's answer: how the action ended.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// The exit code (128 + the signal of a signal death).
    pub exit: i32,
    /// `kiln-measure`'s report line, when measured.
    pub report: Option<String>,
    /// The helper could not run it (a sandbox fault, not the action's).
    pub error: Option<String>,
    /// The program could not be started (the action's fault).
    pub not_started: Option<String>,
}

impl Response {
    fn error(why: &str) -> Response {
        Response {
            exit: -1,
            error: Some(why.to_string()),
            ..Default::default()
        }
    }

    fn not_started(why: &str) -> Response {
        Response {
            exit: 127,
            not_started: Some(why.to_string()),
            ..Default::default()
        }
    }
}

/// The resident sandboxes of a worker's slots, started on first use and
/// again after one ends (a killed helper costs its slot one action).
pub struct Resident {
    slots: Vec<std::sync::Arc<tokio::sync::Mutex<Option<Helper>>>>,
    /// bubblewrap's command line per slot (the helper last).
    argv: Vec<Vec<String>>,
    dirs: Vec<PathBuf>,
    users: Vec<Option<ActionUser>>,
}

struct Helper {
    child: tokio::process::Child,
    to: tokio::net::unix::OwnedWriteHalf,
    from: BufReader<tokio::net::unix::OwnedReadHalf>,
}

/// How long a killed action's processes may take to go (the kernel kills a
/// namespace's processes in milliseconds; this only bounds a wedged one).
const TREE_GONE: Duration = Duration::from_secs(5);

impl Resident {
    /// `argv(slot_dir)` is bubblewrap's command line for a slot whose runs
    /// are under `slot_dir` (None: no sandbox, so none resident); `runs`
    /// holds the slot directories.
    pub fn new(
        runs: &Path,
        users: &[Option<ActionUser>],
        argv: impl Fn(&Path) -> Result<Option<Vec<String>>>,
    ) -> Result<Option<Resident>> {
        let mut dirs = Vec::new();
        let mut argvs = Vec::new();
        for slot in 0..users.len() {
            let dir = runs.join(format!("slot-{slot}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let Some(a) = argv(&dir)? else {
                return Ok(None);
            };
            argvs.push(a);
            dirs.push(dir);
        }
        Ok(Some(Resident {
            slots: (0..users.len()).map(|_| Default::default()).collect(),
            argv: argvs,
            dirs,
            users: users.to_vec(),
        }))
    }

    /// Where slot `slot`'s run directories go.
    pub fn dir(&self, slot: usize) -> &Path {
        &self.dirs[slot]
    }

    /// Makes `run_dir`'s log files, the slot's user's, for the helper to
    /// open (it cannot create files in the worker's directories).
    pub fn prepare_logs(&self, slot: usize, run_dir: &Path) -> Result<()> {
        let (stdout, stderr) = super::run::log_paths(run_dir);
        for p in [stdout, stderr] {
            std::fs::File::create(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            super::confine::hand_over(&p, self.users[slot])?;
        }
        Ok(())
    }

    /// Runs `/bin/true` in every slot's resident sandbox, so a machine where
    /// it cannot start is found when the worker starts.
    pub async fn self_test(&self) -> Result<()> {
        for slot in 0..self.dirs.len() {
            let run_dir = self.dirs[slot].join("self-test");
            std::fs::create_dir_all(run_dir.join("root"))
                .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
            super::confine::hand_over(&run_dir.join("root"), self.users[slot])?;
            self.prepare_logs(slot, &run_dir)?;
            let run = Run {
                run: "self-test".into(),
                cwd: super::sandbox::EXEC_ROOT.into(),
                argv: vec!["/bin/true".into()],
                env: Vec::new(),
                measure: false,
            };
            let ran = self.run(slot, run, Duration::from_secs(30)).await;
            let _ = std::fs::remove_dir_all(&run_dir);
            match ran {
                Ok(Ran {
                    exit: Exit::Code(0),
                    ..
                }) => {}
                Ok(other) => {
                    return Err(Error::FailedPrecondition(format!(
                        "the resident sandbox of slot {slot} ran /bin/true to {:?}",
                        other.exit
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs one action in slot `slot`'s sandbox; its run directory (the
    /// exec root `root` and the log files) is `run.run` under the slot's
    /// directory. Dropping the future kills the action's processes.
    pub async fn run(&self, slot: usize, run: Run, timeout: Duration) -> Result<Ran> {
        let mut lock = Pending {
            guard: Some(self.slots[slot].clone().lock_owned().await),
            done: false,
        };
        let guard = lock.guard.as_mut().expect("held until the end");
        if guard.as_mut().is_some_and(|h| h.exited()) {
            **guard = None;
        }
        if guard.is_none() {
            **guard = Some(self.start(slot)?);
        }
        let helper = guard.as_mut().expect("started above");
        let (program, cwd) = (
            run.argv.first().cloned().unwrap_or_default(),
            PathBuf::from(&run.cwd),
        );
        let mut line = serde_json::to_string(&Request::Run(run))
            .map_err(|e| Error::Unavailable(format!("encoding a run: {e}")))?;
        line.push('\n');
        if let Err(e) = helper.to.write_all(line.as_bytes()).await {
            let why = helper.failure().await;
            **guard = None;
            return Err(Error::Unavailable(format!(
                "the slot's sandbox helper is gone ({e}): {why}"
            )));
        }
        let answered = tokio::time::timeout(timeout, helper.answer()).await;
        let (response, exit) = match answered {
            Ok(r) => (r, None),
            Err(_) => {
                helper.kill().await;
                let r = tokio::time::timeout(TREE_GONE, helper.answer())
                    .await
                    .unwrap_or_else(|_| Err("no answer after a kill".into()));
                (r, Some(Exit::TimedOut))
            }
        };
        lock.done = true;
        let response = match response {
            Ok(r) => r,
            Err(why) => {
                let why = format!("{why}: {}", helper.failure().await);
                **guard = None;
                return Err(Error::Unavailable(format!(
                    "the slot's sandbox helper failed: {why}"
                )));
            }
        };
        if let Some(why) = response.error {
            return Err(Error::Unavailable(format!("the slot's sandbox: {why}")));
        }
        if let Some(why) = response.not_started {
            return Err(super::run::not_started(&program, &cwd, &why));
        }
        if let Some(exit) = exit {
            return Ok(Ran { exit, usage: None });
        }
        let report = response
            .report
            .as_deref()
            .and_then(super::measure::Report::parse);
        super::run::ran(Exit::Code(response.exit), report, &program, &cwd)
    }

    fn start(&self, slot: usize) -> Result<Helper> {
        let argv = &self.argv[slot];
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("creating the helper's socket", e))?;
        let theirs_out = theirs
            .try_clone()
            .map_err(|e| Error::io("creating the helper's socket", e))?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .current_dir(&self.dirs[slot])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs_out,
            )))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(u) = self.users[slot] {
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", argv[0]), e))?;
        ours.set_nonblocking(true)
            .map_err(|e| Error::io("the helper's socket", e))?;
        let (from, to) = tokio::net::UnixStream::from_std(ours)
            .map_err(|e| Error::io("the helper's socket", e))?
            .into_split();
        Ok(Helper {
            child,
            to,
            from: BufReader::new(from),
        })
    }
}

impl Helper {
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    async fn answer(&mut self) -> std::result::Result<Response, String> {
        let mut line = String::new();
        use tokio::io::AsyncReadExt;
        match (&mut self.from).take(1 << 20).read_line(&mut line).await {
            Ok(0) => Err("the helper exited".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}")),
            Err(e) => Err(format!("reading its answer: {e}")),
        }
    }

    async fn kill(&mut self) {
        let line = "{\"op\":\"kill\"}\n";
        let _ = self.to.write_all(line.as_bytes()).await;
    }

    /// What the helper said on its way out (bubblewrap's errors).
    async fn failure(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let _ = self.child.start_kill();
        let mut text = String::new();
        if let Some(err) = self.child.stderr.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                err.take(4096).read_to_string(&mut text),
            )
            .await;
        }
        text.trim().to_string()
    }
}

/// A slot's helper while a run is in it: when the run's future is dropped
/// (a cancel) before the helper answered, the action is killed and its
/// answer awaited before the slot takes another.
struct Pending {
    guard: Option<tokio::sync::OwnedMutexGuard<Option<Helper>>>,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        tokio::spawn(async move {
            let Some(helper) = guard.as_mut() else { return };
            helper.kill().await;
            if !matches!(
                tokio::time::timeout(TREE_GONE, helper.answer()).await,
                Ok(Ok(_))
            ) {
                *guard = None;
            }
        });
    }
}
