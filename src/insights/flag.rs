//! Recording an action found not deterministic: from a write over a
//! differing result (`result_written`) or from a re-execution of a cache
//! hit (`reexecuted`), one path records the rows, counts the metric, logs
//! and announces to the webhooks.

use serde::Serialize;

use super::{Insights, NondeterministicOutput, Writer, nondeterminism, reexecute};
use crate::digest::Digest;
use crate::proto::reapi::ActionResult;

/// What the webhooks receive when an action is found not deterministic.
#[derive(Serialize)]
struct Event<'a> {
    event: &'static str,
    outputs: &'a [NondeterministicOutput],
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
    /// Records `action` as not deterministic if the re-execution's `fresh`
    /// outputs differ from the `cached` result's; true if they did.
    pub(super) async fn reexecuted(
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
                before_invocation: earlier.invocation.to_string(),
                after_invocation: writer.invocation.to_string(),
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
