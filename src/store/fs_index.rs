//! The fs store's in-memory index: every blob on disk with its size and last
//! access, rebuilt at start by scanning the store, kept current by puts,
//! reads and FindMissingBlobs hits. It answers FindMissingBlobs without a
//! syscall and chooses what eviction deletes.
//!
//! Eviction (when a size limit is set) deletes the least recently used
//! blobs down to the low watermark once the total passes `max_size`, on a
//! blocking thread, never holding the lock across a file deletion. A blob
//! accessed within `min_retention` is leased: it is not evicted while the
//! store stays under the hard limit (`max_size` + margin); past the hard
//! limit the oldest go first anyway, and each such eviction is counted as
//! `forced`. A put of a digest that is being evicted waits for that one
//! deletion, so an acknowledged blob is never deleted by an eviction that
//! chose its predecessor.
//!
//! The index lives only in memory: after any crash the scan at start
//! rebuilds it from the files themselves, so it can never count a blob
//! twice or miss a file.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use crate::digest::{Digest, DigestFunction, HashKey};
use crate::time::now_ms;

/// When eviction runs and what it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Eviction starts above this many bytes.
    pub max_size: u64,
    /// ... and deletes down to this many.
    pub low_watermark: u64,
    /// Leased blobs go only above this many.
    pub hard_limit: u64,
    /// How long an access leases a blob.
    pub min_retention: Duration,
}

/// What an eviction pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Blobs deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of those, blobs still leased (deleted only past the hard limit).
    pub forced: u64,
}

/// Where a blob's bytes are: a file of its own, or a record in one of the
/// store's append-only segment files (`fs_segments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Place {
    File,
    Segment(Loc),
}

/// A record's position: its segment's slot (from 1; slots are reused as
/// segments are deleted, see `fs_segments`) and its offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Loc {
    pub segment: u32,
    pub offset: u32,
}

/// One indexed blob, 52 bytes of 4-byte fields: the hash, the size with
/// the digest function's number in its top byte (no blob reaches 2^56
/// bytes), then the last access in milliseconds (44 bits) with the slot of
/// its segment above it (20 bits; 0: a file of its own), and the record's
/// offset in that segment. Records sit densely in a Vec; the table holds
/// only their positions (4 bytes and a control byte a slot), so 1,000,000
/// blobs cost about 64 bytes each instead of the 130 of a map from
/// `Digest`.
#[derive(Debug, Clone, Copy)]
struct Record {
    hash: [u8; 32],
    size_lo: u32,
    size_hi_and_function: u32,
    last_and_segment: [u32; 2],
    offset: u32,
}

const SIZE_BITS: u32 = 56;
const SIZE_MASK: u64 = (1 << SIZE_BITS) - 1;
const LAST_BITS: u32 = 44;
const LAST_MASK: u64 = (1 << LAST_BITS) - 1;
/// Segment slots fit in the 20 bits above the last access.
pub(crate) const MAX_SEGMENT_SLOT: u32 = (1 << (64 - LAST_BITS)) - 1;

fn function_number(f: DigestFunction) -> u64 {
    DigestFunction::ALL
        .iter()
        .position(|x| *x == f)
        .unwrap_or(0) as u64
}

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn join(v: [u32; 2]) -> u64 {
    u64::from(v[0]) | (u64::from(v[1]) << 32)
}

impl Record {
    fn new(d: &Digest, last_ms: i64, place: Place) -> Record {
        let packed = (d.size & SIZE_MASK) | (function_number(d.function) << SIZE_BITS);
        let [size_lo, size_hi_and_function] = split(packed);
        let mut r = Record {
            hash: d.hash,
            size_lo,
            size_hi_and_function,
            last_and_segment: [0, 0],
            offset: 0,
        };
        r.set_place(place);
        r.touch(last_ms);
        r
    }

    fn packed(&self) -> u64 {
        join([self.size_lo, self.size_hi_and_function])
    }

    fn size(&self) -> u64 {
        self.packed() & SIZE_MASK
    }

    fn function(&self) -> DigestFunction {
        DigestFunction::ALL[(self.packed() >> SIZE_BITS) as usize]
    }

    fn last_ms(&self) -> i64 {
        (join(self.last_and_segment) & LAST_MASK) as i64
    }

    fn segment(&self) -> u32 {
        (join(self.last_and_segment) >> LAST_BITS) as u32
    }

    fn touch(&mut self, now_ms: i64) {
        let last = (now_ms.max(0) as u64).min(LAST_MASK);
        let kept = join(self.last_and_segment) & !LAST_MASK;
        self.last_and_segment = split(kept | last);
    }

    fn set_place(&mut self, place: Place) {
        let (segment, offset) = match place {
            Place::File => (0, 0),
            Place::Segment(loc) => (loc.segment.min(MAX_SEGMENT_SLOT), loc.offset),
        };
        let last = join(self.last_and_segment) & LAST_MASK;
        self.last_and_segment = split(last | (u64::from(segment) << LAST_BITS));
        self.offset = offset;
    }

    fn place(&self) -> Place {
        match self.segment() {
            0 => Place::File,
            segment => Place::Segment(Loc {
                segment,
                offset: self.offset,
            }),
        }
    }

    fn digest(&self) -> Digest {
        Digest {
            function: self.function(),
            hash: self.hash,
            size: self.size(),
        }
    }

    fn is(&self, d: &Digest) -> bool {
        self.hash == d.hash && self.size() == d.size && self.function() == d.function
    }

    fn has_key(&self, k: &HashKey) -> bool {
        self.hash == k.hash && self.function() == k.function
    }
}

#[derive(Debug, Default)]
struct State {
    /// The blobs, densely.
    records: Vec<Record>,
    /// Positions in `records`, hashed by (function, hash): a digest and
    /// the [`HashKey`] of its hash find the same slots.
    table: hashbrown::HashTable<u32>,
    hasher: crate::digest::KeyHasher,
    /// Stored bytes of blobs whose file is not their digest's size (only
    /// stores that are not content-addressed, such as the action cache,
    /// have any): kept aside so a CAS record stays 48 bytes.
    odd_sizes: std::collections::HashMap<Digest, u64>,
    total: u64,
    /// Digests whose file an eviction is deleting right now.
    evicting: HashSet<Digest>,
}

impl State {
    fn hash_of(&self, key: &HashKey) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    fn position(&self, d: &Digest) -> Option<usize> {
        let records = &self.records;
        self.table
            .find(self.hash_of(&HashKey::of(d)), |&i| {
                records[i as usize].is(d)
            })
            .map(|&i| i as usize)
    }

    fn get_mut(&mut self, d: &Digest) -> Option<&mut Record> {
        let i = self.position(d)?;
        Some(&mut self.records[i])
    }

    /// The bytes a record's file holds.
    fn bytes(&self, r: &Record) -> u64 {
        if self.odd_sizes.is_empty() {
            return r.size();
        }
        self.odd_sizes
            .get(&r.digest())
            .copied()
            .unwrap_or_else(|| r.size())
    }

    /// Adds or replaces `d` (its file holding `bytes`, at `place`); returns
    /// the bytes and place of the one it replaced.
    fn insert(
        &mut self,
        d: &Digest,
        bytes: u64,
        last_ms: i64,
        place: Place,
    ) -> Option<(u64, Place)> {
        let found = self.position(d);
        let old = found.map(|i| (self.bytes(&self.records[i]), self.records[i].place()));
        if bytes == d.size {
            self.odd_sizes.remove(d);
        } else {
            self.odd_sizes.insert(*d, bytes);
        }
        let record = Record::new(d, last_ms, place);
        if let Some(i) = found {
            self.records[i] = record;
            return old;
        }
        let i = u32::try_from(self.records.len()).expect("fewer than 2^32 blobs");
        self.records.push(record);
        let State {
            table,
            records,
            hasher,
            ..
        } = self;
        use std::hash::BuildHasher;
        table.insert_unique(hasher.hash_one(HashKey::of(d)), i, |&j| {
            hasher.hash_one(HashKey::of(&records[j as usize].digest()))
        });
        None
    }

    /// Removes `d`; returns the bytes its file held.
    fn remove(&mut self, d: &Digest) -> Option<u64> {
        let hash = self.hash_of(&HashKey::of(d));
        let records = &self.records;
        let entry = self
            .table
            .find_entry(hash, |&i| records[i as usize].is(d))
            .ok()?;
        let (i, _) = entry.remove();
        let i = i as usize;
        let bytes = self.bytes(&self.records[i]);
        self.odd_sizes.remove(d);
        let last = self.records.len() - 1;
        if i != last {
            // The last record moves into the hole: its slot follows it.
            let moved = self.records[last].digest();
            let moved_hash = self.hash_of(&HashKey::of(&moved));
            if let Some(slot) = self.table.find_mut(moved_hash, |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        self.records.swap_remove(i);
        Some(bytes)
    }

    fn len(&self) -> usize {
        self.records.len()
    }
}

/// The index of one fs store.
#[derive(Debug)]
pub(crate) struct Index {
    state: Mutex<State>,
    limits: Option<Limits>,
    evicting: AtomicBool,
}

impl Index {
    pub(crate) fn new(limits: Option<Limits>) -> Self {
        Index {
            state: Mutex::new(State::default()),
            limits,
            evicting: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes and blobs indexed.
    pub(crate) fn totals(&self) -> (u64, usize) {
        let s = self.state();
        (s.total, s.len())
    }

    /// True while an eviction pass runs.
    #[cfg(test)]
    pub(crate) fn is_evicting(&self) -> bool {
        self.evicting.load(Ordering::SeqCst)
    }

    pub(crate) fn limits(&self) -> Option<Limits> {
        self.limits
    }

    /// Records a blob of `size` bytes as stored (in a file of its own)
    /// and accessed now.
    pub(crate) fn insert(&self, digest: Digest, size: u64) {
        self.insert_at(digest, size, now_ms(), Place::File);
    }

    /// Records a blob as stored at `place`, last accessed at `last_ms`;
    /// returns where it was stored before, if it was.
    pub(crate) fn insert_at(
        &self,
        digest: Digest,
        size: u64,
        last_ms: i64,
        place: Place,
    ) -> Option<Place> {
        let mut s = self.state();
        let old = s.insert(&digest, size, last_ms, place);
        s.total = s.total - old.map_or(0, |(bytes, _)| bytes) + size;
        old.map(|(_, place)| place)
    }

    /// The digests of `digests` not indexed, touching none: tests observe
    /// eviction with this, where a touch would lease the very blobs they
    /// wait to see go.
    #[cfg(test)]
    pub(crate) fn absent(&self, digests: &[Digest]) -> Vec<Digest> {
        let s = self.state();
        digests
            .iter()
            .filter(|d| s.position(d).is_none())
            .copied()
            .collect()
    }

    /// True when `digest` is stored; touches it.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.locate(digest).is_some()
    }

    /// Where `digest` is stored, touched, or None.
    pub(crate) fn locate(&self, digest: &Digest) -> Option<Place> {
        let now = now_ms();
        let mut s = self.state();
        let r = s.get_mut(digest)?;
        r.touch(now);
        Some(r.place())
    }

    /// Moves `digest` from `from` to `to` (its record copied forward by
    /// a compaction), keeping its last access; false when it is no longer
    /// at `from` (removed or stored again meanwhile).
    pub(crate) fn relocate(&self, digest: &Digest, from: Loc, to: Loc) -> bool {
        let mut s = self.state();
        match s.get_mut(digest) {
            Some(r) if r.place() == Place::Segment(from) => {
                r.set_place(Place::Segment(to));
                true
            }
            _ => false,
        }
    }

    /// The blobs stored in each of `segments`, with their last access.
    pub(crate) fn in_segments(
        &self,
        segments: &BTreeSet<u32>,
    ) -> std::collections::HashMap<u32, Vec<(Digest, Loc, i64)>> {
        let mut found: std::collections::HashMap<u32, Vec<_>> = Default::default();
        if segments.is_empty() {
            return found;
        }
        for r in &self.state().records {
            let segment = r.segment();
            if segment != 0 && segments.contains(&segment) {
                let loc = Loc {
                    segment,
                    offset: r.offset,
                };
                found
                    .entry(segment)
                    .or_default()
                    .push((r.digest(), loc, r.last_ms()));
            }
        }
        found
    }

    /// Forgets a blob whose file turned out to be gone or damaged (or that
    /// a compaction evicts); false when it was not indexed.
    pub(crate) fn remove(&self, digest: &Digest) -> bool {
        let mut s = self.state();
        match s.remove(digest) {
            Some(bytes) => {
                s.total -= bytes;
                true
            }
            None => false,
        }
    }

    /// Marks a read (or a confirmation) of `digest` now; false when the
    /// index does not hold it.
    pub(crate) fn touch(&self, digest: &Digest) -> bool {
        let now = now_ms();
        match self.state().get_mut(digest) {
            Some(e) => {
                e.touch(now);
                true
            }
            None => false,
        }
    }

    /// The stored digest with `key`'s hash, touched, or None.
    pub(crate) fn resolve(&self, key: &HashKey) -> Option<Digest> {
        let now = now_ms();
        let mut s = self.state();
        let hash = s.hash_of(key);
        let State { table, records, .. } = &mut *s;
        let &i = table.find(hash, |&i| records[i as usize].has_key(key))?;
        let record = &mut records[i as usize];
        record.touch(now);
        Some(record.digest())
    }

    /// Those of `digests` not stored, in order; the others are touched.
    pub(crate) fn find_missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let now = now_ms();
        let mut s = self.state();
        digests
            .iter()
            .filter(|d| match s.get_mut(d) {
                Some(e) => {
                    e.touch(now);
                    false
                }
                None => true,
            })
            .copied()
            .collect()
    }

    /// Waits (briefly) until no eviction is deleting `digest`'s file, so a
    /// put that renames its file into place cannot be undone by it.
    pub(crate) fn wait_not_evicting(&self, digest: &Digest) {
        while self.state().evicting.contains(digest) {
            std::thread::yield_now();
        }
    }

    /// True when the store is over its limit and no eviction runs yet; the
    /// caller then runs [`Index::evict`] (and it alone).
    pub(crate) fn should_evict(&self) -> bool {
        let Some(limits) = self.limits else {
            return false;
        };
        self.state().total > limits.max_size
            && self
                .evicting
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// One eviction pass. Chosen blobs with a file of their own are deleted
    /// with `delete_file` (outside the lock); chosen blobs in segments leave
    /// the index, and `compact` then gets the segments they were in and
    /// the newest last access among them (it rewrites each segment without
    /// what is as cold as that and not leased, and returns what that
    /// evicted). Call only after [`Index::should_evict`] returned true.
    pub(crate) fn evict(
        &self,
        delete_file: impl Fn(&Digest) -> std::io::Result<()>,
        compact: impl FnOnce(BTreeSet<u32>, i64) -> Evicted,
    ) -> Evicted {
        let mut done = Evicted::default();
        if let Some(limits) = self.limits {
            let mut segments = BTreeSet::new();
            let mut coldest_kept = i64::MIN;
            for (digest, forced, place, last_ms) in self.choose(&limits) {
                match place {
                    Place::File => {
                        if let Err(e) = delete_file(&digest)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(%digest, error = %e, "could not evict a blob");
                        }
                        self.state().evicting.remove(&digest);
                    }
                    Place::Segment(loc) => {
                        segments.insert(loc.segment);
                        coldest_kept = coldest_kept.max(last_ms);
                    }
                }
                done.blobs += 1;
                done.bytes += digest.size;
                done.forced += u64::from(forced);
            }
            if !segments.is_empty() {
                let more = compact(segments, coldest_kept);
                done.blobs += more.blobs;
                done.bytes += more.bytes;
            }
            if done.forced > 0 {
                tracing::warn!(
                    forced = done.forced,
                    "the store passed its hard limit: blobs still leased by min_retention were evicted"
                );
            }
        }
        self.evicting.store(false, Ordering::SeqCst);
        done
    }

    /// The victims, oldest first, already taken out of the index (files
    /// marked as being evicted): unleased ones down to the low watermark,
    /// then leased ones while over the hard limit.
    fn choose(&self, limits: &Limits) -> Vec<(Digest, bool, Place, i64)> {
        let lease_start =
            now_ms() - i64::try_from(limits.min_retention.as_millis()).unwrap_or(i64::MAX);
        let mut s = self.state();
        let mut by_age: Vec<(i64, Digest, u64)> = s
            .records
            .iter()
            .map(|r| (r.last_ms(), r.digest(), s.bytes(r)))
            .collect();
        by_age.sort_unstable_by_key(|(last, _, _)| *last);
        let mut victims = Vec::new();
        let mut total = s.total;
        for (last, digest, size) in &by_age {
            if total <= limits.low_watermark {
                break;
            }
            if *last < lease_start {
                victims.push((*digest, false));
                total -= size;
            }
        }
        if total > limits.hard_limit {
            let chosen: HashSet<Digest> = victims.iter().map(|(d, _)| *d).collect();
            for (_, digest, size) in &by_age {
                if total <= limits.hard_limit {
                    break;
                }
                if !chosen.contains(digest) {
                    victims.push((*digest, true));
                    total -= size;
                }
            }
        }
        let mut chosen = Vec::with_capacity(victims.len());
        for (digest, forced) in victims {
            let Some((place, last_ms)) = s.get_mut(&digest).map(|r| (r.place(), r.last_ms()))
            else {
                continue;
            };
            if let Some(bytes) = s.remove(&digest) {
                s.total -= bytes;
            }
            if place == Place::File {
                s.evicting.insert(digest);
            }
            chosen.push((digest, forced, place, last_ms));
        }
        chosen
    }

    /// Rebuilds the index from the files under `root`: one entry per
    /// `{function}/{xx}/{hash}-{size}` file, last accessed at its mtime.
    /// Files that are not blobs, and (when `sized`) files whose length is
    /// not their digest's size, are deleted.
    pub(crate) fn scan(&self, root: &Path, sized: bool) -> std::io::Result<()> {
        let mut shards: Vec<(DigestFunction, PathBuf)> = Vec::new();
        for function in DigestFunction::ALL {
            let dir = root.join(function.name());
            for entry in std::fs::read_dir(&dir)? {
                shards.push((function, entry?.path()));
            }
        }
        // Shards are independent: a few threads list them in parallel.
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let chunk = shards.len().div_ceil(workers).max(1);
        let found: Vec<Vec<(Digest, u64, i64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .chunks(chunk)
                .map(|part| scope.spawn(move || scan_shards(part, sized)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut s = self.state();
        // Sized once: a Vec grown by doubling would hold up to twice the
        // blobs it indexes.
        let count: usize = found.iter().map(Vec::len).sum();
        s.records.reserve_exact(count);
        {
            use std::hash::BuildHasher;
            let State {
                table,
                records,
                hasher,
                ..
            } = &mut *s;
            table.reserve(count, |&j| {
                hasher.hash_one(HashKey::of(&records[j as usize].digest()))
            });
        }
        for (digest, size, last_ms) in found.into_iter().flatten() {
            if let Some((old, _)) = s.insert(&digest, size, last_ms, Place::File) {
                s.total -= old;
            }
            s.total += size;
        }
        Ok(())
    }
}

/// Lists blob files in some shard directories.
fn scan_shards(shards: &[(DigestFunction, PathBuf)], sized: bool) -> Vec<(Digest, u64, i64)> {
    let mut out = Vec::new();
    for (function, dir) in shards {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let parsed = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(hash, size)| Digest::parse(*function, hash, size.parse().ok()?).ok());
            let Some(digest) = parsed.filter(|_| meta.is_file()) else {
                continue;
            };
            if sized && meta.len() != digest.size {
                tracing::warn!(path = %path.display(), "removing a damaged blob file found at start");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let last_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            out.push((digest, meta.len(), last_ms));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32, size: u64) -> Digest {
        let mut digest = DigestFunction::Sha256.digest_of(&n.to_le_bytes());
        digest.size = size;
        digest
    }

    fn limits(max: u64, low: u64, hard: u64, retention: Duration) -> Limits {
        Limits {
            max_size: max,
            low_watermark: low,
            hard_limit: hard,
            min_retention: retention,
        }
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_low_watermark() {
        let index = Index::new(Some(limits(1000, 600, 2000, Duration::ZERO)));
        for n in 0..12 {
            index.insert_at(d(n, 100), 100, 1000 + i64::from(n), Place::File);
        }
        index.touch(&d(0, 100)); // the oldest becomes the newest
        assert!(index.should_evict());
        assert!(!index.should_evict(), "one eviction at a time");
        let deleted = Mutex::new(Vec::new());
        let done = index.evict(
            |digest| {
                deleted.lock().unwrap().push(*digest);
                Ok(())
            },
            |_, _| unreachable!("no blob is in a segment"),
        );
        assert_eq!(done.blobs, 6);
        assert_eq!(index.totals(), (600, 6));
        let deleted = deleted.into_inner().unwrap();
        assert!(!deleted.contains(&d(0, 100)), "the touched blob stays");
        assert_eq!(deleted[0], d(1, 100), "oldest first");
        assert_eq!(index.find_missing(&[d(0, 100)]), vec![]);
    }

    #[test]
    fn leased_blobs_stay_until_the_hard_limit() {
        let index = Index::new(Some(limits(1000, 600, 1500, Duration::from_secs(3600))));
        // All recent: leased.
        for n in 0..14 {
            index.insert(d(n, 100), 100);
        }
        assert!(index.should_evict());
        let done = index.evict(|_| Ok(()), |_, _| Evicted::default());
        assert_eq!(
            done,
            Evicted::default(),
            "under the hard limit nothing leased goes"
        );
        for n in 14..18 {
            index.insert(d(n, 100), 100);
        }
        assert!(index.should_evict());
        let done = index.evict(|_| Ok(()), |_, _| Evicted::default());
        assert_eq!(done.blobs, 3);
        assert_eq!(done.forced, 3, "past the hard limit, counted as forced");
        assert_eq!(index.totals().0, 1500);
    }

    #[test]
    fn agrees_with_a_plain_map_through_random_operations() {
        let index = Index::new(None);
        let mut model: std::collections::HashMap<Digest, u64> = Default::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let n = (next() % 500) as u32;
            // Two sizes per hash: a digest is its hash and its size.
            let size = 10 + next() % 2;
            let digest = d(n, size);
            match next() % 4 {
                0 | 1 => {
                    // Some files hold other than their digest's size.
                    let bytes = if next() % 5 == 0 { size + 1000 } else { size };
                    index.insert(digest, bytes);
                    model.insert(digest, bytes);
                }
                2 => {
                    index.remove(&digest);
                    model.remove(&digest);
                }
                _ => {
                    let missing = index.find_missing(&[digest]);
                    assert_eq!(missing.is_empty(), model.contains_key(&digest));
                    let by_hash = index.resolve(&HashKey::of(&digest));
                    let model_has_hash =
                        model.keys().any(|k| HashKey::of(k) == HashKey::of(&digest));
                    assert_eq!(by_hash.is_some(), model_has_hash);
                    if let Some(found) = by_hash {
                        assert!(model.contains_key(&found));
                    }
                }
            }
            let (total, count) = index.totals();
            assert_eq!(count, model.len());
            assert_eq!(total, model.values().sum::<u64>());
        }
    }

    #[test]
    fn a_record_is_52_bytes_and_keeps_its_place_and_last_access() {
        assert_eq!(std::mem::size_of::<Record>(), 52);
        let digest = d(7, 1 << 40);
        let loc = Loc {
            segment: MAX_SEGMENT_SLOT,
            offset: u32::MAX,
        };
        let mut r = Record::new(&digest, 1_765_000_000_123, Place::Segment(loc));
        assert_eq!(r.digest(), digest);
        assert_eq!(r.place(), Place::Segment(loc));
        assert_eq!(r.last_ms(), 1_765_000_000_123);
        r.touch(1_765_000_000_999);
        assert_eq!(r.place(), Place::Segment(loc), "touching keeps the place");
        r.set_place(Place::File);
        assert_eq!(r.last_ms(), 1_765_000_000_999, "moving keeps the access");
        assert_eq!(r.place(), Place::File);
    }

    #[test]
    fn re_inserting_a_blob_counts_it_once() {
        let index = Index::new(None);
        index.insert(d(1, 10), 10);
        index.insert(d(1, 10), 10);
        assert_eq!(index.totals(), (10, 1));
        index.remove(&d(1, 10));
        assert_eq!(index.totals(), (0, 0));
        assert!(!index.should_evict(), "no limit, no eviction");
    }
}
