//! Insights: what kiln learns from the results it stores, beyond serving
//! them:
//! - actions that are not deterministic, found passively: a result written
//!   (an UpdateActionResult, an HTTP cache upload, a finished execution)
//!   over an earlier successful result whose outputs differ, or a sampled
//!   cache hit run again with different outputs (`reexecute`, off by
//!   default); recorded with the target and both invocations, counted and
//!   announced (`flag`);
//! - why an action missed (`misses`, `diff`, `inputs`);
//! - each invocation's cache scorecard (`scorecard`).
//!
//! Domain code: services hand it what a caller said about itself
//! ([`Writer`]); it knows nothing of gRPC beyond that.

mod background;
pub(crate) mod diff;
pub mod explain;
mod flag;
pub(crate) mod inputs;
mod known;
pub mod misses;
pub(crate) mod nondeterminism;
pub mod reexecute;
pub mod savings;
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
use background::{Buffer, count, record_misses, store_scorecards};
use writers::Writers;

/// Who wrote a result, as the call's RequestMetadata says (Bazel names the
/// invocation, the target and the action's mnemonic on every call). Shared
/// strings: a write hands its writer to the miss recorder and the table of
/// recent writers, and copies of every string there showed as malloc time
/// on every fresh result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// The client invocation (`tool_invocation_id`), or empty.
    pub invocation: Arc<str>,
    /// The target the action belongs to, or empty.
    pub target: Arc<str>,
    /// The action's kind (`CppCompile`, `Genrule`), or empty.
    pub mnemonic: Arc<str>,
}

/// At most `max` bytes of a client's string (on a char boundary), so no
/// caller can make a record grow with what it sends.
fn clamp(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

std::thread_local! {
    /// The invocation and mnemonic this thread's last call named.
    static LAST: std::cell::RefCell<(Arc<str>, Arc<str>)> =
        std::cell::RefCell::new((Arc::from(""), Arc::from("")));
}

/// `invocation` and `mnemonic` as shared strings: the last call's on this
/// thread when they are the same (nearly every call of a build names the
/// build and one of a few mnemonics), so neither is allocated again per
/// call nor kept once per record in the insights' tables.
fn shared(invocation: &str, mnemonic: &str) -> (Arc<str>, Arc<str>) {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if *last.0 != *invocation {
            last.0 = Arc::from(invocation);
        }
        if *last.1 != *mnemonic {
            last.1 = Arc::from(mnemonic);
        }
        (last.0.clone(), last.1.clone())
    })
}

impl Writer {
    /// True when the call named no invocation, target or mnemonic.
    fn is_anonymous(&self) -> bool {
        self.invocation.is_empty() && self.target.is_empty() && self.mnemonic.is_empty()
    }

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
        let invocation = match m.tool_invocation_id.as_str() {
            long if long.len() > 128 => "",
            id => id,
        };
        let (invocation, mnemonic) = shared(invocation, clamp(&m.action_mnemonic, 64));
        Writer {
            invocation,
            target: Arc::from(clamp(&m.target_id, 512)),
            mnemonic,
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
    /// Fresh results waiting to be recorded as misses; one that finds the
    /// buffer full is skipped (and counted), so a burst of writes never
    /// queues unbounded work.
    buffer: Arc<Buffer>,
    /// Missed actions by instance and the kind of their first cause.
    missed: Family<Vec<(&'static str, String)>, Counter>,
    /// Which insights are on.
    on: crate::config::InsightsConfig,
    /// Cache scorecards being counted, stored every second.
    scorecards: Arc<scorecard::Scorecards>,
    /// Results buffered or being recorded now (a client that wants to
    /// read its misses knows they are all recorded when this is 0 after
    /// its build).
    running: prometheus_client::metrics::gauge::Gauge,
    /// Which cache hits are run again, and who runs them.
    sampler: Arc<reexecute::Sampler>,
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
            "Actions whose result was written fresh, by instance and kind: new (no earlier action of its target, mnemonic and outputs), evicted (the same action again), changed (what changed is compared when the misses are read), skipped (kiln was too busy to record it)",
            missed.clone(),
        );
        let running = prometheus_client::metrics::gauge::Gauge::default();
        metrics.register(
            "miss_analyses_running",
            "Fresh action results waiting to be recorded as cache misses",
            running.clone(),
        );
        let buffer = Arc::new(Buffer::default());
        if on.misses {
            tokio::spawn(record_misses(
                events.clone(),
                Arc::downgrade(&buffer),
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
            buffer,
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
        let Some(sampled) = self.sampler.sample(instance, action, cached) else {
            return;
        };
        let (me, name) = (self.clone(), instance.to_string());
        tokio::spawn(
            sampled.finish(async move |cached, fresh| {
                me.reexecuted(&name, &action, cached, fresh).await
            }),
        );
    }

    /// Counts what a call did on its invocation's cache scorecard.
    pub fn note(&self, writer: &Writer, seen: scorecard::Seen<'_>) {
        if self.on.scorecards {
            self.scorecards.note(writer, seen);
        }
    }

    /// Called once `action`'s result is stored where none was: records
    /// the miss in the background (`misses`), off the write's path.
    pub fn result_missed(
        &self,
        instance: &str,
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
            seen_at: crate::time::now_ms(),
        };
        if self.buffer.push(written) {
            self.running.inc();
        } else {
            count(&self.missed, instance, "skipped", 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(invocation: &str, target: &str, mnemonic: &str) -> tonic::Request<()> {
        use prost::Message;
        let m = crate::proto::reapi::RequestMetadata {
            tool_invocation_id: invocation.into(),
            target_id: target.into(),
            action_mnemonic: mnemonic.into(),
            ..Default::default()
        };
        let mut req = tonic::Request::new(());
        req.metadata_mut().insert_bin(
            crate::edge::trace::METADATA_HEADER,
            tonic::metadata::BinaryMetadataValue::from_bytes(&m.encode_to_vec()),
        );
        req
    }

    #[test]
    fn a_builds_calls_share_its_invocation_and_mnemonic_and_long_ids_are_dropped() {
        let a = Writer::of(&request("build-1", "//a:a", "CppCompile"));
        let b = Writer::of(&request("build-1", "//a:b", "CppCompile"));
        assert_eq!(
            (&*b.invocation, &*b.target, &*b.mnemonic),
            ("build-1", "//a:b", "CppCompile")
        );
        assert!(Arc::ptr_eq(&a.invocation, &b.invocation));
        assert!(Arc::ptr_eq(&a.mnemonic, &b.mnemonic));
        let c = Writer::of(&request("build-2", "//a:a", "Genrule"));
        assert_eq!((&*c.invocation, &*c.mnemonic), ("build-2", "Genrule"));
        // Another build's writer kept from before is unchanged.
        assert_eq!(&*a.invocation, "build-1");
        let long = Writer::of(&request(&"x".repeat(129), &"t".repeat(600), "M"));
        assert_eq!((&*long.invocation, long.target.len()), ("", 512));
        assert!(Writer::of(&tonic::Request::new(())).is_anonymous());
    }
}
