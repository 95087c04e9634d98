//! A blob held in memory as the chunks it arrived in.
//!
//! Concatenating a large upload into one buffer costs a copy of every byte
//! into fresh pages, each of which faults in: a third of an in-memory
//! ByteStream write's CPU. Kept as a list, the chunks the gRPC layer decoded
//! are stored as they are, and a read or a range seeks through the list.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{Body, Range};
use crate::error::{Error, Result};

/// Chunks shorter than this are gathered into buffers of their own: a small
/// chunk is a slice of a receive buffer that can be several times its size,
/// so keeping it would hold memory the store's budget does not count (and a
/// list of Bazel's 16 KiB chunks would cost more to walk than to copy).
const KEEP_MIN: usize = 256 << 10;
/// The size of the buffers small chunks are gathered into.
const GATHER: usize = 1 << 20;

/// A blob's bytes in order; cheap to clone (the chunks are shared).
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkList {
    chunks: Vec<Bytes>,
    /// Where each chunk starts in the blob.
    starts: Vec<u64>,
    len: u64,
}

impl ChunkList {
    /// The blob's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// How many chunks hold it (for the memory they cost beyond their bytes).
    pub(crate) fn count(&self) -> usize {
        self.chunks.len()
    }

    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.starts.push(self.len);
        self.len += chunk.len() as u64;
        self.chunks.push(chunk);
    }

    /// Collects `body`, expected to be `expected` bytes long, failing with
    /// RESOURCE_EXHAUSTED as soon as it passes `max` bytes, so a stream of
    /// unknown length never grows past what the caller budgeted.
    pub(crate) async fn gather(body: Body, expected: u64, max: u64) -> Result<ChunkList> {
        let over = |n: u64| {
            Error::exhausted(format!(
                "value of at least {n} bytes is larger than the {max} bytes allowed here"
            ))
        };
        let mut stream = match body {
            Body::Bytes(b) if b.len() as u64 > max => return Err(over(b.len() as u64)),
            Body::Bytes(b) => {
                let mut list = ChunkList::default();
                list.push(super::owned(b));
                return Ok(list);
            }
            Body::Stream(s) => s,
        };
        let mut gatherer = Gatherer::new(expected);
        while let Some(chunk) = stream.next().await.transpose()? {
            let seen = gatherer.len() + chunk.len() as u64;
            if seen > max {
                return Err(over(seen));
            }
            gatherer.add(chunk);
        }
        Ok(gatherer.finish())
    }

    /// The chunks, in order.
    pub(crate) fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }

    /// The bytes `range` selects: whole bytes when they lie in one chunk, else
    /// a stream of the chunks' slices (nothing is copied either way).
    pub(crate) fn read(&self, range: Range) -> Result<Body> {
        let (start, end) = range.bounds(self.len)?;
        if start == end {
            return Ok(Body::Bytes(Bytes::new()));
        }
        let first = self.starts.partition_point(|&s| s <= start) - 1;
        let mut slices = Vec::new();
        for (chunk, &at) in self.chunks[first..].iter().zip(&self.starts[first..]) {
            if at >= end {
                break;
            }
            let from = start.saturating_sub(at) as usize;
            let to = (end - at).min(chunk.len() as u64) as usize;
            slices.push(chunk.slice(from..to));
        }
        if slices.len() == 1 {
            return Ok(Body::Bytes(slices.pop().expect("one slice")));
        }
        Ok(Body::Stream(
            futures::stream::iter(slices.into_iter().map(Ok)).boxed(),
        ))
    }
}

/// Builds a [`ChunkList`], keeping large chunks as they are and copying
/// small ones together.
pub(crate) struct Gatherer {
    list: ChunkList,
    gathered: BytesMut,
    expected: u64,
}

impl Gatherer {
    /// For a blob expected to be `expected` bytes long (it sizes the
    /// buffers small chunks are copied into).
    pub(crate) fn new(expected: u64) -> Self {
        Gatherer {
            list: ChunkList::default(),
            gathered: BytesMut::new(),
            expected,
        }
    }

    /// The bytes added so far.
    pub(crate) fn len(&self) -> u64 {
        self.list.len + self.gathered.len() as u64
    }

    pub(crate) fn add(&mut self, chunk: Bytes) {
        if chunk.len() >= KEEP_MIN {
            self.list.push(self.gathered.split().freeze());
            self.list.push(chunk);
            return;
        }
        if self.gathered.capacity() - self.gathered.len() < chunk.len() {
            let left = self.expected.saturating_sub(self.len());
            self.list.push(self.gathered.split().freeze());
            self.gathered
                .reserve(chunk.len().max(left.min(GATHER as u64) as usize));
        }
        self.gathered.extend_from_slice(&chunk);
    }

    pub(crate) fn finish(mut self) -> ChunkList {
        self.list.push(self.gathered.freeze());
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn gathered(data: &[u8], pieces: &[usize]) -> ChunkList {
        let mut chunks = Vec::new();
        let mut at = 0;
        for &n in pieces.iter().cycle() {
            if at >= data.len() {
                break;
            }
            let end = (at + n).min(data.len());
            chunks.push(Ok(Bytes::copy_from_slice(&data[at..end])));
            at = end;
        }
        let body = Body::Stream(futures::stream::iter(chunks).boxed());
        ChunkList::gather(body, data.len() as u64, u64::MAX)
            .await
            .unwrap()
    }

    /// Every range of a blob gathered from mixed chunk sizes (small ones
    /// copied together, large ones kept) reads back the same bytes.
    #[tokio::test]
    async fn every_range_reads_back_what_was_gathered() {
        let data = data(3 << 20);
        for pieces in [
            &[16 << 10][..],
            &[1 << 20],
            &[300 << 10, 7, 16 << 10, 2 << 20],
        ] {
            let list = gathered(&data, pieces).await;
            assert_eq!(list.len(), data.len() as u64);
            let n = data.len() as u64;
            for (offset, limit) in [
                (0, None),
                (1, Some(10)),
                ((1 << 20) - 1, Some(2)),
                (n - 5, None),
                (n, None),
                (300 << 10, Some(1 << 20)),
                (12345, Some(n)),
            ] {
                let body = list.read(Range { offset, limit }).unwrap();
                let got = body.collect().await.unwrap();
                let end = limit.map_or(n, |l| (offset + l).min(n));
                assert_eq!(
                    &got[..],
                    &data[offset as usize..end as usize],
                    "{pieces:?} {offset} {limit:?}"
                );
            }
            assert!(matches!(
                list.read(Range {
                    offset: n + 1,
                    limit: None
                }),
                Err(Error::OutOfRange(_))
            ));
        }
    }

    /// Small chunks are gathered into a few buffers, large ones kept as sent.
    #[tokio::test]
    async fn small_chunks_are_gathered_and_large_ones_kept() {
        let data = data(4 << 20);
        assert_eq!(gathered(&data, &[16 << 10]).await.count(), 4);
        assert_eq!(gathered(&data, &[1 << 20]).await.count(), 4);
    }
}
