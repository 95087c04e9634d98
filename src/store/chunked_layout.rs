//! How the chunked layer records a blob it stored as chunks: a layout (the
//! chunks in order, itself stored in the CAS as a content-addressed blob)
//! found through a pointer stored under a key derived from the blob's hash
//! alone.
//!
//! The pointer is what a reader can find knowing only the blob's digest (or
//! only its hash, for Bazel's HTTP cache). It cannot be content-addressed
//! (its key must not depend on what it points to), so it lives in the
//! instance's action cache, a key-value store, never in the CAS: every CAS
//! object still hashes to its name. It is encoded as a protobuf message
//! whose fields ActionResult does not use, so anything reading the action
//! cache sees an empty result. Pointer, layout and chunks are evicted and
//! renewed like any entry, which is why a read checks they are all there.

use bytes::{BufMut, Bytes, BytesMut};

use crate::chunking::Function;
use crate::digest::{Digest, DigestFunction};
use crate::store::Range;

/// The pointer's protobuf fields: numbers no ActionResult field uses.
const FIELD_SIZE: u64 = 1000;
const FIELD_LAYOUT_HASH: u64 = 1001;
const FIELD_LAYOUT_SIZE: u64 = 1002;
const MAGIC: &[u8; 4] = b"KCL1";
/// Magic, function, two parameters, chunk count.
const HEADER: usize = 4 + 1 + 8 + 8 + 4;
/// A chunk's hash and size.
const ENTRY: usize = 32 + 8;

/// A blob's chunks, in order, and how they were cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The chunking function and its parameters.
    pub(crate) params: (Function, u64, u64),
    /// The chunks, in order.
    pub(crate) chunks: Vec<Digest>,
    /// Where each chunk starts in the blob.
    starts: Vec<u64>,
}

impl Layout {
    pub(crate) fn new(params: (Function, u64, u64), chunks: Vec<Digest>) -> Self {
        let starts = chunks
            .iter()
            .scan(0u64, |at, c| {
                let start = *at;
                *at += c.size;
                Some(start)
            })
            .collect();
        Layout {
            params,
            chunks,
            starts,
        }
    }

    /// The blob's size.
    pub(crate) fn len(&self) -> u64 {
        self.starts
            .last()
            .zip(self.chunks.last())
            .map_or(0, |(s, c)| s + c.size)
    }

    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + ENTRY * self.chunks.len());
        out.put_slice(MAGIC);
        out.put_u8(self.params.0.to_proto() as u8);
        out.put_u64_le(self.params.1);
        out.put_u64_le(self.params.2);
        out.put_u32_le(self.chunks.len() as u32);
        for c in &self.chunks {
            out.put_slice(&c.hash);
            out.put_u64_le(c.size);
        }
        out.freeze()
    }

    /// The layout in `bytes`, whose chunks use `function`, or None when
    /// they are not a layout of `size` bytes (damaged, or written by a
    /// later version).
    pub(crate) fn decode(function: DigestFunction, bytes: &[u8], size: u64) -> Option<Layout> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let chunking = Function::from_proto(i32::from(bytes[4])).ok()??;
        let count = u32::from_le_bytes(bytes[21..25].try_into().unwrap()) as usize;
        if bytes.len() != HEADER + count * ENTRY {
            return None;
        }
        let chunks = bytes[HEADER..]
            .chunks_exact(ENTRY)
            .map(|e| Digest {
                function,
                hash: e[..32].try_into().unwrap(),
                size: u64::from_le_bytes(e[32..].try_into().unwrap()),
            })
            .collect();
        let layout = Layout::new((chunking, u64_at(5), u64_at(13)), chunks);
        (layout.len() == size).then_some(layout)
    }

    /// The chunks `[start, end)` of the blob covers, each with the range
    /// of it that falls inside.
    pub(crate) fn parts(&self, start: u64, end: u64) -> Vec<(Digest, Range)> {
        if start >= end {
            return Vec::new();
        }
        let first = self.starts.partition_point(|&s| s <= start) - 1;
        let mut parts = Vec::new();
        for (c, &s) in self.chunks.iter().zip(&self.starts).skip(first) {
            if s >= end {
                break;
            }
            let from = start.saturating_sub(s);
            let to = (end - s).min(c.size);
            parts.push((
                *c,
                Range {
                    offset: from,
                    limit: Some(to - from),
                },
            ));
        }
        parts
    }
}

/// Where the pointer to `blob`'s layout is stored in the action cache: a
/// key no action digest collides with, derived from the blob's function
/// and hash (not its size, so a lookup by hash alone finds it).
pub(crate) fn pointer_key(function: DigestFunction, hash: &[u8; 32]) -> Digest {
    let mut seed = Vec::with_capacity(64);
    seed.extend_from_slice(b"kiln chunked layout pointer\0");
    seed.extend_from_slice(hash);
    function.digest_of(&seed)
}

pub(crate) fn encode_pointer(blob_size: u64, layout: &Digest) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut out = BytesMut::with_capacity(64);
    encode_key(FIELD_SIZE as u32, WireType::Varint, &mut out);
    encode_varint(blob_size, &mut out);
    encode_key(
        FIELD_LAYOUT_HASH as u32,
        WireType::LengthDelimited,
        &mut out,
    );
    encode_varint(32, &mut out);
    out.put_slice(&layout.hash);
    encode_key(FIELD_LAYOUT_SIZE as u32, WireType::Varint, &mut out);
    encode_varint(layout.size, &mut out);
    out.freeze()
}

/// The blob size and layout digest a pointer holds.
pub(crate) fn decode_pointer(function: DigestFunction, mut bytes: &[u8]) -> Option<(u64, Digest)> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let (mut size, mut hash, mut layout_size) = (None, None, None);
    while !bytes.is_empty() {
        let (field, wire) = decode_key(&mut bytes).ok()?;
        match (u64::from(field), wire) {
            (FIELD_SIZE, WireType::Varint) => size = Some(decode_varint(&mut bytes).ok()?),
            (FIELD_LAYOUT_SIZE, WireType::Varint) => {
                layout_size = Some(decode_varint(&mut bytes).ok()?)
            }
            (FIELD_LAYOUT_HASH, WireType::LengthDelimited) => {
                let len = decode_varint(&mut bytes).ok()? as usize;
                if len != 32 || bytes.len() < 32 {
                    return None;
                }
                hash = Some(<[u8; 32]>::try_from(&bytes[..32]).ok()?);
                bytes = &bytes[32..];
            }
            _ => return None,
        }
    }
    let layout = Digest {
        function,
        hash: hash?,
        size: layout_size?,
    };
    Some((size?, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let f = DigestFunction::Sha256;
        let chunks = [10usize, 20, 5]
            .iter()
            .map(|&n| f.digest_of(&vec![n as u8; n]))
            .collect();
        Layout::new((Function::FastCdc2020, 512 << 10, 7), chunks)
    }

    #[test]
    fn a_layout_round_trips_and_damage_is_refused() {
        let l = layout();
        let bytes = l.encode();
        assert_eq!(
            Layout::decode(DigestFunction::Sha256, &bytes, 35),
            Some(l.clone())
        );
        assert_eq!(Layout::decode(DigestFunction::Sha256, &bytes, 36), None);
        assert_eq!(
            Layout::decode(DigestFunction::Sha256, &bytes[..bytes.len() - 1], 35),
            None
        );
        let mut wrong = bytes.to_vec();
        wrong[0] = b'X';
        assert_eq!(Layout::decode(DigestFunction::Sha256, &wrong, 35), None);
    }

    #[test]
    fn parts_cover_exactly_the_range() {
        let l = layout();
        let covered = |start, end| -> Vec<(u64, u64, Option<u64>)> {
            l.parts(start, end)
                .iter()
                .map(|(c, r)| (c.size, r.offset, r.limit))
                .collect()
        };
        assert_eq!(
            covered(0, 35),
            vec![(10, 0, Some(10)), (20, 0, Some(20)), (5, 0, Some(5))]
        );
        assert_eq!(covered(12, 31), vec![(20, 2, Some(18)), (5, 0, Some(1))]);
        assert_eq!(covered(10, 30), vec![(20, 0, Some(20))]);
        assert_eq!(covered(34, 35), vec![(5, 4, Some(1))]);
        assert!(covered(35, 35).is_empty());
    }

    #[test]
    fn pointers_round_trip_and_read_as_empty_action_results() {
        let f = DigestFunction::Blake3;
        let blob = f.digest_of(b"blob");
        let list = f.digest_of(b"list");
        let p = encode_pointer(blob.size, &list);
        assert_eq!(decode_pointer(f, &p), Some((blob.size, list)));
        assert_eq!(decode_pointer(f, &p[1..]), None);
        assert_eq!(decode_pointer(f, &p[..p.len() - 1]), None);
        assert_eq!(pointer_key(f, &blob.hash), pointer_key(f, &blob.hash));
        assert_ne!(pointer_key(f, &blob.hash), blob);
        // Whatever reads the action cache sees an empty result.
        use prost::Message;
        let seen = crate::proto::reapi::ActionResult::decode(&p[..]).unwrap();
        assert_eq!(seen, crate::proto::reapi::ActionResult::default());
    }
}
