//! Synthetic blob contents: fast, deterministic, incompressible bytes made on
//! the fly, so the client never holds a large blob and costs little CPU.

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};

/// One random megabyte that large synthetic blobs are made of: copying it is
/// far cheaper than generating fresh random bytes, so the load generator
/// leaves the CPU to the server it measures.
static BLOCK: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| xorshift(0x5eed, 1 << 20));

fn xorshift(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A deterministic stream of chunks, unique per seed: each chunk is the
/// random block stamped with (seed, chunk number), so no two chunks of any
/// two streams are equal.
pub struct Gen {
    seed: u64,
    chunk: u64,
}

impl Gen {
    /// The stream named by `seed`.
    pub fn new(seed: u64) -> Gen {
        Gen { seed, chunk: 0 }
    }

    /// The next chunk of `len` bytes (at most 1 MiB).
    pub fn chunk(&mut self, len: usize) -> Bytes {
        let mut out = BLOCK[..len.min(BLOCK.len())].to_vec();
        let stamp = [self.seed.to_le_bytes(), self.chunk.to_le_bytes()].concat();
        let n = stamp.len().min(out.len());
        out[..n].copy_from_slice(&stamp[..n]);
        self.chunk += 1;
        out.into()
    }
}

/// A whole small blob.
pub fn blob(seed: u64, len: usize) -> Bytes {
    xorshift(seed, len).into()
}

/// The SHA-256 digest of the `len`-byte stream `seed`, hashed in 1 MiB pieces.
pub fn stream_digest(seed: u64, len: u64) -> Digest {
    let mut g = Gen::new(seed);
    let mut h = DigestFunction::Sha256.hasher(len);
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        h.update(&g.chunk(n));
        left -= n as u64;
    }
    h.finish()
}

/// Megabyte `index` of stream `seed` with no byte pattern shared with any
/// other megabyte: the random block XORed with a word of its own, so a
/// content-defined chunker finds no chunk twice (the stamped chunks of
/// [`Gen`] repeat everywhere but their first bytes, which a chunked store
/// would deduplicate).
pub fn unique_piece(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut word =
        (seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    word ^= word >> 31;
    let mask = word.to_le_bytes();
    BLOCK[..len.min(BLOCK.len())]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 8])
        .collect()
}
