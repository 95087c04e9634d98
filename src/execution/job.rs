//! A job: one action queued, running or finished, as the scheduler's data
//! stores keep it. Everything a pod needs to report on, hand out or finish a
//! job is in this row; no pod holds job state of its own.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Where a job is, with REAPI's ExecutionStage numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting for a worker.
    Queued = 2,
    /// A worker holds its lease.
    Executing = 3,
    /// Finished: `response` holds the ExecuteResponse.
    Completed = 4,
}

impl Stage {
    /// From the stored number.
    pub fn from_i64(n: i64) -> Result<Stage> {
        Ok(match n {
            2 => Stage::Queued,
            3 => Stage::Executing,
            4 => Stage::Completed,
            _ => return Err(Error::internal(format!("unknown job stage {n}"))),
        })
    }

    /// Its name, as ListOperations filters and pages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "QUEUED",
            Stage::Executing => "EXECUTING",
            Stage::Completed => "COMPLETED",
        }
    }

    /// Parses a ListOperations filter value (`QUEUED`, `EXECUTING`, `COMPLETED`).
    pub fn parse(name: &str) -> Option<Stage> {
        match name.to_ascii_uppercase().as_str() {
            "QUEUED" => Some(Stage::Queued),
            "EXECUTING" => Some(Stage::Executing),
            "COMPLETED" => Some(Stage::Completed),
            _ => None,
        }
    }
}

/// Unfinished jobs of one platform: what autoscalers watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The platform's stored form ([`Platform::encode`]).
    pub platform: String,
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs a worker runs.
    pub executing: u64,
    /// When the oldest queued job was queued (ms), 0 when none is.
    pub oldest_queued_at: i64,
}

/// Platform properties an action requires, sorted and without duplicates, so
/// equal requirements have one canonical (stored) form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Platform(pub Vec<(String, String)>);

impl Platform {
    /// Canonicalises a list of (name, value) pairs.
    pub fn new(mut props: Vec<(String, String)>) -> Platform {
        props.sort();
        props.dedup();
        Platform(props)
    }

    /// The stored form (JSON), identical for equal platforms.
    pub fn encode(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// Reads the stored form.
    pub fn decode(text: &str) -> Result<Platform> {
        serde_json::from_str(text)
            .map(Platform)
            .map_err(|e| Error::internal_from(format!("corrupt job platform {text:?}"), e))
    }

    /// True when a worker offering `offers` may run it: every required
    /// property is among the worker's values for that name, or the worker
    /// offers [`ANY_VALUE`] for it (a property it judges itself, such as a
    /// network request or a container image).
    pub fn satisfied_by(&self, offers: &Offers) -> bool {
        self.0.iter().all(|(k, v)| {
            offers
                .get(k)
                .is_some_and(|values| values.contains(v) || values.contains(ANY_VALUE))
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// The value a worker offers for a property it accepts with any value.
pub const ANY_VALUE: &str = "*";

/// What a worker offers: each property name with every value it has (a
/// worker may offer several, e.g. two ISAs).
pub type Offers = BTreeMap<String, BTreeSet<String>>;

/// One job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique id; the operation name ends with it.
    pub id: String,
    /// The instance it was submitted to.
    pub instance: String,
    /// The action's digest.
    pub action_digest: Digest,
    /// The encoded Action handed to workers (its timeout already capped).
    pub action: Bytes,
    /// Required worker properties.
    pub platform: Platform,
    /// Lower runs sooner (REAPI's convention).
    pub priority: i32,
    /// Results are not written to the action cache.
    pub do_not_cache: bool,
    /// Identical cacheable actions share one job through this key while it
    /// is unfinished.
    pub merge_key: Option<String>,
    /// Where it is.
    pub stage: Stage,
    /// The bot session holding its lease, while executing.
    pub bot: Option<String>,
    /// When that lease runs out (ms since the epoch) unless the bot renews it.
    pub lease_expires: i64,
    /// Runs started so far (a vanished worker's run counts).
    pub attempts: u32,
    /// Finished by CancelOperation.
    pub cancelled: bool,
    /// First queued (ms).
    pub queued_at: i64,
    /// Last queued (ms): differs from `queued_at` after a retry.
    pub ready_at: i64,
    /// Last taken by a worker (ms), or 0.
    pub started_at: i64,
    /// Finished (ms), or 0.
    pub completed_at: i64,
    /// The encoded ExecuteResponse, once finished.
    pub response: Option<Bytes>,
    /// The submitter's W3C traceparent, so the worker's run joins its trace.
    pub trace: String,
    /// Bumped on every change; watchers compare it.
    pub version: i64,
    /// The client invocation that queued it (RequestMetadata's
    /// tool_invocation_id), or empty.
    pub invocation_id: String,
    /// The target and the action's mnemonic the client named (so a
    /// result's writer is known when it is stored), or empty.
    pub target: String,
    pub mnemonic: String,
}

/// What ListOperations may select on.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this instance.
    pub instance: Option<String>,
    /// Only this stage.
    pub stage: Option<Stage>,
    /// Only this action hash (lowercase hex).
    pub action_hash: Option<String>,
    /// Only jobs queued at or after this time (ms).
    pub queued_after: Option<i64>,
    /// Only jobs queued before this time (ms).
    pub queued_before: Option<i64>,
    /// Only jobs queued by this client invocation.
    pub invocation_id: Option<String>,
    /// Skip this many (newest first).
    pub offset: u64,
    /// At most this many.
    pub limit: u64,
}

impl JobFilter {
    /// The filter applied in memory, for stores that cannot query.
    pub fn matches(&self, job: &Job) -> bool {
        self.instance.as_ref().is_none_or(|i| *i == job.instance)
            && self.stage.is_none_or(|s| s == job.stage)
            && self
                .action_hash
                .as_ref()
                .is_none_or(|h| *h == job.action_digest.hash_hex())
            && self.queued_after.is_none_or(|t| job.queued_at >= t)
            && self.queued_before.is_none_or(|t| job.queued_at < t)
            && self
                .invocation_id
                .as_ref()
                .is_none_or(|i| *i == job.invocation_id)
    }
}

/// The `platform` label of the demand metrics for a platform's stored form:
/// `p` and 12 hex digits of its SHA-256 (`none` for no properties). An
/// autoscaler selects a worker pool's queue by it (the Helm chart computes
/// it too), so it never changes.
pub(crate) fn label_of(encoded: &str) -> String {
    if encoded == "[]" || encoded.is_empty() {
        return "none".into();
    }
    let hex = crate::digest::DigestFunction::Sha256
        .digest_of(encoded.as_bytes())
        .hash_hex();
    format!("p{}", &hex[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_labels_are_pinned() {
        // Autoscalers select pools' queues by these (the Helm chart computes
        // them too, and tests/deploy pins the same values): never change them.
        let label = |props: &[(&str, &str)]| {
            label_of(
                &Platform::new(
                    props
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                )
                .encode(),
            )
        };
        assert_eq!(label(&[("OSFamily", "linux")]), "p0b6735303307");
        assert_eq!(
            label(&[("size", "large"), ("OSFamily", "linux")]),
            "p527655ea5298"
        );
        assert_eq!(label(&[("size", "large")]), "p05e67cd33bbe");
        assert_eq!(label(&[]), "none");
    }

    fn offers(pairs: &[(&str, &str)]) -> Offers {
        let mut o = Offers::new();
        for (k, v) in pairs {
            o.entry(k.to_string()).or_default().insert(v.to_string());
        }
        o
    }

    #[test]
    fn platform_matching_needs_every_property() {
        let p = Platform::new(vec![
            ("OSFamily".into(), "linux".into()),
            ("ISA".into(), "x86-64".into()),
        ]);
        assert!(p.satisfied_by(&offers(&[
            ("OSFamily", "linux"),
            ("ISA", "x86-64"),
            ("ISA", "arm64"),
            ("pool", "a"),
        ])));
        assert!(!p.satisfied_by(&offers(&[("OSFamily", "linux")])));
        assert!(!p.satisfied_by(&offers(&[("OSFamily", "linux"), ("ISA", "arm64")])));
        assert!(Platform::default().satisfied_by(&Offers::new()));
    }

    #[test]
    fn platform_has_one_canonical_form() {
        let a = Platform::new(vec![("b".into(), "1".into()), ("a".into(), "2".into())]);
        let b = Platform::new(vec![
            ("a".into(), "2".into()),
            ("b".into(), "1".into()),
            ("a".into(), "2".into()),
        ]);
        assert_eq!(a.encode(), b.encode());
        assert_eq!(Platform::decode(&a.encode()).unwrap(), a);
    }
}
