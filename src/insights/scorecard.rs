//! The cache scorecard of an invocation: hits, misses and uploads by
//! mnemonic and by target, bytes down and up, and the time its hits saved
//! (the execution time recorded in the results they served). Counted in
//! memory as calls name their invocation (RequestMetadata), written to the
//! build-event database every second by a background task; each pod writes
//! its own row per invocation and a read sums them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Writer;
pub use super::savings::Savings;
use crate::proto::reapi::ActionResult;

/// Targets counted one by one per invocation; the rest are summed under
/// [`OTHER_TARGETS`], so no client grows a card without bound.
const MAX_TARGETS: usize = 2000;
/// Where targets past [`MAX_TARGETS`] (and calls naming none) are counted.
pub const OTHER_TARGETS: &str = "(other targets)";
/// Mnemonics counted one by one; the rest under `(other)`.
const MAX_MNEMONICS: usize = 200;
/// Invocations counted at once in one pod; calls of more are not counted.
const MAX_LIVE: usize = 10_000;
/// A card nobody added to for this long leaves memory (it is stored).
const IDLE: Duration = Duration::from_secs(600);

/// Counts by mnemonic or target: a hash map, because every call counts into
/// one of up to 2,000 targets (a B-tree compared the target strings at
/// every level, three times per call); stored and shown sorted.
pub type Counted = HashMap<String, Counts, foldhash::fast::RandomState>;

fn sorted<S: serde::Serializer>(map: &Counted, s: S) -> Result<S::Ok, S::Error> {
    map.iter().collect::<BTreeMap<_, _>>().serialize(s)
}

/// Counts of one mnemonic, one target or the whole invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Results served from the cache (GetActionResult, Execute).
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Results written (UpdateActionResult, HTTP cache, finished executions).
    pub uploads: u64,
    /// Actions queued for remote execution (each also a miss, unless its
    /// GetActionResult already counted one).
    #[serde(default)]
    pub executions: u64,
    /// Execution time of the results served, as their metadata records it.
    pub saved_ms: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.uploads += o.uploads;
        self.executions += o.executions;
        self.saved_ms += o.saved_ms;
    }
}

/// One invocation's scorecard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scorecard {
    /// The whole invocation.
    pub totals: Counts,
    /// Blob bytes read (ByteStream, BatchReadBlobs).
    pub bytes_down: u64,
    /// Blob bytes written (ByteStream, BatchUpdateBlobs).
    pub bytes_up: u64,
    /// By the mnemonic calls named.
    #[serde(serialize_with = "sorted")]
    pub by_mnemonic: Counted,
    /// By the target calls named.
    #[serde(serialize_with = "sorted")]
    pub by_target: Counted,
    /// What was not moved because it was stored.
    #[serde(default)]
    pub savings: Savings,
}

/// What a call did, as a scorecard counts it.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// A result served from the cache.
    Hit(&'a ActionResult),
    /// A lookup of an action (its key: [`key`]) that found nothing.
    Miss(u64),
    /// An action (its key) queued for remote execution.
    Executed(u64),
    /// A result written.
    Upload,
    /// Blob bytes read.
    Down(u64),
    /// Blob bytes written.
    Up(u64),
    /// Blobs FindMissingBlobs found stored, and their bytes.
    Present {
        /// How many.
        blobs: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// A blob SpliceBlob assembled from `chunks` chunks.
    Spliced {
        /// The blob's bytes.
        bytes: u64,
        /// Its chunks.
        chunks: u64,
    },
    /// A blob SplitBlob listed as `chunks` chunks.
    Split {
        /// The blob's bytes.
        bytes: u64,
        /// Its chunks.
        chunks: u64,
    },
}

/// An action's key for telling a lookup's miss and its execution apart:
/// the digest's first eight bytes.
pub fn key(action: &crate::digest::Digest) -> u64 {
    let mut lead = [0u8; 8];
    lead.copy_from_slice(&action.hash[..8]);
    u64::from_le_bytes(lead)
}

/// Recent missed lookups remembered per card: Bazel executes an action
/// right after its lookup missed, so a short memory tells them apart.
const RECENT_MISSES: usize = 1024;

/// How long the action that produced `result` ran, from its metadata.
fn execution_ms(result: &ActionResult) -> u64 {
    let Some(m) = &result.execution_metadata else {
        return 0;
    };
    let ms = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or(0, |t| {
            t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)
        })
    };
    let (start, end) = (
        ms(&m.worker_start_timestamp),
        ms(&m.worker_completed_timestamp),
    );
    if start > 0 && end > start {
        // At most a day: a client writes these timestamps.
        (end - start).min(86_400_000) as u64
    } else {
        0
    }
}

/// The counts of `key`: of `other` when it is empty or would be a key past
/// `max`; the key is copied only the first time.
fn bucket<'m>(map: &'m mut Counted, key: &str, max: usize, other: &str) -> &'m mut Counts {
    let key = match key {
        "" => other,
        new if map.len() >= max && !map.contains_key(new) => other,
        known => known,
    };
    if !map.contains_key(key) {
        map.insert(key.to_string(), Counts::default());
    }
    map.get_mut(key).expect("present")
}

impl Scorecard {
    /// Counts `seen`; `missed_before` says an execution's lookup already
    /// counted its miss.
    pub(super) fn note(&mut self, writer: &Writer, seen: Seen<'_>, missed_before: bool) {
        if self.savings.note(seen) {
            return;
        }
        let counts = match seen {
            Seen::Down(n) => {
                self.bytes_down += n;
                return;
            }
            Seen::Up(n) => {
                self.bytes_up += n;
                return;
            }
            Seen::Hit(result) => Counts {
                hits: 1,
                saved_ms: execution_ms(result),
                ..Default::default()
            },
            Seen::Miss(_) => Counts {
                misses: 1,
                ..Default::default()
            },
            Seen::Executed(_) => Counts {
                misses: u64::from(!missed_before),
                executions: 1,
                ..Default::default()
            },
            Seen::Upload => Counts {
                uploads: 1,
                ..Default::default()
            },
            Seen::Present { .. } | Seen::Spliced { .. } | Seen::Split { .. } => return,
        };
        self.totals.add(&counts);
        bucket(
            &mut self.by_mnemonic,
            &writer.mnemonic,
            MAX_MNEMONICS,
            "(other)",
        )
        .add(&counts);
        bucket(
            &mut self.by_target,
            &writer.target,
            MAX_TARGETS,
            OTHER_TARGETS,
        )
        .add(&counts);
    }

    /// Adds another pod's card of the same invocation.
    pub fn add(&mut self, o: &Scorecard) {
        self.totals.add(&o.totals);
        self.bytes_down += o.bytes_down;
        self.bytes_up += o.bytes_up;
        for (k, c) in &o.by_mnemonic {
            self.by_mnemonic.entry(k.clone()).or_default().add(c);
        }
        for (k, c) in &o.by_target {
            self.by_target.entry(k.clone()).or_default().add(c);
        }
        self.savings.add(&o.savings);
    }
}

/// A card being counted in this pod.
#[derive(Debug)]
struct Live {
    /// Its row: a fresh id per card, so a card that left memory and came
    /// back never overwrites the row of the one before.
    id: String,
    card: Scorecard,
    /// Keys of the latest missed lookups, oldest first.
    recent: std::collections::VecDeque<u64>,
    dirty: bool,
    touched: Instant,
}

/// The cards of the invocations this pod is counting.
#[derive(Debug, Default)]
pub(crate) struct Scorecards {
    live: Mutex<HashMap<std::sync::Arc<str>, Live, foldhash::fast::RandomState>>,
}

/// A card to store: invocation, row id, the card.
pub type Row = (String, String, Scorecard);

impl Scorecards {
    pub(crate) fn note(&self, writer: &Writer, seen: Seen<'_>) {
        if writer.invocation.is_empty() {
            return;
        }
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if !live.contains_key(&*writer.invocation) {
            if live.len() >= MAX_LIVE {
                return;
            }
            // The invocation is shared, not copied.
            live.insert(
                writer.invocation.clone(),
                Live {
                    id: uuid::Uuid::new_v4().to_string(),
                    card: Scorecard::default(),
                    recent: Default::default(),
                    dirty: false,
                    touched: Instant::now(),
                },
            );
        }
        let Some(entry) = live.get_mut(&*writer.invocation) else {
            return;
        };
        let missed_before = match seen {
            Seen::Miss(k) => {
                if entry.recent.len() == RECENT_MISSES {
                    entry.recent.pop_front();
                }
                entry.recent.push_back(k);
                false
            }
            Seen::Executed(k) => entry.recent.contains(&k),
            _ => false,
        };
        entry.card.note(writer, seen, missed_before);
        entry.dirty = true;
        entry.touched = Instant::now();
    }

    /// The cards changed since the last call, to store; cards idle for
    /// long leave memory once stored.
    pub(crate) fn take_dirty(&self) -> Vec<Row> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (invocation, l) in live.iter_mut() {
            if l.dirty {
                l.dirty = false;
                out.push((invocation.to_string(), l.id.clone(), l.card.clone()));
            }
        }
        live.retain(|_, l| l.dirty || l.touched.elapsed() < IDLE);
        out
    }

    /// Marks rows that could not be stored as changed again.
    pub(crate) fn unstored(&self, rows: &[Row]) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (invocation, _, _) in rows {
            if let Some(l) = live.get_mut(invocation.as_str()) {
                l.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(target: &str, mnemonic: &str) -> Writer {
        Writer {
            invocation: "inv".into(),
            target: target.into(),
            mnemonic: mnemonic.into(),
        }
    }

    #[test]
    fn counts_by_mnemonic_and_target_with_time_saved() {
        let cards = Scorecards::default();
        let ran_for = |ms: i64| ActionResult {
            execution_metadata: Some(crate::proto::reapi::ExecutedActionMetadata {
                worker_start_timestamp: Some(prost_types::Timestamp {
                    seconds: 100,
                    nanos: 0,
                }),
                worker_completed_timestamp: Some(prost_types::Timestamp {
                    seconds: 100 + ms / 1000,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let compile = writer("//a:a", "CppCompile");
        cards.note(&compile, Seen::Hit(&ran_for(1500)));
        cards.note(&compile, Seen::Miss(1));
        cards.note(&compile, Seen::Executed(1));
        cards.note(&compile, Seen::Executed(2));
        cards.note(&compile, Seen::Upload);
        cards.note(&writer("//b:b", "Genrule"), Seen::Hit(&ran_for(250)));
        cards.note(&compile, Seen::Down(10));
        cards.note(&compile, Seen::Up(7));
        cards.note(&Writer::default(), Seen::Miss(3));
        let rows = cards.take_dirty();
        assert_eq!(rows.len(), 1, "an unnamed invocation is not counted");
        let card = &rows[0].2;
        // Stored with its targets and mnemonics in order, and read back.
        let json = serde_json::to_string(card).unwrap();
        assert!(json.find("//a:a") < json.find("//b:b"), "{json}");
        assert!(json.find("CppCompile") < json.find("Genrule"), "{json}");
        assert_eq!(&serde_json::from_str::<Scorecard>(&json).unwrap(), card);
        assert_eq!(
            card.totals,
            Counts {
                hits: 2,
                // The lookup of 1 and the execution of 2, which no lookup
                // preceded; the execution of 1 is not a second miss.
                misses: 2,
                uploads: 1,
                executions: 2,
                saved_ms: 1750
            }
        );
        assert_eq!(card.by_mnemonic["CppCompile"].saved_ms, 1500);
        assert_eq!(card.by_target["//b:b"].hits, 1);
        assert_eq!((card.bytes_down, card.bytes_up), (10, 7));
        assert!(cards.take_dirty().is_empty(), "nothing changed since");
    }

    #[test]
    fn targets_past_the_cap_are_summed_together() {
        let mut card = Scorecard::default();
        for i in 0..MAX_TARGETS + 10 {
            card.note(&writer(&format!("//t:{i}"), "M"), Seen::Miss(0), false);
        }
        assert_eq!(card.by_target.len(), MAX_TARGETS + 1);
        assert_eq!(card.by_target[OTHER_TARGETS].misses, 10);
        let mut sum = card.clone();
        sum.add(&card);
        assert_eq!(sum.totals.misses, 2 * card.totals.misses);
    }
}
