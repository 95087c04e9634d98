//! REP_MAX_CDC: cut where the Gear hash is highest within a horizon, and
//! repeat while that would make a chunk of 2 * min or more, so every chunk
//! but a small blob's only one is in [min, 2 * min).
//!
//! This is the definition as buildbarn/go-cdc's simple reference states it
//! (`NewSimpleRepMaxContentDefinedChunker`): it hashes the horizon again for
//! every chunk, which costs several times FastCDC's single pass, in return
//! for being easy to check. Kiln's own chunked storage uses FastCDC; this
//! serves clients that ask for REP_MAX_CDC.

use crate::error::{Error, Result};

/// Bytes the Gear hash covers: a 64-bit hash shifted once per byte.
const WINDOW: usize = 64;
/// Bounds kiln accepts for its own configuration: a chunk of at least the
/// hash window, and a look-ahead that one cut may hold in memory.
const MIN_MAX: u64 = 16 << 20;
const HORIZON_MAX: u64 = 64 << 20;

/// RepMaxCDC with fixed parameters.
#[derive(Debug, Clone)]
pub struct RepMax {
    min: usize,
    horizon: usize,
}

impl RepMax {
    /// The chunker for `RepMaxCdcParams { min_chunk_size_bytes: min,
    /// horizon_size_bytes: horizon }`.
    pub fn new(min: u64, horizon: u64) -> Result<Self> {
        if !(WINDOW as u64..=MIN_MAX).contains(&min) {
            return Err(Error::InvalidArgument(format!(
                "RepMaxCDC minimum chunk size {min}: expected {WINDOW} to {MIN_MAX} bytes"
            )));
        }
        if horizon > HORIZON_MAX {
            return Err(Error::InvalidArgument(format!(
                "RepMaxCDC horizon {horizon}: expected at most {HORIZON_MAX} bytes"
            )));
        }
        Ok(RepMax {
            min: min as usize,
            horizon: horizon as usize,
        })
    }

    /// The smallest chunk (but a blob's only one).
    pub fn min(&self) -> usize {
        self.min
    }

    /// How far past the earliest cut the best one is looked for.
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// The bytes one cut looks at: the horizon after the first eligible
    /// position, and a minimum chunk beyond it so the last chunk is never
    /// short.
    pub fn window(&self) -> usize {
        2 * self.min + self.horizon
    }

    /// The length of the chunk that starts `data`.
    pub fn cut(&self, data: &[u8]) -> usize {
        let min = self.min;
        let n = data.len().min(self.window());
        if n < 2 * min {
            // Too little is left for two chunks of at least `min`: the rest
            // is the last chunk.
            return n;
        }
        let gear = super::gear();
        let mut initial: u64 = 0;
        for &b in &data[min - WINDOW..min] {
            initial = (initial << 1).wrapping_add(gear[b as usize]);
        }
        // Leave at least `min` bytes behind for the chunk after this one.
        let mut limit = n - min;
        loop {
            // The highest hash in the horizon, the earliest on ties.
            let mut hash = initial;
            let mut best = hash;
            let mut best_end = min;
            for (i, &b) in data.iter().enumerate().take(limit).skip(min) {
                hash = (hash << 1).wrapping_add(gear[b as usize]);
                if best < hash {
                    best = hash;
                    best_end = i + 1;
                }
            }
            if best_end < 2 * min {
                return best_end;
            }
            // That cut would make a chunk too large: look again, short of
            // it by `min`, so a later chunk may still end there.
            limit = best_end - min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fastcdc2020::tests::{chunks, ends, noise};
    use super::*;

    #[test]
    fn every_chunk_is_within_min_and_twice_min() {
        let c = RepMax::new(1024, 8 * 1024).unwrap();
        for len in [1024 * 50, 1024 * 10 + 512, 300_001] {
            let data = noise(len, len as u64);
            let sizes = chunks(|d| c.cut(d), &data);
            assert_eq!(sizes.iter().sum::<usize>(), len);
            for &n in &sizes {
                assert!((1024..2048).contains(&n), "chunk of {n} in {len}");
            }
        }
    }

    #[test]
    fn a_zero_horizon_cuts_uniform_chunks_and_the_rest_at_the_end() {
        // go-cdc's zero-horizon vector: 109,466 bytes at min 8,192 are twelve
        // chunks of 8,192 and one of 11,162.
        let c = RepMax::new(8192, 0).unwrap();
        let data = noise(109_466, 1);
        let sizes = chunks(|d| c.cut(d), &data);
        let mut expected = vec![8192; 12];
        expected.push(11_162);
        assert_eq!(sizes, expected);
    }

    #[test]
    fn small_blobs_are_one_chunk() {
        let c = RepMax::new(1024, 8 * 1024).unwrap();
        for len in [1, 100, 1024, 2047] {
            assert_eq!(chunks(|d| c.cut(d), &noise(len, 5)), vec![len]);
        }
    }

    #[test]
    fn cut_points_do_not_depend_on_how_much_is_buffered() {
        let c = RepMax::new(4096, 32 * 1024).unwrap();
        let data = noise(1 << 20, 11);
        let whole = chunks(|d| c.cut(d), &data);
        let windowed = chunks(|d| c.cut(&d[..d.len().min(c.window())]), &data);
        assert_eq!(whole, windowed);
    }

    #[test]
    fn an_edit_changes_only_the_chunks_around_it() {
        let c = RepMax::new(4096, 32 * 1024).unwrap();
        let mut data = noise(2 << 20, 13);
        let before = ends(&chunks(|d| c.cut(d), &data));
        data[1 << 20] ^= 0x5a;
        let after = ends(&chunks(|d| c.cut(d), &data));
        let kept = before.iter().filter(|e| after.contains(e)).count();
        assert!(kept + 4 >= before.len(), "{kept} of {} kept", before.len());
    }

    #[test]
    fn parameters_outside_the_bounds_are_refused() {
        assert!(RepMax::new(63, 0).is_err());
        assert!(RepMax::new(64, 0).is_ok());
        assert!(RepMax::new(1 << 20, 1 << 30).is_err());
    }
}
