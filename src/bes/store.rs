//! The persistence seam of build events: streams, their events, and
//! invocation summaries. Not the blob store: build events are ordered records
//! with queries, not content-addressed blobs. [`super::sql::SqlEventStore`]
//! implements it on SQLite (the embedded default) and PostgreSQL (many pods).

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::insights::NondeterministicOutput;
use crate::insights::misses::{FingerprintRound, Miss};

use super::summary::Invocation;
use crate::error::Result;

/// Identifies an event stream, as BES's StreamId does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StreamKey {
    /// The build.
    pub build_id: String,
    /// The invocation within it.
    pub invocation_id: String,
    /// The publishing component (StreamId.BuildComponent number).
    pub component: i32,
}

impl StreamKey {
    /// `build_id/invocation_id/component`, the form stream regexes match.
    pub fn display(&self) -> String {
        format!(
            "{}/{}/{}",
            self.build_id, self.invocation_id, self.component
        )
    }
}

/// An event about to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its position in the stream (1, 2, ...).
    pub sequence: i64,
    /// Event kind (see [`super::summary::classify`]).
    pub kind: String,
    /// Target label, if any.
    pub label: String,
    /// Event time, milliseconds since the epoch.
    pub event_time_ms: i64,
    /// The google.devtools.build.v1.BuildEvent as received.
    pub payload: Bytes,
}

/// A stored event.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Its stream.
    pub stream: StreamKey,
    /// Its position.
    pub sequence: i64,
    /// Its kind.
    pub kind: String,
    /// Its label.
    pub label: String,
    /// Event time, milliseconds since the epoch.
    pub event_time_ms: i64,
    /// The encoded google.devtools.build.v1.BuildEvent.
    #[serde(skip)]
    pub payload: Bytes,
}

/// A stream's bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    /// Its key.
    pub key: StreamKey,
    /// Highest stored sequence number.
    pub last_sequence: i64,
    /// Whether component_stream_finished arrived.
    pub finished: bool,
}

/// Which events of an invocation to return.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these kinds (empty: all).
    pub kinds: Vec<String>,
    /// Only events after this sequence number.
    pub after: i64,
    /// Only events with at least this sequence number.
    pub from: i64,
    /// Only events with at most this sequence number (0: no bound).
    pub to: i64,
    /// Only events whose label matches this regex.
    pub label: Option<regex::Regex>,
    /// At most this many (0: a default of 1,000).
    pub limit: i64,
    /// Newest first (page backwards with `to`): the end of a long log
    /// without reading all of it.
    pub newest_first: bool,
}

/// Which invocations to list.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    /// At most this many, newest first (0: 50).
    pub limit: i64,
    /// Only this status.
    pub status: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Only this host.
    pub host: Option<String>,
    /// Only this command (`build`, `test`, ...).
    pub command: Option<String>,
    /// Only invocations with a target pattern containing this text.
    pub pattern: Option<String>,
    /// Only this source repository (`REPO_URL`).
    pub repository: Option<String>,
    /// Only this branch.
    pub branch: Option<String>,
    /// Only invocations given `--build_metadata NAME=VALUE`.
    pub metadata: Option<(String, String)>,
    /// Only invocations started at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only invocations started before this time (ms).
    pub until_ms: Option<i64>,
    /// Skip this many of the newest (pagination).
    pub offset: i64,
}

/// What Bazel says about an invocation, as query parameters: the one
/// definition the list page, the trends page and the JSON API filter with
/// (each page extracts it beside its own parameters).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct SourceQuery {
    /// The user (workspace status BUILD_USER).
    pub user: Option<String>,
    /// The host (BUILD_HOST).
    pub host: Option<String>,
    /// `build`, `test`, ...
    pub command: Option<String>,
    /// A substring of the target patterns.
    pub pattern: Option<String>,
    /// The source repository (REPO_URL).
    pub repository: Option<String>,
    /// The branch.
    pub branch: Option<String>,
    /// `NAME=VALUE`, as given to `--build_metadata`.
    pub metadata: Option<String>,
}

impl SourceQuery {
    /// The parameters given, trimmed: an empty form field filters nothing.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("user", &self.user),
            ("host", &self.host),
            ("command", &self.command),
            ("pattern", &self.pattern),
            ("repository", &self.repository),
            ("branch", &self.branch),
            ("metadata", &self.metadata),
        ]
        .into_iter()
        .filter_map(|(name, v)| {
            let v = v.as_deref()?.trim();
            (!v.is_empty()).then_some((name, v))
        })
        .collect()
    }

    /// `filter` narrowed by these parameters; a metadata pair that is not
    /// `NAME=VALUE` is INVALID_ARGUMENT.
    pub fn narrow(&self, mut filter: InvocationFilter) -> crate::error::Result<InvocationFilter> {
        for (name, v) in self.pairs() {
            let v = Some(v.to_string());
            match name {
                "user" => filter.user = v,
                "host" => filter.host = v,
                "command" => filter.command = v,
                "pattern" => filter.pattern = v,
                "repository" => filter.repository = v,
                "branch" => filter.branch = v,
                "metadata" => filter.metadata = v.as_deref().map(metadata_pair).transpose()?,
                _ => {}
            }
        }
        Ok(filter)
    }
}

/// A `--build_metadata` filter as people write it, `NAME=VALUE`.
fn metadata_pair(text: &str) -> crate::error::Result<(String, String)> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(crate::error::Error::InvalidArgument(format!(
            "metadata: expected NAME=VALUE, got {text:?}"
        ))),
    }
}

/// One line of the invocation list: the columns stored beside the summary,
/// so a page of the list parses no summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InvocationRow {
    /// Bazel's invocation id.
    pub invocation_id: String,
    /// Where it stands.
    pub status: super::summary::Status,
    /// Who ran it.
    pub user: String,
    /// Where.
    pub host: String,
    /// The source repository, or empty.
    pub repository: String,
    /// The branch, or empty.
    pub branch: String,
    /// `build`, `test`, ...
    pub command: String,
    /// The target patterns, space-separated.
    pub patterns: String,
    /// Exit code name, once finished.
    pub exit_code_name: String,
    /// Start (ms since the epoch).
    pub started_at: i64,
    /// Wall time, once known.
    pub duration_ms: Option<i64>,
    /// Remote cache hits.
    pub cache_hits: i64,
    /// Actions executed (hits included).
    pub actions_executed: i64,
    /// Targets configured.
    pub targets: i64,
    /// Targets and tests that failed.
    pub failed: i64,
}

/// One test in one finished invocation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestRun {
    /// The test target.
    pub label: String,
    /// The invocation.
    pub invocation_id: String,
    /// Bazel's overall status.
    pub status: super::summary::TestStatus,
    /// Failed and then passed within the invocation.
    pub flaky: bool,
    /// Attempts.
    pub attempts: i64,
    /// Total run time.
    pub duration_ms: i64,
    /// Served from a cache.
    pub cached: bool,
    /// Its inputs' fingerprint (see [`super::summary::Target::fingerprint`]).
    pub fingerprint: String,
    /// The invocation's start (ms).
    pub started_at: i64,
}

/// One UTC day of invocations and their tests (the trends page).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TrendDay {
    /// The day's start (ms since the epoch).
    pub day_ms: i64,
    /// Invocations started that day.
    pub invocations: i64,
    /// Of them, failed.
    pub failed: i64,
    /// Remote cache hits, summed.
    pub cache_hits: i64,
    /// Actions (hits included), summed.
    pub actions: i64,
    /// Hits kiln counted on the invocations' scorecards.
    pub kiln_hits: i64,
    /// Lookups (hits and misses) kiln counted on them.
    pub kiln_lookups: i64,
    /// Mean wall time of the finished ones.
    pub mean_duration_ms: i64,
    /// Longest wall time.
    pub max_duration_ms: i64,
    /// Test runs.
    pub tests: i64,
    /// Test runs that did not pass.
    pub test_failures: i64,
    /// Distinct tests flaky that day.
    pub flaky_tests: i64,
}

/// One test over a window of invocations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestStats {
    /// The test target.
    pub label: String,
    /// Invocations that ran it.
    pub runs: i64,
    /// Runs that did not pass.
    pub failures: i64,
    /// Runs that failed and then passed within the invocation.
    pub flaky_runs: i64,
    /// Input fingerprints under which it both passed and failed.
    pub mixed_inputs: i64,
    /// Mean run time.
    pub mean_ms: i64,
    /// Longest run time.
    pub max_ms: i64,
}

impl TestStats {
    /// Flaky in the window: a retry passed, or equal inputs gave both
    /// outcomes.
    pub fn flaky(&self) -> bool {
        self.flaky_runs > 0 || self.mixed_inputs > 0
    }
}

/// Durable storage of build events.
///
/// Contract: `commit` is atomic and durable when it returns (the service
/// acknowledges events only then); storing a sequence number twice keeps the
/// first copy.
#[async_trait]
pub trait EventStore: std::fmt::Debug + Send + Sync + 'static {
    /// Deletes up to `limit` invocations last updated before `before_ms`
    /// (with their events and streams), and as many summary-less streams
    /// created before it; returns how many went. Retention calls it until
    /// it returns 0, so no call holds the database for long.
    async fn purge(&self, before_ms: i64, limit: i64) -> Result<u64>;
    /// Creates an empty stream; ALREADY_EXISTS if it exists.
    async fn create_stream(&self, key: &StreamKey) -> Result<()>;
    /// The stream, if it exists.
    async fn stream(&self, key: &StreamKey) -> Result<Option<StreamInfo>>;
    /// In one transaction: creates the stream if needed, stores `events`
    /// (skipping sequence numbers already stored), advances the stream's
    /// last sequence, marks it finished if asked, and stores `invocation`
    /// if given.
    async fn commit(
        &self,
        key: &StreamKey,
        events: &[NewEvent],
        finished: bool,
        invocation: Option<&Invocation>,
    ) -> Result<()>;
    /// One invocation's summary.
    async fn invocation(&self, invocation_id: &str) -> Result<Option<Invocation>>;
    /// Summaries, newest first.
    async fn invocations(&self, filter: &InvocationFilter) -> Result<Vec<Invocation>>;
    /// List rows, newest first.
    async fn invocation_rows(&self, filter: &InvocationFilter) -> Result<Vec<InvocationRow>>;
    /// The last `limit` runs of one test, newest first.
    async fn test_history(&self, label: &str, limit: i64) -> Result<Vec<TestRun>>;
    /// Every test run since `since_ms`, summed per test (at most `limit`
    /// tests, most runs first).
    async fn test_stats(&self, since_ms: i64, limit: i64) -> Result<Vec<TestStats>>;
    /// The invocations matching `filter` (its limit and offset aside) and
    /// their tests, per UTC day, newest first.
    async fn trends(&self, filter: &InvocationFilter) -> Result<Vec<TrendDay>>;
    /// Streams whose `build_id/invocation_id/component` matches `pattern`.
    async fn streams(&self, pattern: &regex::Regex) -> Result<Vec<StreamInfo>>;
    /// The events of an invocation (all its streams), by stream then sequence.
    async fn events(&self, invocation_id: &str, filter: &EventFilter) -> Result<Vec<StoredEvent>>;
    /// Stores the outputs of an action found not deterministic (a row seen
    /// before is kept once).
    async fn record_nondeterminism(&self, rows: &[NondeterministicOutput]) -> Result<()>;
    /// Nondeterministic outputs seen since `since_ms`, newest first, at most
    /// `limit`; only those either of whose writers was `invocation`, if given.
    async fn nondeterminism(
        &self,
        invocation: Option<&str>,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<NondeterministicOutput>>;
    /// The ids and times of fingerprint rounds stored since `since_ms`
    /// by pods other than `pod`, newest first, at most `limit`
    /// (`crate::insights::misses`).
    async fn fingerprint_round_ids(
        &self,
        since_ms: i64,
        pod: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64)>>;
    /// The fingerprint rounds named.
    async fn fingerprint_rounds(&self, ids: &[String]) -> Result<Vec<FingerprintRound>>;
    /// Stores a recording round's fingerprints (if any) and `misses`, in
    /// one transaction.
    async fn record_misses(
        &self,
        round: Option<&FingerprintRound>,
        misses: &[crate::insights::misses::Recorded],
    ) -> Result<()>;
    /// The misses of `invocation` as stored, in chunks (each chunk's id
    /// and its misses), for `crate::insights::explain` to fill in.
    async fn miss_chunks(&self, invocation: &str) -> Result<Vec<(String, Vec<Miss>)>>;
    /// Replaces a chunk of `invocation`'s misses (their causes compared).
    async fn replace_miss_chunk(
        &self,
        invocation: &str,
        chunk: &str,
        misses: &[Miss],
    ) -> Result<()>;
    /// The misses of `invocation` as stored (those not compared yet with
    /// no causes), at most `limit`, by target.
    async fn misses(&self, invocation: &str, limit: i64) -> Result<Vec<Miss>> {
        let chunks = self.miss_chunks(invocation).await?;
        Ok(crate::insights::misses::listed(
            chunks.into_iter().flat_map(|(_, m)| m).collect(),
            limit,
        ))
    }
    /// Stores cache scorecards (`crate::insights::scorecard`), each
    /// replacing its earlier version.
    async fn record_scorecards(&self, rows: &[crate::insights::scorecard::Row]) -> Result<()>;
    /// The cache scorecard of `invocation`, summed over the pods that
    /// counted it; None if none did.
    async fn scorecard(
        &self,
        invocation: &str,
    ) -> Result<Option<crate::insights::scorecard::Scorecard>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_parameters_trimmed_empty_ones_ignored_and_metadata_split() {
        let q = SourceQuery {
            user: Some(" alice ".into()),
            host: Some(String::new()),
            metadata: Some("TEAM=a=b".into()),
            ..Default::default()
        };
        assert_eq!(q.pairs(), [("user", "alice"), ("metadata", "TEAM=a=b")]);
        let f = q.narrow(InvocationFilter::default()).unwrap();
        assert_eq!(f.user.as_deref(), Some("alice"));
        assert_eq!(f.host, None);
        assert_eq!(f.metadata, Some(("TEAM".into(), "a=b".into())));
        let bad = SourceQuery {
            metadata: Some("TEAM".into()),
            ..Default::default()
        };
        assert!(matches!(
            bad.narrow(InvocationFilter::default()),
            Err(crate::error::Error::InvalidArgument(_))
        ));
    }
}
