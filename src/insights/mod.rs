//! Insights: what kiln learns from the results it stores, beyond serving
//! them. Today: actions that are not deterministic, found passively. Each
//! time an action's result is written (an UpdateActionResult, an HTTP cache
//! upload, a finished execution) over an earlier successful result whose
//! outputs differ, the differing outputs are recorded with the target and
//! both invocations, counted in a metric and announced to the webhooks.
//!
//! Domain code: services hand it what a caller said about itself
//! ([`Writer`]); it knows nothing of gRPC beyond that.

pub(crate) mod nondeterminism;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::bes::store::EventStore;
use crate::bes::webhook::Webhooks;
use crate::digest::Digest;
use crate::proto::reapi::ActionResult;

/// Result writers remembered per server, so a later differing result can
/// name the invocation of the earlier one (about 200 bytes each).
const WRITERS: u64 = 200_000;

/// Who wrote a result, as the call's RequestMetadata says (Bazel names the
/// invocation, the target and the action's mnemonic on every call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// The client invocation (`tool_invocation_id`), or empty.
    pub invocation: String,
    /// The target the action belongs to, or empty.
    pub target: String,
    /// The action's kind (`CppCompile`, `Genrule`), or empty.
    pub mnemonic: String,
}

/// Keeps at most `max` bytes of a client's string (on a char boundary), so
/// no caller can make a record grow with what it sends.
fn clamp(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Writer {
    /// The writer a call's metadata names.
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Writer {
        let Some(m) = crate::edge::trace::request_metadata_of(metadata) else {
            return Writer::default();
        };
        Writer {
            invocation: clamp(m.tool_invocation_id, 128),
            target: clamp(m.target_id, 512),
            mnemonic: clamp(m.action_mnemonic, 64),
        }
    }
}

/// One output of a nondeterministic action, as stored and shown.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NondeterministicOutput {
    /// The instance.
    pub instance: String,
    /// The action digest, `hash/size`.
    pub action_digest: String,
    /// The output's path.
    pub output_path: String,
    /// The earlier result's value: `hash/size`, `-> target`, or empty.
    pub before: String,
    /// The later result's value.
    pub after: String,
    /// The target (from the later writer, else the earlier).
    pub target: String,
    /// The action's mnemonic.
    pub mnemonic: String,
    /// The invocation that wrote the earlier result, or empty if unknown.
    pub before_invocation: String,
    /// The invocation that wrote the later result, or empty if unknown.
    pub after_invocation: String,
    /// When it was seen (ms since the epoch).
    pub seen_at: i64,
}

/// What the webhooks receive when an action is found not deterministic.
#[derive(Serialize)]
struct Event<'a> {
    event: &'static str,
    outputs: &'a [NondeterministicOutput],
}

/// The insights of one server.
#[derive(Debug)]
pub struct Insights {
    events: Arc<dyn EventStore>,
    writers: moka::sync::Cache<(String, Digest), Arc<Writer>, crate::digest::KeyHasher>,
    flagged: Family<Vec<(&'static str, String)>, Counter>,
    webhooks: Webhooks,
}

impl Insights {
    /// Records into `events`' database, announces to `webhooks`.
    pub fn new(
        events: Arc<dyn EventStore>,
        webhooks: Webhooks,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Insights> {
        let flagged = Family::default();
        metrics.register(
            "nondeterministic_actions",
            "Action results written over an earlier successful result with different outputs, by instance and mnemonic",
            flagged.clone(),
        );
        Arc::new(Insights {
            events,
            writers: moka::sync::Cache::builder()
                .max_capacity(WRITERS)
                .build_with_hasher(crate::digest::KeyHasher::default()),
            flagged,
            webhooks,
        })
    }

    /// Called once `after` is stored for `action`, over `before` (the
    /// result stored until then, if any). Never fails the write: a record
    /// that cannot be stored is logged.
    pub async fn result_written(
        &self,
        instance: &str,
        action: &Digest,
        before: Option<&ActionResult>,
        after: &ActionResult,
        writer: Writer,
    ) {
        let key = (instance.to_string(), *action);
        let writer = Arc::new(writer);
        let earlier = self.writers.get(&key);
        self.writers.insert(key, writer.clone());
        let Some(before) = before else { return };
        let differing = nondeterminism::differing(before, after);
        if differing.is_empty() {
            return;
        }
        let earlier = earlier.unwrap_or_default();
        let pick = |a: &str, b: &str| if a.is_empty() { b } else { a }.to_string();
        let now = crate::time::now_ms();
        let rows: Vec<NondeterministicOutput> = differing
            .into_iter()
            .map(|d| NondeterministicOutput {
                instance: instance.to_string(),
                action_digest: format!("{}/{}", action.hash_hex(), action.size),
                output_path: d.path,
                before: d.before,
                after: d.after,
                target: pick(&writer.target, &earlier.target),
                mnemonic: pick(&writer.mnemonic, &earlier.mnemonic),
                before_invocation: earlier.invocation.clone(),
                after_invocation: writer.invocation.clone(),
                seen_at: now,
            })
            .collect();
        let mnemonic = rows[0].mnemonic.clone();
        self.flagged
            .get_or_create(&vec![
                ("instance", instance.to_string()),
                ("mnemonic", mnemonic),
            ])
            .inc();
        tracing::info!(
            %action,
            target = %rows[0].target,
            outputs = rows.len(),
            "an action wrote outputs that differ from its cached result: it is not deterministic"
        );
        if let Err(e) = self.events.record_nondeterminism(&rows).await {
            tracing::warn!(%action, error = %e, "could not record a nondeterministic action");
        }
        self.webhooks.notify_event(
            &Event {
                event: "nondeterministic_action",
                outputs: &rows,
            },
            &rows[0].target,
        );
    }
}
