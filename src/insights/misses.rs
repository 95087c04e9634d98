//! Why did this action miss: every action whose result is written fresh
//! (nothing was cached under its digest) is compared with the last action
//! of the same identity across builds — instance, target, mnemonic and
//! output paths — and what differs is recorded as the miss's causes, on
//! the invocation that wrote the result.
//!
//! The write only hashes its identity (from the result's output paths, so
//! nothing is read) and queues it; a background task takes the queue in
//! batches: one query for the batch's earlier fingerprints, the Actions
//! and Commands read back from the CAS only for identities whose digest
//! changed, one transaction for the batch's rows.
//!
//! The configuration id Bazel sends is left out of the identity on
//! purpose: a `--copt` or an `--action_env` changes it, and those are
//! exactly the changes a miss should be explained by; the output paths
//! already tell configurations with different output directories apart.

use prost::Message;
use serde::{Deserialize, Serialize};

use super::Writer;
use std::collections::HashMap;

use super::diff;
pub use super::diff::Cause;
use crate::bes::store::EventStore;
use crate::digest::{Digest, DigestFunction};
use crate::error::Result;
use crate::proto::reapi::{Action, ActionResult, Command};
use crate::store::{BlobStore, Store, get_parsed_blob};

/// Largest Action or Command read for a comparison.
const MAX_MESSAGE: u64 = 1 << 20;

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
    /// What differs, at most `diff::MAX_CAUSES`.
    pub causes: Vec<Cause>,
    /// When it was recorded (ms since the epoch).
    pub seen_at: i64,
}

/// A fresh result, queued for the background comparison.
pub(crate) struct Written {
    pub identity: String,
    pub instance: String,
    pub action: Digest,
    pub writer: Writer,
    /// The instance's CAS, where the Actions and Commands are read.
    pub cas: Store,
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

/// The background comparison's state: the last action of identities seen
/// lately, and what was explained since the last time it was stored.
pub(crate) struct Recorder {
    known: Known,
    changed: HashMap<String, Fingerprint>,
    misses: Vec<Miss>,
    /// Results explained and not yet stored.
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

    /// Results explained and not yet stored.
    pub(crate) fn pending(&self) -> i64 {
        self.pending
    }

    /// Explains a batch of fresh results, in order (a later result of an
    /// identity is compared with an earlier one of the same batch); the
    /// database is asked only for identities this pod does not know.
    /// Returns each miss's instance and the kind of its first cause.
    pub(crate) async fn explain(
        &mut self,
        events: &dyn EventStore,
        batch: Vec<Written>,
    ) -> Result<Vec<(String, String)>> {
        self.pending += batch.len() as i64;
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
        let mut kinds = Vec::with_capacity(batch.len());
        for w in batch {
            let action_digest = w.action.to_string();
            let previous = self.known.get(&w.identity).cloned();
            let causes = match &previous {
                None => vec![Cause::new("new", "", "new action".into())],
                Some(p) if p.action == action_digest => vec![Cause::new(
                    "evicted",
                    "",
                    "same action as before: its result was no longer cached".into(),
                )],
                Some(p) => match parse(w.action.function, &p.action) {
                    Some(before) => compare(w.cas.as_ref(), before, w.action).await?,
                    None => vec![Cause::new(
                        "unknown",
                        "",
                        "the earlier action used another digest function".into(),
                    )],
                },
            };
            kinds.push((w.instance.clone(), causes[0].kind.clone()));
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
                causes: diff::bounded(causes),
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

    /// Stores what was explained since the last call, in one transaction;
    /// returns how many results that covered (what is dropped on an error
    /// is logged: the queue must not grow without bound).
    pub(crate) async fn store(&mut self, events: &dyn EventStore) -> i64 {
        let fingerprints: Vec<Fingerprint> = self.changed.drain().map(|(_, f)| f).collect();
        let misses = std::mem::take(&mut self.misses);
        if let Err(e) = events.record_misses(&fingerprints, &misses).await {
            tracing::warn!(error = %e, misses = misses.len(), "could not store explained cache misses");
        }
        std::mem::take(&mut self.pending)
    }
}

/// The parts of a written action the comparison needs, read from the CAS.
struct Version {
    action: Action,
    command: Command,
    command_digest: Digest,
    input_root: Digest,
}

async fn message<M: Message + Default>(cas: &dyn BlobStore, d: &Digest) -> Option<M> {
    let bytes = get_parsed_blob(cas, d, MAX_MESSAGE).await.ok()?;
    M::decode(bytes).ok()
}

/// The Action under `digest` and its Command, if both are stored (Bazel
/// uploads them with every result it writes; other clients may not).
async fn version(cas: &dyn BlobStore, digest: &Digest) -> Option<Version> {
    let action: Action = message(cas, digest).await?;
    let command_digest =
        Digest::from_proto(digest.function, action.command_digest.as_ref(), "command").ok()?;
    let input_root =
        Digest::from_proto(digest.function, action.input_root_digest.as_ref(), "input").ok()?;
    let command = message(cas, &command_digest).await?;
    Some(Version {
        action,
        command,
        command_digest,
        input_root,
    })
}

fn parse(function: DigestFunction, s: &str) -> Option<Digest> {
    let (hash, size) = s.split_once('/')?;
    Digest::parse(function, hash, size.parse().ok()?).ok()
}

/// What differs between the earlier action `before` and `after`, as far
/// as the CAS still holds both.
async fn compare(cas: &dyn BlobStore, before: Digest, after: Digest) -> Result<Vec<Cause>> {
    let Some(now) = version(cas, &after).await else {
        return Ok(vec![Cause::new(
            "unknown",
            "",
            "the action's Action or Command is not stored to compare (the client did not upload it)"
                .into(),
        )]);
    };
    let Some(earlier) = version(cas, &before).await else {
        return Ok(vec![Cause::new(
            "unknown",
            "",
            "the earlier action is no longer stored to compare".into(),
        )]);
    };
    let mut causes = Vec::new();
    if earlier.command_digest != now.command_digest {
        causes.extend(diff::argv(
            &earlier.command.arguments,
            &now.command.arguments,
        ));
        causes.extend(diff::env(&earlier.command, &now.command));
    }
    let platform = |v: &Version| v.action.platform.clone().or(v.command.platform.clone());
    causes.extend(diff::platform(
        platform(&earlier).as_ref(),
        platform(&now).as_ref(),
    ));
    causes.extend(diff::fields(
        (&earlier.action, &earlier.command),
        (&now.action, &now.command),
    ));
    if earlier.input_root != now.input_root {
        causes.extend(super::inputs::compare(cas, earlier.input_root, now.input_root).await?);
    }
    if causes.is_empty() {
        causes.push(Cause::new(
            "unknown",
            "",
            "the action differs in a field kiln does not compare".into(),
        ));
    }
    Ok(causes)
}

#[cfg(test)]
mod tests {
    use super::*;
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
    async fn a_batch_is_explained_in_order_and_its_last_fingerprint_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db?mode=rwc", dir.path().display());
        let events = crate::bes::sql::SqlEventStore::connect(&url).await.unwrap();
        let cas: Store = std::sync::Arc::new(crate::store::memory::MemoryStore::new(1 << 20));
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
            cas: cas.clone(),
            seen_at: 1,
        };
        let mut recorder = Recorder::new();
        let kinds = recorder
            .explain(&events, vec![written(1), written(1), written(2)])
            .await
            .unwrap();
        // New, then the same action again (its result had gone), then a
        // different action whose Action the client never uploaded.
        let kinds: Vec<&str> = kinds.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, ["new", "evicted", "unknown"]);
        assert_eq!(recorder.store(&events).await, 3);
        let kept = events.fingerprints(&["same".into()]).await.unwrap();
        assert_eq!(
            kept["same"].action,
            DigestFunction::Sha256.digest_of(&[2]).to_string()
        );
        let listed = events.misses("inv", 10).await.unwrap();
        assert_eq!(listed.len(), 2, "each action once: {listed:?}");
        assert_eq!(listed[0].causes[0].kind, "new");
        // A recorder that does not know the identity asks the database.
        let mut fresh = Recorder::new();
        let kinds = fresh.explain(&events, vec![written(2)]).await.unwrap();
        assert_eq!(kinds, [(String::new(), "evicted".to_string())]);
    }
}
