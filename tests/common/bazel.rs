//! A real Bazel 4.2.3 (Debian's bazel-bootstrap) driving kiln over the test
//! workspace in tests/bazel/workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Bazel client with its own output root.
#[derive(Clone)]
pub struct Bazel {
    pub workspace: PathBuf,
    pub output_root: PathBuf,
}

impl Bazel {
    pub fn new(tmp: &Path) -> Bazel {
        let status = Command::new("bazel").arg("--version").output();
        assert!(
            status.is_ok_and(|o| o.status.success()),
            "bazel is not installed: README's test command installs Debian's bazel-bootstrap"
        );
        let workspace = tmp.join("ws");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel/workspace"),
            &workspace,
        );
        Bazel {
            workspace,
            output_root: tmp.join("bazel-root"),
        }
    }

    /// A Bazel client for a workspace the test wrote itself.
    pub fn at(workspace: PathBuf, output_root: PathBuf) -> Bazel {
        let status = Command::new("bazel").arg("--version").output();
        assert!(
            status.is_ok_and(|o| o.status.success()),
            "bazel is not installed: README's test command installs Debian's bazel-bootstrap"
        );
        Bazel {
            workspace,
            output_root,
        }
    }

    /// Runs a Bazel command; returns (success, combined output).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let (code, out) = self.run_code(args);
        (code == 0, out)
    }

    /// Runs a Bazel command; returns (exit code, combined output).
    pub fn run_code(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("bazel")
            .arg(format!("--output_user_root={}", self.output_root.display()))
            .arg("--nohome_rc")
            .args(args)
            .args(if args[0] == "shutdown" || args[0] == "clean" {
                &[][..]
            } else {
                &["--color=no", "--curses=no"][..]
            })
            .current_dir(&self.workspace)
            .output()
            .expect("bazel runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `bazel clean`, then `bazel test //...` against `url`; returns the
    /// (remote cache hits, other non-internal processes) of the summary.
    pub fn clean_test(&self, url: &str, extra: &[&str]) -> (u32, u32) {
        let remote = format!("--remote_cache={}", url.replace("http://", "grpc://"));
        let (ok, out) = self.clean_test_with(&remote, extra);
        assert!(ok, "bazel test failed:\n{out}");
        processes(&out)
    }

    /// `bazel clean`, then `bazel test //...` with the `remote` flag as
    /// given (e.g. an `http://` cache); returns (success, output).
    pub fn clean_test_with(&self, remote: &str, extra: &[&str]) -> (bool, String) {
        let (ok, out) = self.run(&["clean"]);
        assert!(ok, "bazel clean failed:\n{out}");
        let mut args = vec!["test", "//...", remote, "--remote_timeout=60"];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// Shuts the Bazel server down when dropped, so none outlives the test.
pub struct ShutdownOnDrop(pub Bazel);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.run(&["shutdown"]);
    }
}

/// Parses `INFO: 16 processes: 8 remote cache hit, 8 internal.`
pub fn processes(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains(" processes: ") || l.contains(" process: "))
        .unwrap_or_else(|| panic!("no process summary in Bazel's output:\n{out}"));
    let summary = line.split(": ").nth(2).unwrap_or("").trim_end_matches('.');
    let (mut hits, mut others) = (0, 0);
    for part in summary.split(", ") {
        let (n, kind) = part.split_once(' ').unwrap_or(("0", part));
        let n: u32 = n
            .parse()
            .unwrap_or_else(|_| panic!("unparsable summary {line:?}"));
        match kind {
            "internal" => {}
            "remote cache hit" => hits += n,
            _ => others += n,
        }
    }
    (hits, others)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}
