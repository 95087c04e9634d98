//! The sandbox every action runs in: Debian's (and Flatpak's) `bubblewrap`,
//! an audited user-namespace sandbox, started as the slot's own uid.
//!
//! What one action gets (see README's "Security model"):
//! - its own PID namespace: every process it starts dies with it, and none
//!   of another action's or the worker's processes is visible;
//! - its own mount namespace: a root of its own in which only its exec root
//!   (at [`EXEC_ROOT`], the same path for every action, so tools that print
//!   their working directory stay deterministic) is writable, `/tmp` is a
//!   private tmpfs, and the host shows only through a read-only allow list
//!   (defaults fit a compiler toolchain; secrets under it are masked), or
//!   the root file system of the container image it asked for;
//! - no network unless the worker allows it and the action asks;
//! - its own IPC and UTS namespaces, no capabilities, a new session (no
//!   terminal to inject into).
//!
//! bwrap runs as the slot's uid (a pool of uids when the worker is root), so
//! concurrent actions cannot signal, trace or read each other even if a
//! mount were shared, and the worker's files (its token, its input cache)
//! are neither visible nor theirs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where an action's exec root is, inside its sandbox.
pub const EXEC_ROOT: &str = "/kiln/exec";

/// Read-only host paths an action sees by default: a toolchain's.
const DEFAULT_READ_ONLY: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];

/// Paths under the allow list that are hidden from actions: credentials.
const HIDDEN: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/kiln",
    "/etc/security/opasswd",
    "/etc/machine-id",
];

/// How actions are confined.
#[derive(Debug, Clone)]
pub enum Sandbox {
    /// No sandbox: the operator said `--sandbox none`.
    None,
    /// bubblewrap.
    Bwrap(Bwrap),
}

/// bubblewrap's settings.
#[derive(Debug, Clone)]
pub struct Bwrap {
    program: PathBuf,
    read_only: Vec<PathBuf>,
    /// Host paths the operator shares writable with every action.
    writable: Vec<PathBuf>,
    hidden: Vec<PathBuf>,
    allow_network: bool,
}

/// What one action asked of its sandbox (its platform properties).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// Network access.
    pub network: bool,
    /// The root file system of a container image, unpacked.
    pub rootfs: Option<PathBuf>,
}

/// Platform property names a worker takes care of itself (the scheduler
/// matches them against `*` offers): network requests.
pub const NETWORK_PROPERTIES: &[&str] = &[
    "network",
    "dockerNetwork",
    "requires-network",
    "block-network",
];

impl Wants {
    /// Reads what the platform properties ask: `network` (`on`/`off`),
    /// RBE's `dockerNetwork` (`standard`/`off`), and Bazel's execution
    /// requirements `requires-network` and `block-network` as properties.
    pub fn network_of(properties: &[(String, String)]) -> Result<bool> {
        let mut network = false;
        for (name, value) in properties {
            let v = value.to_ascii_lowercase();
            let asks = match name.as_str() {
                "network" => match v.as_str() {
                    "on" | "true" | "standard" | "1" => true,
                    "off" | "false" | "none" | "0" | "" => false,
                    _ => return Err(bad(name, value, "on or off")),
                },
                "dockerNetwork" => match v.as_str() {
                    "standard" | "on" => true,
                    "off" | "none" | "" => false,
                    _ => return Err(bad(name, value, "standard or off")),
                },
                "requires-network" => !matches!(v.as_str(), "false" | "0" | "off"),
                "block-network" => {
                    if !matches!(v.as_str(), "false" | "0" | "off") {
                        return Ok(false);
                    }
                    false
                }
                _ => false,
            };
            network |= asks;
        }
        Ok(network)
    }
}

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgument(format!(
        "platform property {name}={value:?}: expected {expected}"
    ))
}

impl Sandbox {
    /// The sandbox `--sandbox KIND` names (`bwrap` or `none`), with the
    /// read-only paths of `--sandbox-ro` (the defaults when empty).
    /// `worker_own` are the worker's own paths (its token file, its work
    /// dir): hidden wherever the allow list would show them.
    pub fn new(
        kind: &str,
        program: &str,
        read_only: &[PathBuf],
        writable: &[PathBuf],
        worker_own: &[PathBuf],
        allow_network: bool,
    ) -> Result<Sandbox> {
        match kind {
            "none" => Ok(Sandbox::None),
            "bwrap" => {
                let program = find_program(program).ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "--sandbox bwrap: {program:?} is not installed (Debian: apt-get install bubblewrap); \
                         run with --sandbox none to run actions unconfined"
                    ))
                })?;
                let read_only = if read_only.is_empty() {
                    DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect()
                } else {
                    read_only.to_vec()
                };
                for p in read_only.iter().chain(writable) {
                    if !p.is_absolute() {
                        return Err(Error::InvalidArgument(format!(
                            "--sandbox-ro/--sandbox-rw {}: expected an absolute path",
                            p.display()
                        )));
                    }
                }
                let mut hidden: Vec<PathBuf> = HIDDEN.iter().map(PathBuf::from).collect();
                for p in worker_own {
                    // Absolute, as the allow list is (a relative work dir
                    // is the worker's current directory's).
                    let p = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                    if let Some(w) = writable
                        .iter()
                        .find(|w| p.starts_with(w) || w.starts_with(&p))
                    {
                        return Err(Error::InvalidArgument(format!(
                            "--sandbox-rw {} would share the worker's own {} with every action",
                            w.display(),
                            p.display()
                        )));
                    }
                    hidden.push(p);
                }
                Ok(Sandbox::Bwrap(Bwrap {
                    program,
                    read_only,
                    writable: writable.to_vec(),
                    hidden,
                    allow_network,
                }))
            }
            other => Err(Error::InvalidArgument(format!(
                "--sandbox {other:?}: expected bwrap or none"
            ))),
        }
    }

    /// The name shown for it (a worker property and on /operations).
    pub fn name(&self) -> &'static str {
        match self {
            Sandbox::None => "none",
            Sandbox::Bwrap(_) => "bwrap",
        }
    }

    /// The command prefix that runs one action confined, and the working
    /// directory the action sees. `exec_root` is the host path of its exec
    /// root, `cwd` its working directory relative to it.
    pub fn prefix(
        &self,
        exec_root: &Path,
        cwd: &Path,
        wants: &Wants,
    ) -> Result<(Vec<String>, PathBuf)> {
        let b = match self {
            Sandbox::None => {
                if wants.rootfs.is_some() {
                    return Err(Error::FailedPrecondition(
                        "this worker runs without a sandbox (--sandbox none) and cannot run container images".into(),
                    ));
                }
                return Ok((Vec::new(), exec_root.join(cwd)));
            }
            Sandbox::Bwrap(b) => b,
        };
        if wants.network && !b.allow_network {
            return Err(Error::FailedPrecondition(
                "the action asks for network access, which this worker does not allow (kiln worker --allow-network)".into(),
            ));
        }
        let mut args: Vec<String> = vec![b.program.to_string_lossy().into_owned()];
        b.namespaces(&mut args, !wants.network);
        args.extend(["--cap-drop", "ALL"].map(String::from));
        b.view(&mut args, wants.rootfs.as_deref())?;
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let mut add = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        add(&["--bind", &text(exec_root), EXEC_ROOT]);
        let inside = match cwd.as_os_str().is_empty() {
            true => PathBuf::from(EXEC_ROOT),
            false => Path::new(EXEC_ROOT).join(cwd),
        };
        add(&["--chdir", &text(&inside), "--"]);
        Ok((args, inside))
    }
}

impl Bwrap {
    /// The namespaces every sandbox gets (the network's unless `no_network`
    /// is false).
    fn namespaces(&self, args: &mut Vec<String>, no_network: bool) {
        args.extend(
            [
                "--unshare-user",
                "--unshare-pid",
                // The command is its namespace's init: when it exits the
                // kernel kills everything left in the namespace before bwrap
                // (which waits for it) can exit, so a run ends only with
                // every process of the action gone, and the helper's rusage
                // covers them all. (bwrap's own init would let bwrap exit
                // first, unreaped.)
                "--as-pid-1",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
                "--die-with-parent",
                "--new-session",
                "--hostname",
                "kiln-action",
            ]
            .map(String::from),
        );
        if no_network {
            args.push("--unshare-net".into());
        }
    }

    /// The file system an action sees but its exec root: the host's allow
    /// list with secrets masked (or an image's root), `/proc`, `/dev`, a
    /// private `/tmp`, and the operator's shared writable paths.
    fn view(&self, args: &mut Vec<String>, rootfs: Option<&Path>) -> Result<()> {
        let mut add = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
        let text = |p: &Path| p.to_string_lossy().into_owned();
        match rootfs {
            Some(rootfs) => add(&["--ro-bind", &text(rootfs), "/"]),
            None => {
                for p in &self.read_only {
                    match std::fs::symlink_metadata(p) {
                        Ok(m) if m.file_type().is_symlink() => {
                            let target = std::fs::read_link(p)
                                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                            add(&["--symlink", &text(&target), &text(p)]);
                        }
                        Ok(_) => add(&["--ro-bind", &text(p), &text(p)]),
                        Err(_) => {}
                    }
                }
                for p in &self.hidden {
                    // A symlink (a Kubernetes secret's file is one) is
                    // masked where it leads.
                    let p = match std::fs::symlink_metadata(p) {
                        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(p) {
                            Ok(real) => real,
                            Err(_) => continue,
                        },
                        _ => p.clone(),
                    };
                    if !self.read_only.iter().any(|r| p.starts_with(r)) {
                        continue;
                    }
                    match std::fs::metadata(&p) {
                        Ok(m) if m.is_dir() => {
                            add(&["--tmpfs", &text(&p), "--remount-ro", &text(&p)])
                        }
                        Ok(_) => add(&["--ro-bind", "/dev/null", &text(&p)]),
                        Err(_) => {}
                    }
                }
            }
        }
        add(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        // Shared writable paths are the host's: not under an image's root.
        if rootfs.is_none() {
            for p in &self.writable {
                add(&["--bind", &text(p), &text(p)]);
            }
        }
        Ok(())
    }
}

impl Sandbox {
    /// bubblewrap's command line for a slot's resident sandbox (see
    /// [`super::resident`]), whose runs are under `slot_dir`, with
    /// `helper` (`kiln-measure`) as its init; None without a sandbox.
    pub fn resident(&self, slot_dir: &Path, helper: &Path) -> Result<Option<Vec<String>>> {
        let Sandbox::Bwrap(b) = self else {
            return Ok(None);
        };
        let mut args: Vec<String> = vec![b.program.to_string_lossy().into_owned()];
        b.namespaces(&mut args, true);
        // The helper's only privilege, in the slot's user namespace: making
        // each action's mount and IPC namespaces. Actions get none.
        args.extend(["--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN"].map(String::from));
        b.view(&mut args, None)?;
        let text = |p: &Path| p.to_string_lossy().into_owned();
        args.extend(
            [
                "--remount-ro",
                "/dev",
                "--bind",
                &text(slot_dir),
                super::resident::SLOT,
                "--dir",
                EXEC_ROOT,
                "--ro-bind",
                &text(helper),
                super::resident::helper::HELPER,
                // Nothing an action writes outside its exec root, /tmp and
                // /dev/shm (all its own) outlives it.
                "--remount-ro",
                "/",
                "--chdir",
                "/",
                "--",
                super::resident::helper::HELPER,
                "--resident",
            ]
            .map(String::from),
        );
        Ok(Some(args))
    }

    /// Runs `/bin/true` in the sandbox as `user`, in `scratch` (an empty
    /// directory the user may write), so that a machine where the sandbox
    /// cannot start (no user namespaces, a seccomp profile refusing them, a
    /// masked /proc) is found when the worker starts, not by every action.
    pub fn self_test(
        &self,
        scratch: &Path,
        user: Option<super::confine::ActionUser>,
    ) -> Result<()> {
        let Sandbox::Bwrap(_) = self else {
            return Ok(());
        };
        let (argv, _) = self.prefix(scratch, Path::new(""), &Wants::default())?;
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("/bin/true")
            .env_clear()
            .current_dir(scratch)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(u) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(u.uid).gid(u.gid);
        }
        let out = cmd
            .output()
            .map_err(|e| Error::io(format!("starting {}", argv[0]), e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "the sandbox does not work on this machine ({}): {}; it needs unprivileged user namespaces (README, \"Sandbox\"), or run with --sandbox none to run actions unconfined",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `program` itself when it is a path, else the first match on PATH.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// What bwrap prints when the command cannot be started, as the first
/// line of the action's stderr (its exit code is then 1).
pub fn not_started(stderr_head: &str) -> Option<String> {
    let line = stderr_head.lines().next()?;
    line.strip_prefix("bwrap: execvp ")
        .map(|rest| format!("cannot start {rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn network_requests_are_read_from_every_spelling() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("network", "on")], true),
            (&[("network", "off")], false),
            (&[("dockerNetwork", "standard")], true),
            (&[("dockerNetwork", "off")], false),
            (&[("requires-network", "")], true),
            (&[("requires-network", "1")], true),
            (&[("requires-network", "1"), ("block-network", "")], false),
            (&[("OSFamily", "Linux")], false),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                Wants::network_of(&props(pairs)).unwrap(),
                *expected,
                "{pairs:?}"
            );
        }
        assert!(Wants::network_of(&props(&[("network", "maybe")])).is_err());
    }

    #[test]
    fn the_prefix_binds_only_the_exec_root_writable() {
        let sandbox = Sandbox::Bwrap(Bwrap {
            program: "/usr/bin/bwrap".into(),
            read_only: vec!["/usr".into(), "/etc".into()],
            writable: Vec::new(),
            hidden: HIDDEN.iter().map(PathBuf::from).collect(),
            allow_network: false,
        });
        let (args, cwd) = sandbox
            .prefix(
                Path::new("/w/runs/1/root"),
                Path::new("pkg"),
                &Wants::default(),
            )
            .unwrap();
        assert_eq!(cwd, Path::new("/kiln/exec/pkg"));
        let joined = args.join(" ");
        assert!(
            joined.contains("--bind /w/runs/1/root /kiln/exec"),
            "{joined}"
        );
        assert!(joined.contains("--unshare-net"), "{joined}");
        assert!(joined.contains("--ro-bind /usr /usr"), "{joined}");
        assert_eq!(args.iter().filter(|a| *a == "--bind").count(), 1);
        assert_eq!(args.last().map(String::as_str), Some("--"));
        let network = Wants {
            network: true,
            rootfs: None,
        };
        assert!(
            sandbox
                .prefix(Path::new("/r"), Path::new(""), &network)
                .is_err()
        );
    }

    #[test]
    fn bwraps_exec_failure_is_recognised() {
        assert_eq!(
            not_started("bwrap: execvp nope: No such file or directory\n").as_deref(),
            Some("cannot start nope: No such file or directory")
        );
        assert_eq!(not_started("compiler error\n"), None);
    }
}
