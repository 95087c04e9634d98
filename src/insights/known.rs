//! What a pod knows of the last action of each identity (`misses`): a
//! bounded table in memory, filled from the rounds this pod records and
//! from the rounds other pods store, read as they appear (and newest first
//! when the pod starts). Telling a new action from a changed one then costs
//! no database read per fresh result, and storing what was learnt costs one
//! appended row per round instead of a row per identity: rows keyed by a
//! random hash touched a random page of the table (and a page of the
//! write-ahead log, and again at its checkpoint) for every action written.

use std::collections::HashMap;
use std::sync::Arc;

use super::misses::{function_name, named_function, parse_digest};
use crate::bes::store::EventStore;
use crate::digest::Digest;
use crate::error::Result;

/// An identity's hash (the leading half of its BLAKE3).
pub(crate) type Identity = [u8; 16];

/// The last action of an identity and who wrote its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The identity's hash.
    pub identity: Identity,
    /// The action.
    pub action: Digest,
    /// The invocation that wrote its result (may be empty).
    pub invocation: Arc<str>,
    /// When (ms since the epoch).
    pub seen_at: i64,
}

/// The fingerprints one pod recorded in one round, stored as one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintRound {
    /// The row's id: the pod and the round's number in it.
    pub round: String,
    /// The pod (a random id per process).
    pub pod: String,
    /// When the round was stored (ms since the epoch).
    pub seen_at: i64,
    /// What it recorded, in order.
    pub fingerprints: Vec<Fingerprint>,
}

/// A fingerprint as stored: a tuple of identity (hex), action
/// (`hash/size`), digest function (empty for SHA-256), invocation (null
/// when it is the previous row's: a round is mostly one build's) and when,
/// no field names; the hex is written straight into the row. Beside it,
/// the round's previous fingerprint.
struct Stored<'a>(&'a Fingerprint, Option<&'a Fingerprint>);

impl serde::Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let f = self.0;
        let mut hex = [0u8; 32];
        hex::encode_to_slice(f.identity, &mut hex).map_err(serde::ser::Error::custom)?;
        let hex = std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?;
        let mut t = s.serialize_tuple(5)?;
        t.serialize_element(hex)?;
        t.serialize_element(&Shown(&f.action))?;
        t.serialize_element(function_name(f.action.function))?;
        if self.1.is_some_and(|p| p.invocation == f.invocation) {
            t.serialize_element(&())?;
        } else {
            t.serialize_element(&*f.invocation)?;
        }
        t.serialize_element(&f.seen_at)?;
        t.end()
    }
}

/// A value serialized as its `Display` text, without an owned copy.
struct Shown<'a, T>(&'a T);

impl<T: std::fmt::Display> serde::Serialize for Shown<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

impl FingerprintRound {
    /// The row's JSON: an array of [`Stored`] tuples.
    pub fn encode(&self) -> Result<String> {
        let previous = std::iter::once(None).chain(self.fingerprints.iter().map(Some));
        let rows: Vec<Stored<'_>> = self
            .fingerprints
            .iter()
            .zip(previous)
            .map(|(f, p)| Stored(f, p))
            .collect();
        serde_json::to_string(&rows)
            .map_err(|e| crate::error::Error::internal_from("encoding fingerprints", e))
    }

    /// A row read back; None if it is not JSON of [`Stored`] tuples (an
    /// entry that does not parse is left out).
    pub fn decode(round: String, pod: String, seen_at: i64, json: &str) -> Option<Self> {
        let rows: Vec<(String, String, String, Option<String>, i64)> =
            serde_json::from_str(json).ok()?;
        let mut invocation: Arc<str> = Arc::from("");
        let fingerprints = rows
            .into_iter()
            .filter_map(|(identity, action, function, named, seen_at)| {
                if let Some(named) = named {
                    invocation = named.into();
                }
                let mut id = Identity::default();
                hex::decode_to_slice(&identity, &mut id).ok()?;
                Some(Fingerprint {
                    identity: id,
                    action: parse_digest(named_function(&function)?, &action)?,
                    invocation: invocation.clone(),
                    seen_at,
                })
            })
            .collect();
        Some(FingerprintRound {
            round,
            pod,
            seen_at,
            fingerprints,
        })
    }
}

/// Identities kept in memory, at most (two generations of half as many:
/// about 100 bytes each, some 25 MB when full). An identity that fell out
/// is taken for new when its action comes again.
const KNOWN_MAX: usize = 1 << 18;

/// How often the rounds other pods stored are read, at most.
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How far back each read of other pods' rounds looks: a round is stamped
/// before its transaction commits, so one committed late is still found.
const TAIL_MARGIN_MS: i64 = 60_000;

/// Rounds read at start-up, at most (newest first).
const LOAD_ROUNDS: i64 = 20_000;

/// Round ids one read of other pods' rounds lists, at most.
const TAIL_ROUNDS: i64 = 5_000;

#[derive(Debug, Clone)]
struct Last {
    action: Digest,
    invocation: Arc<str>,
    seen_at: i64,
}

/// The last action of the identities seen lately, by this pod and the
/// others; see the module's comment.
pub(crate) struct Known {
    current: HashMap<Identity, Last, foldhash::fast::RandomState>,
    previous: HashMap<Identity, Last, foldhash::fast::RandomState>,
    pod: String,
    rounds: u64,
    /// Other pods' rounds already read (by id), with their times.
    applied: HashMap<String, i64>,
    loaded: bool,
    tailed: Option<std::time::Instant>,
    tail_since: i64,
}

impl Known {
    pub(crate) fn new() -> Known {
        Known {
            current: HashMap::default(),
            previous: HashMap::default(),
            pod: uuid::Uuid::new_v4().to_string(),
            rounds: 0,
            applied: HashMap::new(),
            loaded: false,
            tailed: None,
            tail_since: 0,
        }
    }

    /// The last action of `identity` and who wrote it, if known.
    pub(crate) fn get(&self, identity: &Identity) -> Option<(Digest, &Arc<str>)> {
        self.current
            .get(identity)
            .or_else(|| self.previous.get(identity))
            .map(|l| (l.action, &l.invocation))
    }

    /// Makes `f` its identity's last action, unless a later one is known.
    pub(crate) fn learn(&mut self, f: &Fingerprint) {
        let last = || Last {
            action: f.action,
            invocation: f.invocation.clone(),
            seen_at: f.seen_at,
        };
        if let Some(l) = self.current.get_mut(&f.identity) {
            if l.seen_at <= f.seen_at {
                *l = last();
            }
            return;
        }
        if self
            .previous
            .get(&f.identity)
            .is_some_and(|l| l.seen_at > f.seen_at)
        {
            return;
        }
        if self.current.len() >= KNOWN_MAX / 2 {
            // Not sized for a whole generation up front: entries landing
            // anywhere in a full-size table would make all of it resident
            // after a few thousand, where a growing one stays dense.
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(f.identity, last());
    }

    /// The round to store `fingerprints` as (None if there are none).
    pub(crate) fn round(&mut self, fingerprints: Vec<Fingerprint>) -> Option<FingerprintRound> {
        if fingerprints.is_empty() {
            return None;
        }
        self.rounds += 1;
        Some(FingerprintRound {
            round: format!("{}/{}", self.pod, self.rounds),
            pod: self.pod.clone(),
            seen_at: crate::time::now_ms(),
            fingerprints,
        })
    }

    /// Reads what other pods stored since the last time (at most every
    /// [`TAIL_EVERY`]); the first time, the newest rounds stored.
    pub(crate) async fn catch_up(&mut self, events: &dyn EventStore) -> Result<()> {
        if self.tailed.is_some_and(|t| t.elapsed() < TAIL_EVERY) {
            return Ok(());
        }
        let started = crate::time::now_ms();
        let limit = if self.loaded {
            TAIL_ROUNDS
        } else {
            LOAD_ROUNDS
        };
        let ids: Vec<String> = events
            .fingerprint_round_ids(self.tail_since, &self.pod, limit)
            .await?
            .into_iter()
            .filter(|(id, _)| !self.applied.contains_key(id))
            .map(|(id, _)| id)
            .collect();
        for group in ids.chunks(100) {
            if !self.loaded && self.current.len() + self.previous.len() >= KNOWN_MAX {
                break;
            }
            for round in events.fingerprint_rounds(group).await? {
                for f in &round.fingerprints {
                    self.learn(f);
                }
                self.applied.insert(round.round, round.seen_at);
            }
        }
        self.loaded = true;
        self.tailed = Some(std::time::Instant::now());
        self.tail_since = started - TAIL_MARGIN_MS;
        let since = self.tail_since;
        self.applied.retain(|_, seen| *seen >= since);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn fingerprint(id: u8, action: u8, seen_at: i64) -> Fingerprint {
        Fingerprint {
            identity: [id; 16],
            action: DigestFunction::Sha256.digest_of(&[action]),
            invocation: "inv \"quoted\"".into(),
            seen_at,
        }
    }

    #[test]
    fn a_round_reads_back_as_written() {
        let mut known = Known::new();
        let mut blake = fingerprint(2, 2, 6);
        blake.action = DigestFunction::Blake3.digest_of(&[2]);
        let mut other = fingerprint(3, 3, 7);
        other.invocation = "".into();
        let round = known
            .round(vec![
                fingerprint(1, 1, 5),
                blake,
                other,
                fingerprint(4, 4, 8),
            ])
            .unwrap();
        let json = round.encode().unwrap();
        // The second row's invocation is the first's: left out.
        assert_eq!(json.matches("quoted").count(), 2, "{json}");
        let back =
            FingerprintRound::decode(round.round.clone(), round.pod.clone(), round.seen_at, &json);
        assert_eq!(back.as_ref(), Some(&round));
        // Rows that name every invocation (as stored before) read too.
        let old = format!(
            "[[\"{}\",\"{}\",\"\",\"inv\",5]]",
            "01".repeat(16),
            round.fingerprints[0].action
        );
        let back = FingerprintRound::decode(String::new(), String::new(), 0, &old).unwrap();
        assert_eq!(&*back.fingerprints[0].invocation, "inv");
        assert!(known.round(Vec::new()).is_none());
        assert_eq!(
            FingerprintRound::decode(round.round, round.pod, 0, "{"),
            None
        );
    }

    #[test]
    fn a_later_action_wins_and_the_table_stays_bounded() {
        let mut known = Known::new();
        known.learn(&fingerprint(1, 2, 10));
        known.learn(&fingerprint(1, 1, 5));
        let digest = DigestFunction::Sha256.digest_of(&[2]);
        assert_eq!(known.get(&[1; 16]).map(|(d, _)| d), Some(digest));
        for n in 0..(KNOWN_MAX as u32 + 10) {
            let mut f = fingerprint(0, 0, 1);
            f.identity[..4].copy_from_slice(&n.to_le_bytes());
            f.identity[15] = 9;
            known.learn(&f);
        }
        assert!(known.current.len() + known.previous.len() <= KNOWN_MAX);
    }
}
