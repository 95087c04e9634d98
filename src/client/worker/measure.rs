//! Measuring one action's cost. The worker runs each command through
//! `kiln-measure`, a small binary of its own whose only child is the
//! command: getrusage(RUSAGE_CHILDREN) in it is then that one action's CPU,
//! peak memory and block I/O, which it could not be in the worker itself
//! (its concurrent actions' children all count there). The resident
//! sandbox's helper measures its actions itself instead (one at a time, so
//! its own children's usage is the action's; see `resident::helper`). The
//! helper reports on its standard input, which the worker
//! makes a Unix socket; the command gets /dev/null there instead, so it
//! cannot forge its own report.

use std::ffi::OsString;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

/// What one run of a command cost, as getrusage reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The command's exit code (128 + the signal of a signal death).
    pub exit: i32,
    /// CPU time in user mode.
    pub user: Duration,
    /// CPU time in the kernel.
    pub system: Duration,
    /// The largest resident set of one process of the tree.
    pub max_rss_bytes: i64,
    /// Bytes read from block devices.
    pub read_bytes: i64,
    /// Bytes written to block devices.
    pub written_bytes: i64,
}

/// What the helper reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// The command ran.
    Ran(Usage),
    /// The command could not be started (the reason).
    NotStarted(String),
}

/// Block counts of getrusage are in 512-byte units on Linux.
pub(crate) const BLOCK: i64 = 512;

impl Report {
    /// The one line the helper writes.
    pub(crate) fn line(&self) -> String {
        match self {
            Report::Ran(u) => format!(
                "ran {} {} {} {} {} {}\n",
                u.exit,
                u.user.as_micros(),
                u.system.as_micros(),
                u.max_rss_bytes / 1024,
                u.read_bytes / BLOCK,
                u.written_bytes / BLOCK
            ),
            Report::NotStarted(why) => format!("error {}\n", why.replace('\n', " ")),
        }
    }

    /// Reads a helper's line; None for anything else (a helper killed
    /// mid-write, or not the helper at all).
    pub fn parse(text: &str) -> Option<Report> {
        let line = text.strip_suffix('\n')?;
        if let Some(why) = line.strip_prefix("error ") {
            return Some(Report::NotStarted(why.to_string()));
        }
        let fields: Vec<u64> = line
            .strip_prefix("ran ")?
            .split(' ')
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [exit, user, system, rss_kb, inblock, oublock] = fields[..] else {
            return None;
        };
        let bytes = |n: u64, unit: i64| i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(unit);
        Some(Report::Ran(Usage {
            exit: i32::try_from(exit).ok()?,
            user: Duration::from_micros(user),
            system: Duration::from_micros(system),
            max_rss_bytes: bytes(rss_kb, 1024),
            read_bytes: bytes(inblock, BLOCK),
            written_bytes: bytes(oublock, BLOCK),
        }))
    }
}

/// The usage as kiln.v1.ResourceUsage for `auxiliary_metadata`, with the
/// input-fetch and upload times `meta` recorded.
pub fn report(
    usage: &Usage,
    meta: &crate::proto::reapi::ExecutedActionMetadata,
) -> prost_types::Any {
    let between = |a: Option<prost_types::Timestamp>, b: Option<prost_types::Timestamp>| {
        let a = std::time::SystemTime::try_from(a?).ok()?;
        let b = std::time::SystemTime::try_from(b?).ok()?;
        proto_duration(b.duration_since(a).ok()?)
    };
    let message = crate::proto::kiln_v1::ResourceUsage {
        user_cpu: proto_duration(usage.user),
        system_cpu: proto_duration(usage.system),
        max_rss_bytes: usage.max_rss_bytes,
        read_bytes: usage.read_bytes,
        written_bytes: usage.written_bytes,
        input_fetch: between(
            meta.input_fetch_start_timestamp,
            meta.input_fetch_completed_timestamp,
        ),
        output_upload: between(
            meta.output_upload_start_timestamp,
            meta.output_upload_completed_timestamp,
        ),
    };
    prost_types::Any {
        type_url: crate::execution::usage::TYPE_URL.into(),
        value: prost::Message::encode_to_vec(&message),
    }
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// A getrusage time as a Duration (negative fields read as zero).
pub(crate) fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
}

/// Where `kiln-measure` is: beside the running `kiln` (as cargo builds
/// them and the image installs them). Without it actions run unmeasured.
pub fn helper() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let helper = exe.parent()?.join("kiln-measure");
    if helper.is_file() {
        return Some(helper);
    }
    tracing::warn!(
        expected = %helper.display(),
        "kiln-measure is not beside kiln; actions run without resource usage"
    );
    None
}

/// The helper's whole life: `kiln-measure -- PROGRAM ARGS...` runs PROGRAM
/// (inheriting the environment, working directory, output and process
/// group the worker set up), waits for it, writes one [`Report`] line to
/// its standard input and exits with the command's code.
pub fn measure_action(args: Vec<OsString>) -> i32 {
    let report = std::io::stdin();
    let mut report = match std::os::fd::AsFd::as_fd(&report).try_clone_to_owned() {
        Ok(fd) => Some(std::os::unix::net::UnixStream::from(fd)),
        Err(_) => None,
    };
    let mut send = |r: Report| {
        if let Some(s) = report.as_mut() {
            let _ = s.write_all(r.line().as_bytes());
        }
    };
    let argv = match args.iter().position(|a| a == "--") {
        Some(i) => &args[i + 1..],
        None => &args[..],
    };
    let Some((program, rest)) = argv.split_first() else {
        send(Report::NotStarted("kiln-measure: no command given".into()));
        return 127;
    };
    let status = std::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            send(Report::NotStarted(e.to_string()));
            return 127;
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let exit = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255);
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    let time = timeval;
    match usage {
        Ok(u) => send(Report::Ran(Usage {
            exit,
            user: time(u.user_time()),
            system: time(u.system_time()),
            max_rss_bytes: u.max_rss().saturating_mul(1024),
            read_bytes: u.block_reads().saturating_mul(BLOCK),
            written_bytes: u.block_writes().saturating_mul(BLOCK),
        })),
        Err(e) => send(Report::NotStarted(format!("getrusage: {e}"))),
    }
    exit.clamp(0, 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_its_line() {
        let r = Report::Ran(Usage {
            exit: 3,
            user: Duration::from_micros(1_500_000),
            system: Duration::from_micros(20),
            max_rss_bytes: 4096 * 1024,
            read_bytes: 8 * 512,
            written_bytes: 0,
        });
        assert_eq!(Report::parse(&r.line()), Some(r));
        let e = Report::NotStarted("No such file or directory (os error 2)".into());
        assert_eq!(Report::parse(&e.line()), Some(e));
    }

    #[test]
    fn anything_else_is_no_report() {
        for text in [
            "",
            "ran 0 1 2 3 4\n",
            "ran 0 1 2 3 4 5",
            "ran 0 -1 2 3 4 5\n",
            "ran x 1 2 3 4 5\n",
            "ran 0 1 2 3 4 5 6\n",
            "hello\n",
        ] {
            assert_eq!(Report::parse(text), None, "{text:?}");
        }
    }
}
