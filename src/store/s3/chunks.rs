//! An S3 upload's bytes as the chunks they arrived in.

use std::collections::VecDeque;

use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use bytes::{Bytes, BytesMut};

/// The bytes of one object or part as they arrived: a list of chunks that
/// are sent as they are (no copy into a part-sized buffer, whose fresh
/// pages would each fault in) unless the payload is signed, which needs it
/// contiguous.
#[derive(Default, Clone)]
pub(super) struct Chunks {
    chunks: VecDeque<Bytes>,
    /// Bytes in all the chunks.
    pub(super) len: u64,
}

impl From<Bytes> for Chunks {
    fn from(b: Bytes) -> Self {
        let mut c = Chunks::default();
        c.push(b);
        c
    }
}

impl Chunks {
    pub(super) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len() as u64;
            self.chunks.push_back(chunk);
        }
    }

    /// The first `n` bytes (all of them if fewer), split off without copying.
    pub(super) fn split_to(&mut self, n: usize) -> Chunks {
        let mut part = Chunks::default();
        while (part.len as usize) < n {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            let want = n - part.len as usize;
            if chunk.len() > want {
                self.chunks.push_front(chunk.split_off(want));
            }
            self.len -= chunk.len() as u64;
            part.push(chunk);
        }
        part
    }

    /// The request body: contiguous when signed (the signer hashes bytes it
    /// holds whole), else the chunks themselves, replayable for retries.
    pub(super) fn body(self, signed: bool) -> ByteStream {
        if signed || self.chunks.len() == 1 {
            let whole = match self.chunks.len() {
                1 => self.chunks[0].clone(),
                _ => {
                    let mut buf = BytesMut::with_capacity(self.len as usize);
                    for c in &self.chunks {
                        buf.extend_from_slice(c);
                    }
                    buf.freeze()
                }
            };
            return ByteStream::from(whole);
        }
        let chunks: Vec<Bytes> = self.chunks.into();
        ByteStream::new(SdkBody::retryable(move || {
            SdkBody::from_body_1_x(ChunkBody(chunks.clone().into()))
        }))
    }
}

/// An HTTP body of ready chunks.
struct ChunkBody(VecDeque<Bytes>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_chunks_without_losing_or_reordering_a_byte() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut all = Chunks::default();
        for piece in data.chunks(333) {
            all.push(Bytes::copy_from_slice(piece));
        }
        all.push(Bytes::new());
        let mut parts = Vec::new();
        while all.len > 0 {
            let part = all.split_to(1024);
            assert!(part.len <= 1024);
            parts.push(part);
        }
        assert!(parts[..parts.len() - 1].iter().all(|p| p.len == 1024));
        let joined: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.chunks.iter().flat_map(|c| c.iter().copied()))
            .collect();
        assert_eq!(joined, data);
    }
}
