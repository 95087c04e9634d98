//! Invocation summaries: what a user wants to know about a build (status,
//! command, targets, tests, cache hits, links to logs), folded event by event
//! out of Bazel's build_event_stream. The summary is state that any pod can
//! load, extend with the next events and store again.

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::proto::bep;
use crate::proto::bes_v1 as v1;

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

/// Where an invocation stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Events are still arriving.
    #[default]
    InProgress,
    /// Bazel finished with exit code 0.
    Succeeded,
    /// Bazel finished with a non-zero exit code.
    Failed,
    /// The event stream ended without Bazel saying it was finished.
    Disconnected,
}

impl Status {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Disconnected => "DISCONNECTED",
        }
    }
}

/// A target's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The label, e.g. `//app:hello`.
    pub label: String,
    /// `SUCCESS`, `FAILED` or `ABORTED`; empty until the target completes.
    pub outcome: String,
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
    /// Bazel's TestStatus name.
    pub status: String,
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
    /// Bazel's TestStatus name: PASSED, FAILED, FLAKY, TIMEOUT, ...
    pub status: String,
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
}

/// How many actions one kind of runner ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    /// Bazel's runner name.
    pub name: String,
    /// Actions it ran.
    pub count: i64,
}

/// Whether a test status, target outcome or invocation status (Bazel's
/// names) is a failure: the one rule behind the stored failed counts, the
/// lists and the pages' red badges, so that they cannot disagree. NO_STATUS
/// (a test that did not run, or has not run yet) is not one.
pub fn is_failure(status: &str) -> bool {
    matches!(
        status,
        "FAILED"
            | "FAILED_TO_BUILD"
            | "TIMEOUT"
            | "INCOMPLETE"
            | "REMOTE_FAILURE"
            | "TOOL_HALTED_BEFORE_TESTING"
            | "ABORTED"
    )
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

fn option(text: &str) -> String {
    if text.len() <= MAX_OPTION_LEN {
        return text.to_string();
    }
    let mut cut = MAX_OPTION_LEN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The build_event_stream id variant's name: the event's kind.
pub fn kind_of(id: Option<&bep::BuildEventId>) -> &'static str {
    use bep::build_event_id::Id;
    match id.and_then(|i| i.id.as_ref()) {
        None => "unknown",
        Some(id) => match id {
            Id::Unknown(_) => "unknown",
            Id::Progress(_) => "progress",
            Id::Started(_) => "started",
            Id::Pattern(_) => "pattern",
            Id::TargetCompleted(_) => "target_completed",
            Id::ActionCompleted(_) => "action_completed",
            Id::TestSummary(_) => "test_summary",
            Id::TestResult(_) => "test_result",
            Id::BuildFinished(_) => "build_finished",
            Id::PatternSkipped(_) => "pattern_skipped",
            Id::UnstructuredCommandLine(_) => "unstructured_command_line",
            Id::OptionsParsed(_) => "options_parsed",
            Id::NamedSet(_) => "named_set",
            Id::WorkspaceStatus(_) => "workspace_status",
            Id::Configuration(_) => "configuration",
            Id::TargetConfigured(_) => "target_configured",
            Id::Fetch(_) => "fetch",
            Id::StructuredCommandLine(_) => "structured_command_line",
            Id::UnconfiguredLabel(_) => "unconfigured_label",
            Id::BuildToolLogs(_) => "build_tool_logs",
            Id::ConfiguredLabel(_) => "configured_label",
            Id::BuildMetrics(_) => "build_metrics",
            Id::Workspace(_) => "workspace",
            Id::BuildMetadata(_) => "build_metadata",
            Id::ConvenienceSymlinksIdentified(_) => "convenience_symlinks_identified",
            Id::TargetSummary(_) => "target_summary",
            Id::ExecRequest(_) => "exec_request",
            Id::TestProgress(_) => "test_progress",
        },
    }
}

/// The target label an event is about, if any.
pub fn label_of(id: Option<&bep::BuildEventId>) -> String {
    use bep::build_event_id::Id;
    match id.and_then(|i| i.id.as_ref()) {
        Some(Id::TargetCompleted(t)) => t.label.clone(),
        Some(Id::TargetConfigured(t)) => t.label.clone(),
        Some(Id::TestResult(t)) => t.label.clone(),
        Some(Id::TestSummary(t)) => t.label.clone(),
        Some(Id::TargetSummary(t)) => t.label.clone(),
        Some(Id::ActionCompleted(a)) => a.label.clone(),
        Some(Id::UnconfiguredLabel(u)) => u.label.clone(),
        Some(Id::ConfiguredLabel(c)) => c.label.clone(),
        _ => String::new(),
    }
}

/// Classifies a google.devtools.build.v1 event: `(kind, label, decoded Bazel
/// event)`. An undecodable Bazel payload yields kind `undecodable`.
pub fn classify(event: &v1::BuildEvent) -> (String, String, Option<bep::BuildEvent>) {
    use v1::build_event::Event;
    match &event.event {
        Some(Event::BazelEvent(any)) if any.type_url == BAZEL_EVENT_TYPE => {
            match bep::BuildEvent::decode(&any.value[..]) {
                Ok(bep) => (
                    kind_of(bep.id.as_ref()).to_string(),
                    label_of(bep.id.as_ref()),
                    Some(bep),
                ),
                Err(_) => ("undecodable".to_string(), String::new(), None),
            }
        }
        Some(Event::BazelEvent(_)) => ("bazel_event".into(), String::new(), None),
        Some(Event::InvocationAttemptStarted(_)) => {
            ("invocation_attempt_started".into(), String::new(), None)
        }
        Some(Event::InvocationAttemptFinished(_)) => {
            ("invocation_attempt_finished".into(), String::new(), None)
        }
        Some(Event::BuildEnqueued(_)) => ("build_enqueued".into(), String::new(), None),
        Some(Event::BuildFinished(_)) => ("build_finished_lifecycle".into(), String::new(), None),
        Some(Event::ConsoleOutput(_)) => ("console_output".into(), String::new(), None),
        Some(Event::ComponentStreamFinished(_)) => {
            ("component_stream_finished".into(), String::new(), None)
        }
        Some(Event::BuildExecutionEvent(_)) => {
            ("build_execution_event".into(), String::new(), None)
        }
        Some(Event::SourceFetchEvent(_)) => ("source_fetch_event".into(), String::new(), None),
        None => ("empty".into(), String::new(), None),
    }
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

    fn apply_bazel(&mut self, ev: &bep::BuildEvent) {
        use bep::build_event::Payload;
        use bep::build_event_id::Id;
        let label = label_of(ev.id.as_ref());
        if let Some(Id::Pattern(p)) = ev.id.as_ref().and_then(|i| i.id.as_ref()) {
            for pattern in &p.pattern {
                if !self.patterns.contains(pattern) {
                    self.patterns.push(pattern.clone());
                }
            }
        }
        let Some(payload) = &ev.payload else { return };
        match payload {
            Payload::Started(s) => {
                self.command = s.command.clone();
                self.started_at = s
                    .start_time
                    .as_ref()
                    .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
                    .filter(|ms| *ms > 0)
                    .unwrap_or(s.start_time_millis);
            }
            Payload::WorkspaceStatus(ws) => {
                for item in &ws.item {
                    match item.key.as_str() {
                        "BUILD_USER" => self.user = item.value.clone(),
                        "BUILD_HOST" => self.host = item.value.clone(),
                        _ => {}
                    }
                }
            }
            Payload::Configured(c) if !label.is_empty() => {
                self.target(&label).kind = c.target_kind.clone();
                // A test target of a test command has NO STATUS until a
                // result says otherwise, as in Bazel's summary: a test that
                // never runs (the build failed elsewhere first) is not shown
                // as its build's success. Bazel sends its TestResult and
                // TestSummary as aborted events then, or none at all.
                if c.test_size != 0 && matches!(self.command.as_str(), "test" | "coverage") {
                    let test = self.test(&label);
                    if test.status.is_empty() {
                        test.status = "NO_STATUS".into();
                    }
                }
            }
            Payload::Completed(c) if !label.is_empty() => {
                let mut blobs: Vec<String> = c
                    .important_output
                    .iter()
                    .filter_map(|f| match &f.file {
                        Some(bep::file::File::Uri(uri)) => {
                            blob_of_uri(uri).map(|(h, s)| format!("{h}/{s}"))
                        }
                        _ => None,
                    })
                    .collect();
                blobs.sort();
                let target = self.target(&label);
                target.outcome = if c.success { "SUCCESS" } else { "FAILED" }.into();
                if !blobs.is_empty() {
                    target.fingerprint = hex::encode(
                        &crate::digest::DigestFunction::Sha256
                            .digest_of(blobs.join("\n").as_bytes())
                            .hash[..8],
                    );
                }
                for f in &c.important_output {
                    self.link(f);
                }
            }
            Payload::Aborted(_)
                if matches!(
                    ev.id.as_ref().and_then(|i| i.id.as_ref()),
                    Some(Id::TargetCompleted(_))
                ) =>
            {
                self.target(&label).outcome = "ABORTED".into();
            }
            Payload::TestResult(r) if !label.is_empty() => {
                let duration = r
                    .test_attempt_duration
                    .as_ref()
                    .map(|d| crate::time::saturating_ms(d.seconds, d.nanos))
                    .unwrap_or(r.test_attempt_duration_millis);
                let cached = r.cached_locally
                    || r.execution_info.as_ref().is_some_and(|e| e.cached_remotely);
                let (run, shard, attempt) = match ev.id.as_ref().and_then(|i| i.id.as_ref()) {
                    Some(Id::TestResult(t)) => (t.run, t.shard, t.attempt),
                    _ => (0, 0, 0),
                };
                let status = r.status().as_str_name().to_string();
                let log = r
                    .test_action_output
                    .iter()
                    .find(|f| f.name == "test.log")
                    .and_then(|f| match &f.file {
                        Some(bep::file::File::Uri(uri)) => Some(uri.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let test = self.test(&label);
                test.attempts += 1;
                test.duration_ms = test.duration_ms.saturating_add(duration);
                test.cached = cached;
                if test.status.is_empty() || test.status == "NO_STATUS" {
                    test.status = status.clone();
                }
                // A pass after a failure of the same run and shard.
                if status == "PASSED"
                    && test
                        .attempt_list
                        .iter()
                        .any(|a| a.run == run && a.shard == shard && a.status != "PASSED")
                {
                    test.flaky = true;
                }
                if test.attempt_list.len() < MAX_ATTEMPTS {
                    test.attempt_list.push(Attempt {
                        run,
                        shard,
                        attempt,
                        status,
                        duration_ms: duration,
                        cached,
                        log,
                    });
                }
                for f in &r.test_action_output {
                    self.link(f);
                }
            }
            Payload::TestSummary(s) if !label.is_empty() => {
                let test = self.test(&label);
                test.status = s.overall_status().as_str_name().to_string();
                test.shards = u32::try_from(s.shard_count).unwrap_or(0);
                if test.status == "FLAKY" {
                    test.flaky = true;
                }
            }
            Payload::Action(a) if !a.success && self.failed_actions.len() < MAX_FAILED_ACTIONS => {
                let uri = |f: &Option<bep::File>| match f.as_ref().and_then(|f| f.file.as_ref()) {
                    Some(bep::file::File::Uri(uri)) => uri.clone(),
                    _ => String::new(),
                };
                self.failed_actions.push(FailedAction {
                    label: if a.label.is_empty() {
                        label.clone()
                    } else {
                        a.label.clone()
                    },
                    mnemonic: a.r#type.clone(),
                    exit_code: a.exit_code,
                    stdout: uri(&a.stdout),
                    stderr: uri(&a.stderr),
                    argv: a.command_line.iter().take(64).map(|s| option(s)).collect(),
                });
            }
            Payload::OptionsParsed(o) => {
                self.options = o
                    .explicit_cmd_line
                    .iter()
                    .take(MAX_OPTIONS)
                    .map(|s| option(s))
                    .collect();
            }
            Payload::BuildMetrics(m) => {
                if let Some(a) = &m.action_summary {
                    self.actions_executed = a.actions_executed;
                    self.actions_created = a.actions_created;
                    let by_runner: i64 = a
                        .runner_count
                        .iter()
                        .filter(|r| r.name == "remote cache hit")
                        .map(|r| i64::from(r.count))
                        .sum();
                    self.runners = a
                        .runner_count
                        .iter()
                        .take(64)
                        .map(|r| Runner {
                            name: r.name.clone(),
                            count: i64::from(r.count),
                        })
                        .collect();
                    self.cache_hits = if a.runner_count.is_empty() {
                        a.remote_cache_hits
                    } else {
                        by_runner
                    };
                }
            }
            Payload::BuildToolLogs(logs) => {
                for f in &logs.log {
                    self.link(f);
                    if let Some(bep::file::File::Uri(uri)) = &f.file
                        && self.tool_logs.len() < MAX_LINKS
                    {
                        self.tool_logs.push(Link {
                            name: f.name.clone(),
                            uri: uri.clone(),
                        });
                    }
                }
            }
            Payload::NamedSetOfFiles(set) => {
                for f in &set.files {
                    self.link(f);
                }
            }
            Payload::Finished(f) => {
                if let Some(code) = &f.exit_code {
                    self.exit_code = Some(code.code);
                    self.exit_code_name = code.name.clone();
                } else {
                    self.exit_code = Some(if f.overall_success { 0 } else { 1 });
                }
                let finish = f
                    .finish_time
                    .as_ref()
                    .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
                    .filter(|ms| *ms > 0)
                    .unwrap_or(f.finish_time_millis);
                if self.started_at > 0 && finish >= self.started_at {
                    self.duration_ms = Some(finish - self.started_at);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bep::build_event::Payload;
    use bep::build_event_id::Id;

    fn wrap(id: Option<Id>, payload: Payload) -> v1::BuildEvent {
        let event = bep::BuildEvent {
            id: id.map(|id| bep::BuildEventId { id: Some(id) }),
            payload: Some(payload),
            ..Default::default()
        };
        v1::BuildEvent {
            event: Some(v1::build_event::Event::BazelEvent(prost_types::Any {
                type_url: BAZEL_EVENT_TYPE.into(),
                value: event.encode_to_vec(),
            })),
            ..Default::default()
        }
    }

    fn finished_stream() -> v1::BuildEvent {
        v1::BuildEvent {
            event: Some(v1::build_event::Event::ComponentStreamFinished(
                v1::build_event::BuildComponentStreamFinished { r#type: 1 },
            )),
            ..Default::default()
        }
    }

    fn started(ms: i64) -> v1::BuildEvent {
        wrap(
            Some(Id::Started(Default::default())),
            Payload::Started(bep::BuildStarted {
                command: "test".into(),
                start_time_millis: ms,
                ..Default::default()
            }),
        )
    }

    fn finished(ok: bool, ms: i64) -> v1::BuildEvent {
        wrap(
            Some(Id::BuildFinished(Default::default())),
            Payload::Finished(bep::BuildFinished {
                overall_success: ok,
                finish_time_millis: ms,
                ..Default::default()
            }),
        )
    }

    fn test_result(label: &str, status: bep::TestStatus, ms: i64, cached: bool) -> v1::BuildEvent {
        wrap(
            Some(Id::TestResult(bep::build_event_id::TestResultId {
                label: label.into(),
                ..Default::default()
            })),
            Payload::TestResult(bep::TestResult {
                status: status as i32,
                test_attempt_duration_millis: ms,
                cached_locally: cached,
                ..Default::default()
            }),
        )
    }

    fn fold(events: &[v1::BuildEvent]) -> Invocation {
        let mut inv = Invocation::new("inv", "build");
        for e in events {
            inv.apply(e);
        }
        inv
    }

    #[test]
    fn the_fold_over_event_sequences() {
        struct Case {
            name: &'static str,
            events: Vec<v1::BuildEvent>,
            status: Status,
            exit_code: Option<i32>,
            duration_ms: Option<i64>,
        }
        let cases = vec![
            Case {
                name: "a passing build",
                events: vec![started(1000), finished(true, 4000), finished_stream()],
                status: Status::Succeeded,
                exit_code: Some(0),
                duration_ms: Some(3000),
            },
            Case {
                name: "a failing build",
                events: vec![started(1000), finished(false, 1500), finished_stream()],
                status: Status::Failed,
                exit_code: Some(1),
                duration_ms: Some(500),
            },
            Case {
                name: "a stream closed before BuildFinished",
                events: vec![started(1000), finished_stream()],
                status: Status::Disconnected,
                exit_code: None,
                duration_ms: None,
            },
            Case {
                name: "still running",
                events: vec![started(1000)],
                status: Status::InProgress,
                exit_code: None,
                duration_ms: None,
            },
            Case {
                name: "a finish before the start is no duration",
                events: vec![started(5000), finished(true, 4000), finished_stream()],
                status: Status::Succeeded,
                exit_code: Some(0),
                duration_ms: None,
            },
        ];
        for c in cases {
            let inv = fold(&c.events);
            assert_eq!(inv.status, c.status, "{}", c.name);
            assert_eq!(inv.exit_code, c.exit_code, "{}", c.name);
            assert_eq!(inv.duration_ms, c.duration_ms, "{}", c.name);
            assert_eq!(
                inv.event_count,
                (c.events.len() - 1).max(1) as u64,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn tests_sum_their_attempts() {
        use bep::TestStatus::{Failed, Passed};
        let inv = fold(&[
            test_result("//a:t", Failed, 100, false),
            test_result("//a:t", Passed, 200, false),
            test_result("//b:t", Passed, 5, true),
            test_result("//c:t", Passed, i64::MAX, false),
            test_result("//c:t", Passed, i64::MAX, false),
        ]);
        let by = |l: &str| inv.tests.iter().find(|t| t.label == l).unwrap();
        assert_eq!(by("//a:t").attempts, 2);
        assert_eq!(by("//a:t").duration_ms, 300);
        assert_eq!(
            by("//a:t").status,
            "FAILED",
            "the first real status is kept"
        );
        assert!(by("//b:t").cached);
        assert_eq!(by("//c:t").duration_ms, i64::MAX, "saturates, never wraps");
    }

    #[test]
    fn a_pass_after_a_failure_of_the_same_shard_is_flaky() {
        use bep::TestStatus::{Failed, Passed};
        // Shards 1 and 2: one fails and the other passes (not flaky);
        // shard 1's retry passes (flaky).
        let attempt = |shard, attempt, status| {
            let mut e = test_result("//a:t", status, 10, false);
            if let Some(v1::build_event::Event::BazelEvent(any)) = &mut e.event {
                let mut b = bep::BuildEvent::decode(&any.value[..]).unwrap();
                b.id = Some(bep::BuildEventId {
                    id: Some(Id::TestResult(bep::build_event_id::TestResultId {
                        label: "//a:t".into(),
                        run: 1,
                        shard,
                        attempt,
                        ..Default::default()
                    })),
                });
                any.value = b.encode_to_vec();
            }
            e
        };
        let mixed_shards = fold(&[attempt(1, 1, Failed), attempt(2, 1, Passed)]);
        assert!(!mixed_shards.tests[0].flaky);
        let retried = fold(&[
            attempt(1, 1, Failed),
            attempt(2, 1, Passed),
            attempt(1, 2, Passed),
        ]);
        let t = &retried.tests[0];
        assert!(t.flaky);
        assert_eq!(t.attempt_list.len(), 3);
        assert_eq!((t.attempt_list[2].shard, t.attempt_list[2].attempt), (1, 2));
        // Bazel's own verdict counts too.
        let summary = wrap(
            Some(Id::TestSummary(bep::build_event_id::TestSummaryId {
                label: "//b:t".into(),
                ..Default::default()
            })),
            Payload::TestSummary(bep::TestSummary {
                overall_status: bep::TestStatus::Flaky as i32,
                shard_count: 4,
                ..Default::default()
            }),
        );
        let inv = fold(&[summary]);
        assert!(inv.tests[0].flaky);
        assert_eq!(inv.tests[0].shards, 4);
    }

    #[test]
    fn a_targets_fingerprint_is_its_output_digests_whatever_the_host() {
        let completed = |host: &str, hash: &str| {
            wrap(
                Some(Id::TargetCompleted(
                    bep::build_event_id::TargetCompletedId {
                        label: "//a:t".into(),
                        ..Default::default()
                    },
                )),
                Payload::Completed(bep::TargetComplete {
                    success: true,
                    important_output: vec![bep::File {
                        name: "a/t".into(),
                        file: Some(bep::file::File::Uri(format!(
                            "bytestream://{host}/blobs/{hash}/12"
                        ))),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            )
        };
        let a = fold(&[completed("one:1", &"a".repeat(64))]);
        let b = fold(&[completed("two:2/inst", &"a".repeat(64))]);
        let c = fold(&[completed("one:1", &"b".repeat(64))]);
        assert!(!a.targets[0].fingerprint.is_empty());
        assert_eq!(a.targets[0].fingerprint, b.targets[0].fingerprint);
        assert_ne!(a.targets[0].fingerprint, c.targets[0].fingerprint);
    }

    #[test]
    fn failed_actions_options_and_tool_logs_are_kept_bounded() {
        let failed = wrap(
            Some(Id::ActionCompleted(
                bep::build_event_id::ActionCompletedId {
                    label: "//a:b".into(),
                    ..Default::default()
                },
            )),
            Payload::Action(bep::ActionExecuted {
                success: false,
                exit_code: 2,
                r#type: "Genrule".into(),
                stderr: Some(bep::File {
                    name: "stderr".into(),
                    file: Some(bep::file::File::Uri("bytestream://h/blobs/x/1".into())),
                    ..Default::default()
                }),
                command_line: vec!["x".repeat(10_000)],
                ..Default::default()
            }),
        );
        let options = wrap(
            Some(Id::OptionsParsed(Default::default())),
            Payload::OptionsParsed(bep::OptionsParsed {
                explicit_cmd_line: (0..5000).map(|i| format!("--o{i}")).collect(),
                ..Default::default()
            }),
        );
        let inv = fold(&[failed, options]);
        let a = &inv.failed_actions[0];
        assert_eq!(
            (a.label.as_str(), a.mnemonic.as_str(), a.exit_code),
            ("//a:b", "Genrule", 2)
        );
        assert_eq!(a.stderr, "bytestream://h/blobs/x/1");
        assert!(
            a.argv[0].len() <= MAX_OPTION_LEN + 4,
            "long arguments are cut"
        );
        assert_eq!(inv.options.len(), MAX_OPTIONS);
    }

    #[test]
    fn undecodable_events_are_counted_not_fatal() {
        let raw = v1::BuildEvent {
            event: Some(v1::build_event::Event::BazelEvent(prost_types::Any {
                type_url: BAZEL_EVENT_TYPE.into(),
                value: vec![0xff, 0xff, 0xff],
            })),
            ..Default::default()
        };
        let inv = fold(&[raw, started(1)]);
        assert_eq!(inv.undecodable_events, 1);
        assert_eq!(inv.event_count, 2);
        assert_eq!(inv.command, "test");
    }

    #[test]
    fn a_disconnect_only_ends_a_running_invocation() {
        let mut done = fold(&[started(1), finished(true, 2), finished_stream()]);
        done.disconnect();
        assert_eq!(done.status, Status::Succeeded);
        let mut running = fold(&[started(1)]);
        running.disconnect();
        assert_eq!(running.status, Status::Disconnected);
    }
}
