//! Why did this action miss: every action whose result is written fresh
//! (nothing was cached under its digest) is set beside the last action of
//! the same identity across builds — instance, target, mnemonic and
//! output paths — and recorded as a miss of the invocation that wrote the
//! result: new, the same action again (its result had gone), or changed.
//!
//! The write only hashes its identity (from the result's output paths, so
//! nothing is read) and leaves it in a buffer; a background task takes the
//! buffer every 200 ms: one query for the identities this pod does not
//! know, one transaction for the rows. What changed in a changed action is
//! compared only when someone reads the misses (`explain`).
//!
//! The configuration id Bazel sends is left out of the identity on
//! purpose: a `--copt` or an `--action_env` changes it, and those are
//! exactly the changes a miss should be explained by; the output paths
//! already tell configurations with different output directories apart.

use serde::{Deserialize, Serialize};

use super::Writer;
use std::collections::HashMap;

pub use super::diff::Cause;
use crate::bes::store::EventStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::proto::reapi::ActionResult;

/// What is kept of the last action of an identity: its digest and who
/// wrote its result, about 150 bytes; the Action itself is read back from
/// the CAS when a later action of the identity differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// BLAKE3 of the identity, hex.
    pub identity: String,
    /// The Action, `hash/size`.
    pub action: String,
    /// The invocation that wrote its result (may be empty).
    pub invocation: String,
    /// When (ms since the epoch).
    pub seen_at: i64,
}

/// A missed action and why, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    /// The invocation that missed (wrote the new result), or empty.
    pub invocation: String,
    /// The instance the action ran in.
    pub instance: String,
    /// `hash/size`.
    pub action_digest: String,
    /// The target Bazel named (RequestMetadata), or empty.
    pub target: String,
    /// The action's kind Bazel named, or empty.
    pub mnemonic: String,
    /// The earlier action of the same identity; empty for a new action.
    pub previous_digest: String,
    /// Who wrote the earlier action's result, if known.
    pub previous_invocation: String,
    /// What differs, at most `diff::MAX_CAUSES`; empty until compared
    /// (`explain`).
    pub causes: Vec<Cause>,
    /// The digest function of both actions; empty for SHA-256.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest_function: String,
    /// When it was recorded (ms since the epoch).
    pub seen_at: i64,
}

/// A fresh result, buffered for the background recorder.
#[derive(Debug)]
pub(crate) struct Written {
    pub identity: String,
    pub instance: String,
    pub action: Digest,
    pub writer: Writer,
    pub seen_at: i64,
}

/// The identity's hash: instance, target, mnemonic and the sorted output
/// paths of the result, each length-prefixed so no two identities run
/// together. The result's paths are the Command's declared outputs that
/// the action produced, so nothing needs reading.
pub(crate) fn identity(instance: &str, writer: &Writer, result: &ActionResult) -> String {
    let mut outputs: Vec<&str> = result
        .output_files
        .iter()
        .map(|f| f.path.as_str())
        .chain(result.output_directories.iter().map(|d| d.path.as_str()))
        .chain(result.output_symlinks.iter().map(|l| l.path.as_str()))
        .chain(result.output_file_symlinks.iter().map(|l| l.path.as_str()))
        .chain(
            result
                .output_directory_symlinks
                .iter()
                .map(|l| l.path.as_str()),
        )
        .collect();
    outputs.sort_unstable();
    outputs.dedup();
    // BLAKE3 on the stack: this runs on every fresh result's write path,
    // where SHA-256's context allocation cost more than the hashing.
    let mut h = blake3::Hasher::new();
    for part in [instance, &writer.target, &writer.mnemonic]
        .into_iter()
        .chain(outputs)
    {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// How long this pod trusts the last action it saw of an identity before
/// asking the database again (another pod may have seen a later one).
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Slots of the table of identities whose last action this pod keeps in
/// memory (a power of two; about 300 bytes per filled slot: some 40 MB
/// when all are).
const KNOWN_SLOTS: usize = 1 << 17;

/// The last action of identities seen lately: a direct-mapped table (a
/// slot per identity's leading hash bits, a newer identity taking the slot
/// of an older one), owned by the one background task, so that looking an
/// identity up costs a slot read rather than a concurrent cache's
/// bookkeeping on every fresh result. An entry older than [`KNOWN_FOR`]
/// is not trusted (another pod may have seen a later action).
struct Known {
    slots: Vec<Option<Box<(Fingerprint, std::time::Instant)>>>,
}

impl Known {
    fn new() -> Known {
        Known {
            slots: (0..KNOWN_SLOTS).map(|_| None).collect(),
        }
    }

    fn slot(identity: &str) -> usize {
        let lead = identity.get(..8).unwrap_or("");
        u32::from_str_radix(lead, 16).unwrap_or(0) as usize % KNOWN_SLOTS
    }

    fn get(&self, identity: &str) -> Option<&Fingerprint> {
        self.slots[Self::slot(identity)]
            .as_ref()
            .filter(|e| e.0.identity == identity && e.1.elapsed() < KNOWN_FOR)
            .map(|e| &e.0)
    }

    fn insert(&mut self, f: Fingerprint) {
        let slot = Self::slot(&f.identity);
        self.slots[slot] = Some(Box::new((f, std::time::Instant::now())));
    }
}

/// The background recorder's state: the last action of identities seen
/// lately, and what was recorded since the last time it was stored.
pub(crate) struct Recorder {
    known: Known,
    changed: HashMap<String, Fingerprint>,
    misses: Vec<Miss>,
    /// Results recorded and not yet stored.
    pending: i64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            known: Known::new(),
            changed: HashMap::new(),
            misses: Vec::new(),
            pending: 0,
        }
    }

    /// Records a batch of fresh results, in order (a later result of an
    /// identity is set beside an earlier one of the same batch); the
    /// database is asked only for identities this pod does not know.
    /// Returns each miss's instance and kind (`new`, `evicted`, `changed`).
    pub(crate) async fn record(
        &mut self,
        events: &dyn EventStore,
        batch: Vec<Written>,
    ) -> Result<Vec<(String, &'static str)>> {
        let mut unknown: Vec<String> = batch
            .iter()
            .filter(|w| self.known.get(&w.identity).is_none())
            .map(|w| w.identity.clone())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            for (_, f) in events.fingerprints(&unknown).await? {
                self.known.insert(f);
            }
        }
        self.pending += batch.len() as i64;
        let mut kinds = Vec::with_capacity(batch.len());
        for w in batch {
            let action_digest = w.action.to_string();
            let previous = self.known.get(&w.identity).cloned();
            let (kind, causes) = match &previous {
                None => ("new", vec![Cause::new("new", "", "new action".into())]),
                Some(p) if p.action == action_digest => (
                    "evicted",
                    vec![Cause::new(
                        "evicted",
                        "",
                        "same action as before: its result was no longer cached".into(),
                    )],
                ),
                // Compared when someone reads it.
                Some(_) => ("changed", Vec::new()),
            };
            kinds.push((w.instance.clone(), kind));
            self.misses.push(Miss {
                invocation: w.writer.invocation.clone(),
                instance: w.instance,
                action_digest: action_digest.clone(),
                target: w.writer.target,
                mnemonic: w.writer.mnemonic,
                previous_digest: previous
                    .as_ref()
                    .map(|p| p.action.clone())
                    .unwrap_or_default(),
                previous_invocation: previous.map(|p| p.invocation).unwrap_or_default(),
                causes,
                // SHA-256 (nearly every action) is left unsaid.
                digest_function: match w.action.function {
                    crate::digest::DigestFunction::Sha256 => String::new(),
                    f => f.name().to_string(),
                },
                seen_at: w.seen_at,
            });
            let fingerprint = Fingerprint {
                identity: w.identity.clone(),
                action: action_digest,
                invocation: w.writer.invocation,
                seen_at: w.seen_at,
            };
            self.known.insert(fingerprint.clone());
            self.changed.insert(w.identity, fingerprint);
        }
        Ok(kinds)
    }

    /// Stores what was recorded since the last call, in one transaction;
    /// returns how many results that covered (what is dropped on an error
    /// is logged: the queue must not grow without bound).
    pub(crate) async fn store(&mut self, events: &dyn EventStore) -> i64 {
        let fingerprints: Vec<Fingerprint> = self.changed.drain().map(|(_, f)| f).collect();
        let misses = std::mem::take(&mut self.misses);
        if let Err(e) = events.record_misses(&fingerprints, &misses).await {
            tracing::warn!(error = %e, misses = misses.len(), "could not store cache misses");
        }
        std::mem::take(&mut self.pending)
    }
}

/// `all` misses of an invocation as they are listed: by target, an action
/// written twice (its result evicted in between) once, as first seen; at
/// most `limit`.
pub fn listed(mut all: Vec<Miss>, limit: i64) -> Vec<Miss> {
    all.sort_by(|a, b| {
        (&a.target, &a.mnemonic, &a.action_digest, a.seen_at).cmp(&(
            &b.target,
            &b.mnemonic,
            &b.action_digest,
            b.seen_at,
        ))
    });
    all.dedup_by(|later, first| {
        later.action_digest == first.action_digest && later.instance == first.instance
    });
    all.truncate(usize::try_from(limit.max(0)).unwrap_or(usize::MAX));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::OutputFile;

    fn result(paths: &[&str]) -> ActionResult {
        ActionResult {
            output_files: paths
                .iter()
                .map(|p| OutputFile {
                    path: p.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_identity_is_the_outputs_whatever_their_order_and_the_writer() {
        let w = Writer {
            invocation: "i1".into(),
            target: "//a:b".into(),
            mnemonic: "CppCompile".into(),
        };
        let other_invocation = Writer {
            invocation: "i2".into(),
            ..w.clone()
        };
        let a = identity("", &w, &result(&["x.o", "x.d"]));
        assert_eq!(a, identity("", &other_invocation, &result(&["x.d", "x.o"])));
        assert_ne!(a, identity("other", &w, &result(&["x.o", "x.d"])));
        assert_ne!(a, identity("", &w, &result(&["x.o"])));
        let renamed = Writer {
            target: "//a:c".into(),
            ..w.clone()
        };
        assert_ne!(a, identity("", &renamed, &result(&["x.o", "x.d"])));
    }

    #[tokio::test]
    async fn a_batch_is_recorded_in_order_and_its_last_fingerprint_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db?mode=rwc", dir.path().display());
        let events = crate::bes::sql::SqlEventStore::connect(&url).await.unwrap();
        let writer = Writer {
            invocation: "inv".into(),
            target: "//t:t".into(),
            mnemonic: "Genrule".into(),
        };
        let written = |n: u8| Written {
            identity: "same".into(),
            instance: String::new(),
            action: DigestFunction::Sha256.digest_of(&[n]),
            writer: writer.clone(),
            seen_at: 1,
        };
        let mut recorder = Recorder::new();
        let kinds = recorder
            .record(&events, vec![written(1), written(1), written(2)])
            .await
            .unwrap();
        // New, then the same action again (its result had gone), then a
        // different action, compared only when read.
        let kinds: Vec<&str> = kinds.iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds, ["new", "evicted", "changed"]);
        assert_eq!(recorder.store(&events).await, 3);
        let kept = events.fingerprints(&["same".into()]).await.unwrap();
        assert_eq!(
            kept["same"].action,
            DigestFunction::Sha256.digest_of(&[2]).to_string()
        );
        let listed = events.misses("inv", 10).await.unwrap();
        assert_eq!(listed.len(), 2, "each action once: {listed:?}");
        assert_eq!(listed[0].causes[0].kind, "new");
        assert!(listed[1].causes.is_empty(), "not compared yet");
        assert_eq!(listed[1].digest_function, "", "SHA-256 is the default");
        // A recorder that does not know the identity asks the database.
        let mut fresh = Recorder::new();
        let kinds = fresh.record(&events, vec![written(2)]).await.unwrap();
        assert_eq!(kinds, [(String::new(), "evicted")]);
    }
}
