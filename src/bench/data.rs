//! Synthetic blob contents: fast, deterministic, incompressible bytes made on
//! the fly, so the client never holds a large blob and costs little CPU.

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};

/// A deterministic byte generator (xorshift64*, 8 bytes per step).
pub struct Gen {
    state: u64,
}

impl Gen {
    /// A generator for the stream named by `seed`.
    pub fn new(seed: u64) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The next `len` bytes of the stream.
    pub fn chunk(&mut self, len: usize) -> Bytes {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            out.extend_from_slice(&self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out.into()
    }
}

/// A whole small blob.
pub fn blob(seed: u64, len: usize) -> Bytes {
    Gen::new(seed).chunk(len)
}

/// The SHA-256 digest of the `len`-byte stream `seed`, hashed in 1 MiB pieces.
pub fn stream_digest(seed: u64, len: u64) -> Digest {
    let mut g = Gen::new(seed);
    let mut h = DigestFunction::Sha256.hasher();
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        h.update(&g.chunk(n));
        left -= n as u64;
    }
    h.finish()
}
