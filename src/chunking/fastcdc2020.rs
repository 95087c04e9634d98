//! FAST_CDC_2020: the fastcdc crate's v2020 cut routine with the parameters
//! REAPI 2.12 derives from one number, the average chunk size.

use std::borrow::Cow;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};

use crate::error::{Error, Result};

/// The normalization level REAPI 2.12 (and Bazel) use.
const LEVEL: Normalization = Normalization::Level2;
/// The range of averages REAPI 2.12 allows; Bazel falls back to its
/// default for anything else, so kiln refuses to advertise it.
const AVG_MIN: u64 = 1 << 10;
const AVG_MAX: u64 = 1 << 20;

/// FastCDC 2020 with fixed parameters.
#[derive(Clone)]
pub struct FastCdc {
    min: usize,
    avg: usize,
    max: usize,
    seed: u32,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl std::fmt::Debug for FastCdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastCdc")
            .field("min", &self.min)
            .field("avg", &self.avg)
            .field("max", &self.max)
            .field("seed", &self.seed)
            .finish()
    }
}

impl FastCdc {
    /// The chunker for `FastCdc2020Params { avg_chunk_size_bytes: avg, seed }`:
    /// chunks of avg / 4 to avg * 4 bytes. `avg` must be a power of two
    /// between 1 KiB and 1 MiB, as the protocol requires.
    pub fn new(avg: u64, seed: u32) -> Result<Self> {
        if !avg.is_power_of_two() || !(AVG_MIN..=AVG_MAX).contains(&avg) {
            return Err(Error::InvalidArgument(format!(
                "FastCDC average chunk size {avg}: expected a power of two from {AVG_MIN} to {AVG_MAX} bytes"
            )));
        }
        let avg = avg as usize;
        Ok(Self::with_sizes(avg / 4, avg, avg * 4, seed))
    }

    /// Any sizes (for the protocol's test vectors, whose maximum is not
    /// four times the average).
    pub(crate) fn with_sizes(min: usize, avg: usize, max: usize, seed: u32) -> Self {
        let (mask_s, mask_l) = select_masks(avg, LEVEL);
        let (gear, gear_ls) = get_gear_with_seed(u64::from(seed));
        FastCdc {
            min,
            avg,
            max,
            seed,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    /// The smallest chunk (but the last).
    pub fn min(&self) -> usize {
        self.min
    }

    /// The average the cut points aim at, as advertised.
    pub fn avg(&self) -> usize {
        self.avg
    }

    /// The largest chunk.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The seed XORed into the GEAR table, as advertised.
    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// The length of the chunk that starts the `len` bytes held in
    /// `pieces`, in order: the cut `cut` finds in their concatenation,
    /// found without making them one buffer (an upload's pieces are cut
    /// where they arrived, so no byte is copied to be cut).
    ///
    /// The crate's scan, one byte per step: a pair of bytes (the crate's
    /// step) may straddle two pieces. Even positions shift the hash by two
    /// and add the left-shifted GEAR entry, odd ones add the plain entry;
    /// the pairs before `avg` test the small masks, the rest the large. A
    /// match at position p ends the chunk before p, as the crate's does.
    pub fn cut_pieces<'a>(&self, pieces: impl IntoIterator<Item = &'a [u8]>, len: usize) -> usize {
        if len <= self.min {
            return len;
        }
        let mut center = self.avg;
        let mut remaining = len;
        if remaining > self.max {
            remaining = self.max;
        } else if remaining < center {
            center = remaining;
        }
        let (small_end, end) = (center & !1, remaining & !1);
        let (mask_s, mask_l) = (self.mask_s, self.mask_l);
        let (mask_s_ls, mask_l_ls) = (mask_s << 1, mask_l << 1);
        let (Ok(gear), Ok(gear_ls)) = (
            <&[u64; 256]>::try_from(&self.gear[..]),
            <&[u64; 256]>::try_from(&self.gear_ls[..]),
        ) else {
            unreachable!("GEAR tables have 256 entries");
        };
        let mut hash: u64 = 0;
        // The absolute position of the next byte to hash, and where the
        // current piece starts.
        let mut p = self.min & !1;
        let mut at = 0;
        for piece in pieces {
            let piece_end = at + piece.len();
            let stop = piece_end.min(end);
            if p < stop {
                // Positions relative to the piece from here on.
                let (src, last) = (piece, stop - at);
                let small_last = small_end.saturating_sub(at);
                let mut i = p - at;
                if p & 1 == 1 {
                    // The second byte of a pair begun in the last piece.
                    hash = hash.wrapping_add(gear[usize::from(src[i])]);
                    if hash & if p < small_end { mask_s } else { mask_l } == 0 {
                        return p;
                    }
                    i += 1;
                }
                // Whole pairs, as the crate steps: the small masks before
                // `avg`, then the large ones.
                for (until, ls, plain) in [
                    (small_last, mask_s_ls, mask_s),
                    (usize::MAX, mask_l_ls, mask_l),
                ] {
                    while i + 1 < last && i < until {
                        hash = (hash << 2).wrapping_add(gear_ls[usize::from(src[i])]);
                        if hash & ls == 0 {
                            return at + i;
                        }
                        hash = hash.wrapping_add(gear[usize::from(src[i + 1])]);
                        if hash & plain == 0 {
                            return at + i + 1;
                        }
                        i += 2;
                    }
                }
                if i < last {
                    // A pair's first byte, the piece ending before its second.
                    hash = (hash << 2).wrapping_add(gear_ls[usize::from(src[i])]);
                    if hash
                        & if at + i < small_end {
                            mask_s_ls
                        } else {
                            mask_l_ls
                        }
                        == 0
                    {
                        return at + i;
                    }
                    i += 1;
                }
                p = at + i;
            }
            if p >= end {
                break;
            }
            at = piece_end;
        }
        remaining
    }

    /// The length of the chunk that starts `data`.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, len) = cut_gear(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bazel's FastCdcChunker.cut, written out independently of the crate,
    /// so that a change in either shows up as a disagreement.
    fn bazel_cut(c: &FastCdc, buf: &[u8]) -> usize {
        let len = buf.len();
        if len <= c.min {
            return len;
        }
        let n = len.min(c.max);
        let center = n.min(c.avg);
        let gear = super::super::gear();
        let s = u64::from(c.seed);
        let (mask_s, mask_l) = (c.mask_s, c.mask_l);
        let mut hash: u64 = 0;
        let mut a = c.min & !1;
        while a < center & !1 {
            hash = (hash << 2).wrapping_add((gear[buf[a] as usize] << 1) ^ (s << 1));
            if hash & (mask_s << 1) == 0 {
                return a;
            }
            hash = hash.wrapping_add(gear[buf[a + 1] as usize] ^ s);
            if hash & mask_s == 0 {
                return a + 1;
            }
            a += 2;
        }
        while a < n & !1 {
            hash = (hash << 2).wrapping_add((gear[buf[a] as usize] << 1) ^ (s << 1));
            if hash & (mask_l << 1) == 0 {
                return a;
            }
            hash = hash.wrapping_add(gear[buf[a + 1] as usize] ^ s);
            if hash & mask_l == 0 {
                return a + 1;
            }
            a += 2;
        }
        n
    }

    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    pub(crate) fn chunks(cut: impl Fn(&[u8]) -> usize, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = cut(&data[at..]);
            assert!(n > 0);
            out.push(n);
            at += n;
        }
        out
    }

    /// Where each chunk ends in the blob.
    pub(crate) fn ends(sizes: &[usize]) -> Vec<usize> {
        sizes
            .iter()
            .scan(0, |at, n| {
                *at += n;
                Some(*at)
            })
            .collect()
    }

    #[test]
    fn the_crate_cuts_where_bazel_does_with_and_without_a_seed() {
        let data = noise(3 << 20, 7);
        for seed in [0, 666, u32::MAX] {
            let c = FastCdc::new(16 << 10, seed).unwrap();
            let ours = chunks(|d| c.cut(d), &data);
            let bazel = chunks(|d| bazel_cut(&c, d), &data);
            assert_eq!(ours, bazel, "seed {seed}");
            assert!(ours.len() > 50, "{} chunks", ours.len());
            for &n in &ours[..ours.len() - 1] {
                assert!((c.min()..=c.max()).contains(&n), "chunk of {n}");
            }
        }
    }

    /// Cut where they arrived, pieces of any sizes are cut where their
    /// concatenation is, with and without a seed, near the blob's end too.
    #[test]
    fn pieces_are_cut_where_their_concatenation_is() {
        let data = noise(1 << 20, 11);
        for seed in [0, 666] {
            let c = FastCdc::new(8 << 10, seed).unwrap();
            for piece in [1, 3, 1000, 4096, 65_537, 1 << 20] {
                let mut at = 0;
                while at < data.len() {
                    let rest = &data[at..];
                    let n = c.cut_pieces(rest.chunks(piece), rest.len());
                    assert_eq!(n, c.cut(rest), "seed {seed}, pieces of {piece}, at {at}");
                    at += n;
                }
            }
        }
    }

    #[test]
    fn a_seed_moves_the_cut_points() {
        let data = noise(1 << 20, 9);
        let plain = FastCdc::new(8 << 10, 0).unwrap();
        let seeded = FastCdc::new(8 << 10, 666).unwrap();
        assert_ne!(
            chunks(|d| plain.cut(d), &data),
            chunks(|d| seeded.cut(d), &data)
        );
    }

    #[test]
    fn an_edit_changes_only_the_chunks_around_it() {
        let mut data = noise(4 << 20, 3);
        let c = FastCdc::new(64 << 10, 0).unwrap();
        let before = ends(&chunks(|d| c.cut(d), &data));
        data[2 << 20] ^= 0xff;
        let after = ends(&chunks(|d| c.cut(d), &data));
        let kept = before.iter().filter(|e| after.contains(e)).count();
        assert!(
            kept + 2 >= before.len(),
            "{kept} of {} cut points kept",
            before.len()
        );
    }

    #[test]
    fn averages_outside_the_protocol_range_are_refused() {
        for avg in [0, 512, 3000, 2 << 20] {
            assert!(FastCdc::new(avg, 0).is_err(), "{avg}");
        }
        let c = FastCdc::new(512 << 10, 0).unwrap();
        assert_eq!((c.min(), c.max()), (128 << 10, 2 << 20));
    }
}
