//! Insights: what kiln learns from the results it stores, beyond serving
//! them. Today: actions that are not deterministic, found passively. Each
//! time an action's result is written (an UpdateActionResult, an HTTP cache
//! upload, a finished execution) over an earlier successful result whose
//! outputs differ, the differing outputs are recorded with the target and
//! both invocations, counted in a metric and announced to the webhooks.
//!
//! Domain code: services hand it what a caller said about itself
//! ([`Writer`]); it knows nothing of gRPC beyond that.

mod background;
pub(crate) mod diff;
pub(crate) mod inputs;
pub mod misses;
pub(crate) mod nondeterminism;
pub mod reexecute;
pub mod scorecard;
mod writers;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::bes::store::EventStore;
use crate::bes::webhook::Webhooks;
use crate::digest::Digest;
use crate::proto::reapi::ActionResult;
use background::{QUEUED_MISSES, count, explain_misses, store_scorecards};
use writers::Writers;

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
fn clamp(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Writer {
    /// The writer a call names: from the RequestMetadata the edge decoded,
    /// else (a call that did not pass the edge) from its header. An
    /// invocation id over 128 bytes is dropped, not cut: a cut id would
    /// name another invocation.
    pub fn of<T>(request: &tonic::Request<T>) -> Writer {
        use crate::edge::trace::ClientMetadata;
        let decoded;
        let m = match request.extensions().get::<ClientMetadata>() {
            Some(ClientMetadata(m)) => m.as_ref(),
            None => match crate::edge::trace::request_metadata_of(request.metadata()) {
                Some(m) => {
                    decoded = m;
                    &decoded
                }
                None => return Writer::default(),
            },
        };
        let invocation = &m.tool_invocation_id;
        Writer {
            invocation: if invocation.len() > 128 {
                String::new()
            } else {
                invocation.clone()
            },
            target: clamp(&m.target_id, 512),
            mnemonic: clamp(&m.action_mnemonic, 64),
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
    writers: Writers,
    flagged: Family<Vec<(&'static str, String)>, Counter>,
    /// Mnemonics the metric has a series for: a client names them, so
    /// their number is capped and odd ones are counted as `other`.
    labelled: std::sync::Mutex<std::collections::HashSet<String>>,
    webhooks: Webhooks,
    /// Fresh results waiting for the miss comparison; one that finds the
    /// queue full is skipped (and counted), so a burst of writes never
    /// queues unbounded work.
    queue: tokio::sync::mpsc::Sender<misses::Written>,
    /// Missed actions by instance and the kind of their first cause.
    missed: Family<Vec<(&'static str, String)>, Counter>,
    /// Which insights are on.
    on: crate::config::InsightsConfig,
    /// Cache scorecards being counted, stored every second.
    scorecards: Arc<scorecard::Scorecards>,
    /// Results queued or being compared now (a client that wants to read
    /// its misses knows they are all recorded when this is 0 after its
    /// build).
    running: prometheus_client::metrics::gauge::Gauge,
    /// Which cache hits are run again, and who runs them.
    sampler: Arc<reexecute::Sampler>,
}

/// Distinct mnemonics the metric labels at most.
const MAX_MNEMONIC_LABELS: usize = 100;

/// The metric label for a client's `mnemonic`: itself while it looks like
/// one (letters, digits, `_`) and fewer than [`MAX_MNEMONIC_LABELS`] are
/// `seen`, else `other`, so no client can grow the metric's series without
/// bound.
fn label(seen: &mut std::collections::HashSet<String>, mnemonic: &str) -> String {
    let plain = !mnemonic.is_empty()
        && mnemonic.len() <= 64
        && mnemonic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain && (seen.contains(mnemonic) || seen.len() < MAX_MNEMONIC_LABELS) {
        seen.insert(mnemonic.to_string());
        return mnemonic.to_string();
    }
    "other".into()
}

impl Insights {
    /// Records into `events`' database, announces to `webhooks`.
    pub fn new(
        events: Arc<dyn EventStore>,
        webhooks: Webhooks,
        metrics: &crate::metrics::Metrics,
        on: crate::config::InsightsConfig,
    ) -> Arc<Insights> {
        let flagged = Family::default();
        metrics.register(
            "nondeterministic_actions",
            "Action results written over an earlier successful result with different outputs, by instance and mnemonic",
            flagged.clone(),
        );
        let missed = Family::default();
        metrics.register(
            "missed_actions",
            "Actions whose result was written fresh, by instance and the kind of their first cause (new, input, argv, env, ...; skipped when kiln was too busy to compare)",
            missed.clone(),
        );
        let running = prometheus_client::metrics::gauge::Gauge::default();
        metrics.register(
            "miss_analyses_running",
            "Fresh action results queued or being compared to explain cache misses",
            running.clone(),
        );
        let (queue, waiting) = tokio::sync::mpsc::channel(QUEUED_MISSES);
        if on.misses {
            tokio::spawn(explain_misses(
                events.clone(),
                waiting,
                running.clone(),
                missed.clone(),
            ));
        }
        let scorecards = Arc::new(scorecard::Scorecards::default());
        if on.scorecards {
            tokio::spawn(store_scorecards(
                events.clone(),
                Arc::downgrade(&scorecards),
            ));
        }
        let sampler = Arc::new(reexecute::Sampler::new(&on, metrics));
        Arc::new(Insights {
            sampler,
            scorecards,
            on,
            running,
            events,
            writers: Writers::new(),
            flagged,
            labelled: Default::default(),
            webhooks,
            queue,
            missed,
        })
    }

    /// Who runs sampled cache hits again (the scheduler, built after the
    /// insights; held weakly, so neither keeps the other alive).
    pub fn set_rerun(&self, rerun: std::sync::Weak<dyn reexecute::Rerun>) {
        self.sampler.set(rerun);
    }

    /// Called on every cache hit with the result served: one in
    /// `reexecute_one_in` is run again in the background and recorded as
    /// not deterministic if its outputs differ (see `reexecute`).
    pub fn result_hit(self: &Arc<Self>, instance: &str, action: Digest, cached: &ActionResult) {
        let (me, name) = (self.clone(), instance.to_string());
        self.sampler
            .hit(instance, action, cached, move |cached, fresh| {
                Box::pin(async move {
                    if me.reexecuted(&name, &action, &cached, &fresh).await {
                        "different"
                    } else {
                        "same"
                    }
                })
            });
    }

    /// Records `action` as not deterministic if the re-execution's `fresh`
    /// outputs differ from the `cached` result's; true if they did.
    async fn reexecuted(
        &self,
        instance: &str,
        action: &Digest,
        cached: &ActionResult,
        fresh: &ActionResult,
    ) -> bool {
        let differing = nondeterminism::differing(cached, fresh);
        if differing.is_empty() {
            return false;
        }
        let earlier = self
            .writers
            .get(instance, action)
            .map(|e| e.2.clone())
            .unwrap_or_default();
        let later = Writer {
            invocation: reexecute::INVOCATION.into(),
            target: earlier.target.clone(),
            mnemonic: earlier.mnemonic.clone(),
        };
        self.flag(instance, action, differing, &earlier, &later)
            .await;
        true
    }

    /// Counts what a call did on its invocation's cache scorecard.
    pub fn note(&self, writer: &Writer, seen: scorecard::Seen<'_>) {
        if self.on.scorecards {
            self.scorecards.note(writer, seen);
        }
    }

    /// Called once `action`'s result is stored where none was: explains
    /// the miss in the background (`misses`), off the write's path.
    pub fn result_missed(
        &self,
        instance: &str,
        cas: crate::store::Store,
        action: Digest,
        result: &ActionResult,
        writer: Writer,
    ) {
        if !self.on.misses {
            return;
        }
        let written = misses::Written {
            identity: misses::identity(instance, &writer, result),
            instance: instance.to_string(),
            action,
            writer,
            cas,
            seen_at: crate::time::now_ms(),
        };
        self.running.inc();
        if self.queue.try_send(written).is_err() {
            self.running.dec();
            count(&self.missed, instance, "skipped");
        }
    }

    fn label(&self, mnemonic: &str) -> String {
        label(
            &mut self.labelled.lock().unwrap_or_else(|p| p.into_inner()),
            mnemonic,
        )
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
        if !self.on.nondeterminism {
            return;
        }
        let differing = before.map_or_else(Vec::new, |b| nondeterminism::differing(b, after));
        let earlier = if differing.is_empty() {
            None
        } else {
            self.writers.get(instance, action)
        };
        let entry = self.writers.replace(instance, action, writer);
        if differing.is_empty() {
            return;
        }
        let earlier = earlier.map(|e| e.2.clone()).unwrap_or_default();
        self.flag(instance, action, differing, &earlier, &entry.2)
            .await;
    }

    /// Records, counts, logs and announces the `differing` outputs of
    /// `action`, written by `earlier` and then by `writer`.
    async fn flag(
        &self,
        instance: &str,
        action: &Digest,
        differing: Vec<nondeterminism::Differing>,
        earlier: &Writer,
        writer: &Writer,
    ) {
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
        let mnemonic = self.label(&rows[0].mnemonic);
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_metric_labels_a_bounded_set_of_plain_mnemonics() {
        let mut seen = Default::default();
        assert_eq!(super::label(&mut seen, "CppCompile"), "CppCompile");
        assert_eq!(super::label(&mut seen, "a\"b{c}"), "other");
        assert_eq!(super::label(&mut seen, ""), "other");
        for i in 0..super::MAX_MNEMONIC_LABELS * 2 {
            super::label(&mut seen, &format!("M{i}"));
        }
        assert_eq!(seen.len(), super::MAX_MNEMONIC_LABELS);
        assert_eq!(super::label(&mut seen, "CppCompile"), "CppCompile");
        assert_eq!(super::label(&mut seen, "Brand_new"), "other");
    }
}
