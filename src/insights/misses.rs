//! Why did this action miss: every action whose result is written fresh
//! (nothing was cached under its digest) is set beside the last action of
//! the same identity across builds — instance, target, mnemonic and
//! output paths — and recorded as a miss of the invocation that wrote the
//! result: new, the same action again (its result had gone), or changed.
//!
//! The write only hashes its identity (from the result's output paths, so
//! nothing is read) and leaves it in a buffer; a background task takes the
//! buffer every 200 ms, sets each beside what this pod knows of its
//! identity (`known`: no database read per result) and stores the round
//! in one transaction. What changed in a changed action is compared only
//! when someone reads the misses (`explain`).
//!
//! The configuration id Bazel sends is left out of the identity on
//! purpose: a `--copt` or an `--action_env` changes it, and those are
//! exactly the changes a miss should be explained by; the output paths
//! already tell configurations with different output directories apart.

use serde::{Deserialize, Serialize};

use super::Writer;
use std::sync::Arc;

pub use super::diff::Cause;
use crate::bes::store::EventStore;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::ActionResult;

pub use super::known::{Fingerprint, FingerprintRound};
use super::known::{Identity, Known};

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

/// How a miss or a fingerprint names its digest function: SHA-256 (nearly
/// every action) is left unsaid.
pub(crate) fn function_name(function: DigestFunction) -> &'static str {
    match function {
        DigestFunction::Sha256 => "",
        other => other.name(),
    }
}

/// The function a stored name means (see [`function_name`]), or None.
pub(crate) fn named_function(name: &str) -> Option<DigestFunction> {
    if name.is_empty() {
        Some(DigestFunction::Sha256)
    } else {
        DigestFunction::from_name(name)
    }
}

/// A digest as misses and fingerprints store it, `hash/size`, read back.
pub(crate) fn parse_digest(function: DigestFunction, s: &str) -> Option<Digest> {
    let (hash, size) = s.split_once('/')?;
    Digest::parse(function, hash, size.parse().ok()?).ok()
}

/// A fresh result, buffered for the background recorder.
#[derive(Debug)]
pub(crate) struct Written {
    pub identity: Identity,
    pub instance: String,
    pub action: Digest,
    pub writer: Writer,
    pub seen_at: i64,
}

/// The identity's hash: instance, target, mnemonic and the sorted output
/// paths of the result, each length-prefixed so no two identities run
/// together. The result's paths are the Command's declared outputs that
/// the action produced, so nothing needs reading.
pub(crate) fn identity(instance: &str, writer: &Writer, result: &ActionResult) -> Identity {
    let mut outputs: smallvec::SmallVec<[&str; 4]> = result
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
    // The parts in one buffer on the stack, hashed in one call: the same
    // bytes as hashing them one by one, without a hasher's set-up and
    // buffering per part (a profile showed those on every fresh result).
    let mut bytes: smallvec::SmallVec<[u8; 512]> = smallvec::SmallVec::new();
    for part in [instance, &*writer.target, &*writer.mnemonic]
        .into_iter()
        .chain(outputs)
    {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    let h = blake3::hash(&bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.as_bytes()[..16]);
    out
}

/// What a fresh result was to the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissKind {
    /// No earlier action of its identity is known.
    New,
    /// The same action as before: its result had gone.
    Evicted,
    /// Another action than before; what changed is compared when read.
    Changed,
}

impl MissKind {
    /// The name metrics and the API use.
    pub fn name(self) -> &'static str {
        match self {
            MissKind::New => "new",
            MissKind::Evicted => "evicted",
            MissKind::Changed => "changed",
        }
    }

    /// The causes a miss of this kind has without comparing anything (a
    /// changed action's are compared when someone reads them).
    pub fn causes(self) -> Vec<Cause> {
        match self {
            MissKind::New => vec![Cause::new("new", "", "new action".into())],
            MissKind::Evicted => vec![Cause::new(
                "evicted",
                "",
                "same action as before: its result was no longer cached".into(),
            )],
            MissKind::Changed => Vec::new(),
        }
    }
}

/// A miss as the recorder keeps it until it is stored: the writer's
/// shared strings and the digests themselves, so recording a fresh result
/// copies and formats nothing (the store writes it out once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The instance the action ran in.
    pub instance: String,
    /// The action.
    pub action: Digest,
    /// Who wrote its result.
    pub writer: Writer,
    /// What it was to the recorder.
    pub kind: MissKind,
    /// The identity's earlier action and the invocation that wrote its
    /// result; None for a new action.
    pub previous: Option<(Digest, Arc<str>)>,
    /// When it was recorded (ms since the epoch).
    pub seen_at: i64,
}

/// The background recorder's state: the last action of identities seen
/// lately (`known`), and what was recorded since the last time it was
/// stored.
pub(crate) struct Recorder {
    known: Known,
    fingerprints: Vec<Fingerprint>,
    misses: Vec<Recorded>,
    /// Results recorded and not yet stored.
    pending: i64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            known: Known::new(),
            fingerprints: Vec::new(),
            misses: Vec::new(),
            pending: 0,
        }
    }

    /// Records a batch of fresh results, in order (a later result of an
    /// identity is set beside an earlier one of the same batch), after
    /// reading what other pods stored meanwhile. Returns how many misses
    /// of each instance and kind it recorded, in the order first seen.
    pub(crate) async fn record(
        &mut self,
        events: &dyn EventStore,
        batch: impl ExactSizeIterator<Item = Written>,
    ) -> Vec<(String, MissKind, u64)> {
        if let Err(e) = self.known.catch_up(events).await {
            // Recorded all the same, against what this pod knows.
            tracing::warn!(error = %e, "could not read other pods' action fingerprints");
        }
        self.pending += batch.len() as i64;
        let mut counts: Vec<(String, MissKind, u64)> = Vec::new();
        self.misses.reserve(batch.len());
        self.fingerprints.reserve(batch.len());
        for w in batch {
            let previous = self.known.get(&w.identity).map(|(d, i)| (d, i.clone()));
            let kind = match &previous {
                None => MissKind::New,
                Some((p, _)) if *p == w.action => MissKind::Evicted,
                Some(_) => MissKind::Changed,
            };
            match counts
                .iter_mut()
                .find(|(i, k, _)| *k == kind && *i == w.instance)
            {
                Some((_, _, n)) => *n += 1,
                None => counts.push((w.instance.clone(), kind, 1)),
            }
            let fingerprint = Fingerprint {
                identity: w.identity,
                action: w.action,
                invocation: w.writer.invocation.clone(),
                seen_at: w.seen_at,
            };
            self.known.learn(&fingerprint);
            self.fingerprints.push(fingerprint);
            self.misses.push(Recorded {
                instance: w.instance,
                action: w.action,
                writer: w.writer,
                kind,
                previous,
                seen_at: w.seen_at,
            });
        }
        counts
    }

    /// Stores what was recorded since the last call, in one transaction;
    /// returns how many results that covered (what is dropped on an error
    /// is logged: the queue must not grow without bound).
    pub(crate) async fn store(&mut self, events: &dyn EventStore) -> i64 {
        let round = self.known.round(std::mem::take(&mut self.fingerprints));
        let misses = std::mem::take(&mut self.misses);
        if let Err(e) = events.record_misses(round.as_ref(), &misses).await {
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
        // The hash of the length-prefixed parts, as stored identities of
        // earlier versions were computed: an upgrade keeps them.
        let mut h = blake3::Hasher::new();
        for part in ["", "//a:b", "CppCompile", "x.d", "x.o"] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        assert_eq!(a[..], h.finalize().as_bytes()[..16]);
    }

    #[tokio::test]
    async fn a_batch_is_recorded_in_order_and_other_pods_learn_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/e.db?mode=rwc", dir.path().display());
        let events = crate::bes::sql::SqlEventStore::connect(&url).await.unwrap();
        let writer = Writer {
            invocation: "inv".into(),
            target: "//t:t".into(),
            mnemonic: "Genrule".into(),
        };
        let written = |n: u8| Written {
            identity: [7; 16],
            instance: String::new(),
            action: DigestFunction::Sha256.digest_of(&[n]),
            writer: writer.clone(),
            seen_at: crate::time::now_ms(),
        };
        let mut recorder = Recorder::new();
        let kinds = recorder
            .record(
                &events,
                vec![written(1), written(1), written(2)].into_iter(),
            )
            .await;
        // New, then the same action again (its result had gone), then a
        // different action, compared only when read.
        let kinds: Vec<(&str, u64)> = kinds.iter().map(|(_, k, n)| (k.name(), *n)).collect();
        assert_eq!(kinds, [("new", 1), ("evicted", 1), ("changed", 1)]);
        assert_eq!(recorder.store(&events).await, 3);
        let listed = events.misses("inv", 10).await.unwrap();
        assert_eq!(listed.len(), 2, "each action once: {listed:?}");
        assert_eq!(listed[0].causes[0].kind, "new");
        assert!(listed[1].causes.is_empty(), "not compared yet");
        assert_eq!(listed[1].digest_function, "", "SHA-256 is the default");
        assert_eq!(
            listed[1].previous_digest,
            DigestFunction::Sha256.digest_of(&[1]).to_string()
        );
        // Another pod (or this one restarted) reads the stored rounds: it
        // knows the identity's last action.
        let mut other = Recorder::new();
        let kinds = other.record(&events, vec![written(2)].into_iter()).await;
        assert_eq!(kinds, [(String::new(), MissKind::Evicted, 1)]);
        // And a round stored after it started is read by its next round
        // (once a second at most).
        recorder.record(&events, vec![written(3)].into_iter()).await;
        recorder.store(&events).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let third = DigestFunction::Sha256.digest_of(&[3]);
        loop {
            other.known.catch_up(&events).await.unwrap();
            if other.known.get(&[7; 16]).map(|(d, _)| d) == Some(third) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never read the later round"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
