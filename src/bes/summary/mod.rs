//! Invocation summaries: what a user wants to know about a build (status,
//! command, targets, tests, cache hits, links to logs), folded event by event
//! out of Bazel's build_event_stream. The summary is state that any pod can
//! load, extend with the next events and store again.

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto::bep;
use crate::proto::bes_v1 as v1;

mod classify;
mod fold;
mod status;
#[cfg(test)]
mod tests;

pub use classify::classify;
use classify::label_of;
pub use status::{Outcome, Status, TestStatus, Verdict};

/// The type URL of Bazel's events inside `bazel_event`.
pub const BAZEL_EVENT_TYPE: &str = "type.googleapis.com/build_event_stream.BuildEvent";

/// Links kept per invocation (logs first); beyond this they are dropped.
const MAX_LINKS: usize = 500;
/// Attempts kept per test (each with its log); later ones are counted only.
const MAX_ATTEMPTS: usize = 64;
/// Failed actions kept per invocation.
const MAX_FAILED_ACTIONS: usize = 100;
/// Command-line options kept, and the longest one kept whole.
const MAX_OPTIONS: usize = 1000;
const MAX_OPTION_LEN: usize = 4096;
/// `--build_metadata` entries kept, and the longest key and value kept.
const MAX_METADATA: usize = 64;
const MAX_METADATA_KEY: usize = 128;
const MAX_METADATA_VALUE: usize = 1024;

/// A target's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The label, e.g. `//app:hello`.
    pub label: String,
    /// Pending until the target completes.
    pub outcome: Outcome,
    /// E.g. `cc_binary rule`.
    pub kind: String,
    /// The CAS digests of its outputs (`hash/size`, sorted, hashed): two
    /// runs of a test with the same fingerprint had the same inputs.
    #[serde(default)]
    pub fingerprint: String,
}

/// One run of a test: a (run, shard, attempt) of Bazel's TestResult.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// `--runs_per_test` index (1-based).
    pub run: i32,
    /// Shard index (1-based when sharded, else 0 or 1).
    pub shard: i32,
    /// Attempt number (1-based; >1 after `--flaky_test_attempts` retries).
    pub attempt: i32,
    /// Bazel's TestStatus.
    pub status: TestStatus,
    /// Run time.
    pub duration_ms: i64,
    /// Served from a cache.
    pub cached: bool,
    /// Its `test.log`, a `bytestream://` URI, when uploaded.
    pub log: String,
}

/// A test's overall result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Test {
    /// The test target's label.
    pub label: String,
    /// Bazel's TestStatus (its summary's, once sent).
    pub status: TestStatus,
    /// Attempts reported (TestResult events).
    pub attempts: u32,
    /// Total run time over attempts.
    pub duration_ms: i64,
    /// Whether the last attempt was a cache hit (locally or remotely).
    pub cached: bool,
    /// Shards (TestSummary's shard_count; 0 when unsharded).
    #[serde(default)]
    pub shards: u32,
    /// Failed at least once and then passed in this invocation (Bazel's
    /// FLAKY, or a failed attempt followed by a passing one).
    #[serde(default)]
    pub flaky: bool,
    /// The first attempts, in the order reported.
    #[serde(default)]
    pub attempt_list: Vec<Attempt>,
}

impl Test {
    /// Its status as shown: FLAKY when it failed and then passed, unless
    /// it failed in the end (another run or shard), which is no flake.
    pub fn shown(&self) -> TestStatus {
        if self.flaky && !self.status.is_failure() {
            TestStatus::Flaky
        } else {
            self.status
        }
    }
}

/// What a target's row in a summary says (see [`Invocation::target_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetStatus {
    /// A test target, by its test's status.
    Test(TestStatus),
    /// Any other target (or a test that reported nothing), by its build.
    Built(Outcome),
}

impl TargetStatus {
    /// How it reads.
    pub fn verdict(self) -> Verdict {
        match self {
            TargetStatus::Test(t) => t.verdict(),
            TargetStatus::Built(o) => o.verdict(),
        }
    }

    /// The name shown.
    pub fn shown(self) -> &'static str {
        match self {
            TargetStatus::Test(t) => t.as_str(),
            TargetStatus::Built(o) => o.shown(),
        }
    }
}

/// An action that failed, as Bazel's ActionExecuted reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAction {
    /// The target it belongs to.
    pub label: String,
    /// Its mnemonic, e.g. `CppCompile`.
    pub mnemonic: String,
    /// Its exit code.
    pub exit_code: i32,
    /// Its stdout and stderr (`bytestream://` URIs), when uploaded.
    pub stdout: String,
    /// See `stdout`.
    pub stderr: String,
    /// Its command line (at most the first options).
    pub argv: Vec<String>,
}

/// A file Bazel reported, with its CAS link (`bytestream://...`) or path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// What it is, e.g. `test.log` or an output's name.
    pub name: String,
    /// Where it is.
    pub uri: String,
}

/// Everything kiln knows about one invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Bazel's invocation id.
    pub invocation_id: String,
    /// Bazel's build id.
    pub build_id: String,
    /// Where it stands.
    pub status: Status,
    /// The command (`build`, `test`, ...).
    pub command: String,
    /// The target patterns asked for.
    pub patterns: Vec<String>,
    /// Who ran it (workspace status BUILD_USER).
    pub user: String,
    /// Where it ran (workspace status BUILD_HOST).
    pub host: String,
    /// Start, in milliseconds since the Unix epoch.
    pub started_at: i64,
    /// Wall time, once finished.
    pub duration_ms: Option<i64>,
    /// Bazel's exit code number, once finished.
    pub exit_code: Option<i32>,
    /// Bazel's exit code name (e.g. `TESTS_FAILED`).
    pub exit_code_name: String,
    /// Targets, in the order Bazel configured them.
    pub targets: Vec<Target>,
    /// Tests, in the order Bazel reported them.
    pub tests: Vec<Test>,
    /// build_event_stream events received.
    pub event_count: u64,
    /// Events whose payload could not be decoded (stored raw).
    pub undecodable_events: u64,
    /// Actions served from the remote cache (BuildMetrics).
    pub cache_hits: i64,
    /// Actions executed, cache hits included (BuildMetrics).
    pub actions_executed: i64,
    /// Actions created (BuildMetrics).
    pub actions_created: i64,
    /// Logs and outputs.
    pub links: Vec<Link>,
    /// Bazel's own logs (BuildToolLogs: the profile, the command log...),
    /// kept apart so outputs never crowd them out.
    #[serde(default)]
    pub tool_logs: Vec<Link>,
    /// The options given explicitly (OptionsParsed explicit_cmd_line).
    #[serde(default)]
    pub options: Vec<String>,
    /// The first failed actions.
    #[serde(default)]
    pub failed_actions: Vec<FailedAction>,
    /// Actions by the runner that ran them (`remote`, `linux-sandbox`,
    /// `remote cache hit`, ...), from BuildMetrics.
    #[serde(default)]
    pub runners: Vec<Runner>,
    /// `--build_metadata` KEY=VALUE pairs (BuildMetadata), capped.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// `metadata` changed since the summary was last stored: only then
    /// does the writer store its pairs again (Bazel sends them once, and a
    /// summary is stored after every batch of events).
    #[serde(skip)]
    pub metadata_changed: bool,
    /// The source repository: build metadata or workspace status
    /// `REPO_URL` (the keys BuildBuddy's docs teach teams to set).
    #[serde(default)]
    pub repository: String,
    /// The branch: `BRANCH_NAME` (metadata) or `GIT_BRANCH` /
    /// `BRANCH_NAME` (workspace status).
    #[serde(default)]
    pub branch: String,
    /// The commit: `COMMIT_SHA` in either.
    #[serde(default)]
    pub commit: String,
}

/// How many actions one kind of runner ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// Bazel's runner name.
    pub name: String,
    /// Actions it ran.
    pub count: i64,
}

/// The `hash/size` of a `bytestream://.../blobs/HASH/SIZE` URI, which
/// names the content whatever the host the client called kiln by.
pub fn blob_of_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("bytestream://")?;
    let at = rest.rfind("/blobs/")?;
    let mut parts = rest[at + 7..].split('/');
    let hash = parts.next()?;
    let size = parts.next()?;
    Some((hash, size))
}

impl Invocation {
    /// A new, in-progress invocation.
    pub fn new(invocation_id: &str, build_id: &str) -> Self {
        Invocation {
            invocation_id: invocation_id.to_string(),
            build_id: build_id.to_string(),
            ..Default::default()
        }
    }

    /// What `target`'s row says: its test's status when it is a test that
    /// reported one (the build succeeding says nothing about the test
    /// passing), else how it built.
    pub fn target_status(&self, target: &Target) -> TargetStatus {
        match self.tests.iter().find(|t| t.label == target.label) {
            Some(test) if test.status != TestStatus::Unreported => TargetStatus::Test(test.shown()),
            _ => TargetStatus::Built(target.outcome),
        }
    }

    /// True once the invocation will change no more.
    pub fn is_finished(&self) -> bool {
        self.status != Status::InProgress
    }

    /// Folds one published event into the summary.
    pub fn apply(&mut self, event: &v1::BuildEvent) {
        use v1::build_event::Event;
        match &event.event {
            Some(Event::BazelEvent(any)) if any.type_url == BAZEL_EVENT_TYPE => {
                self.event_count += 1;
                match bep::BuildEvent::decode(&any.value[..]) {
                    Ok(bep) => self.apply_bazel(&bep),
                    Err(_) => self.undecodable_events += 1,
                }
            }
            Some(Event::ComponentStreamFinished(_)) if self.status == Status::InProgress => {
                // The stream closed properly; the exit code decides, or, if
                // BuildFinished never came, the build is incomplete.
                self.status = match self.exit_code {
                    Some(0) => Status::Succeeded,
                    Some(_) => Status::Failed,
                    None => Status::Disconnected,
                };
            }
            _ => {}
        }
    }

    /// Marks a stream that ended without `component_stream_finished`.
    pub fn disconnect(&mut self) {
        if self.status == Status::InProgress {
            self.status = Status::Disconnected;
        }
    }

    fn target(&mut self, label: &str) -> &mut Target {
        if let Some(i) = self.targets.iter().position(|t| t.label == label) {
            return &mut self.targets[i];
        }
        self.targets.push(Target {
            label: label.to_string(),
            ..Default::default()
        });
        self.targets.last_mut().expect("just pushed")
    }

    fn test(&mut self, label: &str) -> &mut Test {
        if let Some(i) = self.tests.iter().position(|t| t.label == label) {
            return &mut self.tests[i];
        }
        self.tests.push(Test {
            label: label.to_string(),
            ..Default::default()
        });
        self.tests.last_mut().expect("just pushed")
    }

    fn link(&mut self, file: &bep::File) {
        if let Some(bep::file::File::Uri(uri)) = &file.file
            && self.links.len() < MAX_LINKS
            && !self.links.iter().any(|l| &l.uri == uri)
        {
            self.links.push(Link {
                name: file.name.clone(),
                uri: uri.clone(),
            });
        }
    }
}
