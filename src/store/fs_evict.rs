//! Eviction of the fs store, off the async threads: the index chooses
//! victims; files are deleted, and segments holding victims are rewritten
//! without them (`fs_segments`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::fs::blob_path;
use super::fs_index::{Evicted, Index, Loc};
use super::fs_segments::Segments;
use super::instrumented::CapacityMetrics;
use crate::digest::Digest;

/// Deletes what the index chose, off the async threads.
pub(super) struct Evictor {
    pub root: PathBuf,
    pub index: Arc<Index>,
    pub capacity: Option<CapacityMetrics>,
    pub segments: Option<Arc<Segments>>,
}

/// Bytes of records one compaction append carries at most.
const COMPACT_BATCH: usize = 8 << 20;

impl Evictor {
    /// Runs passes while the store is over its limit and the last pass
    /// freed something: puts that finished during a pass (and found one
    /// running) started none of their own.
    pub(super) fn run(self) {
        loop {
            let done = self.pass();
            if done.blobs == 0 || !self.index.should_evict() {
                break;
            }
        }
    }

    fn pass(&self) -> Evicted {
        let started = std::time::Instant::now();
        let done = self.index.evict(
            |d| std::fs::remove_file(blob_path(&self.root, d)),
            |segments, coldest| self.compact(segments, coldest),
        );
        tracing::info!(
            path = %self.root.display(),
            blobs = done.blobs,
            bytes = done.bytes,
            forced = done.forced,
            ms = started.elapsed().as_millis() as u64,
            "evicted least recently used blobs"
        );
        if let Some(c) = &self.capacity {
            c.record(&done, self.index.totals().0);
        }
        done
    }

    /// Rewrites each of `numbers` without its cold blobs: what was last
    /// accessed no later than `coldest` (the pass evicted blobs that
    /// recent) and is not leased is evicted too, what is left is copied
    /// forward into the current segment (keeping last accesses), and the
    /// segment is deleted. Copying cold blobs forward would keep them past
    /// blobs the pass already chose. A segment that cannot be read or
    /// copied whole is kept: nothing indexed is lost. Returns what it
    /// evicted.
    pub(super) fn compact(&self, numbers: BTreeSet<u32>, coldest: i64) -> Evicted {
        let mut evicted = Evicted::default();
        let Some(segments) = &self.segments else {
            return evicted;
        };
        let lease_start = self.index.limits().map_or(i64::MIN, |l| {
            crate::time::now_ms() - i64::try_from(l.min_retention.as_millis()).unwrap_or(i64::MAX)
        });
        // Blobs chosen from the head: it is sealed (a new head started) so
        // that it can be rewritten like any other.
        let mut numbers = numbers;
        numbers.retain(|&number| match segments.seal(number) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(segment = number, error = %e, "could not start a new segment");
                false
            }
        });
        // One walk over the index for all of them.
        let mut by_segment = self.index.in_segments(&numbers);
        for number in numbers {
            let mut live = by_segment.remove(&number).unwrap_or_default();
            live.retain(|(digest, _, last)| {
                if *last > coldest || *last >= lease_start {
                    return true;
                }
                if self.index.remove(digest) {
                    evicted.blobs += 1;
                    evicted.bytes += digest.size;
                }
                false
            });
            let moved = live.len();
            if let Err(e) = self.copy_forward(segments, live) {
                tracing::error!(segment = number, error = %e, "could not compact a segment; it is kept");
                continue;
            }
            match segments.remove(number) {
                Ok(()) => tracing::debug!(segment = number, moved, "compacted a segment"),
                Err(e) => {
                    tracing::warn!(segment = number, error = %e, "could not delete a compacted segment")
                }
            }
        }
        evicted
    }

    fn copy_forward(
        &self,
        segments: &Segments,
        live: Vec<(Digest, Loc, i64)>,
    ) -> std::io::Result<()> {
        let mut batch: Vec<(Digest, Loc, Bytes)> = Vec::new();
        let mut bytes = 0;
        let flush = |batch: &mut Vec<(Digest, Loc, Bytes)>| -> std::io::Result<()> {
            let items: Vec<(Digest, &[u8])> =
                batch.iter().map(|(d, _, b)| (*d, b.as_ref())).collect();
            let to = segments.append(&items)?;
            for ((digest, from, _), to) in batch.iter().zip(to) {
                self.index.relocate(digest, *from, to);
            }
            batch.clear();
            Ok(())
        };
        for (digest, loc, _) in live {
            match segments.read(loc, &digest) {
                Ok(Some(data)) => {
                    bytes += data.len();
                    batch.push((digest, loc, data));
                }
                Ok(None) => return Err(std::io::Error::other("the segment is gone")),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // A damaged record: forgotten, as a read would.
                    tracing::error!(%digest, error = %e, "dropping a damaged blob from a segment");
                    self.index.remove(&digest);
                }
                Err(e) => return Err(e),
            }
            if bytes >= COMPACT_BATCH {
                flush(&mut batch)?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            flush(&mut batch)?;
        }
        Ok(())
    }
}
