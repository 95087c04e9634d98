//! Cuts a stream of bytes into content-defined chunks, holding at most two
//! cut windows of it.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Chunker;
use crate::error::Result;
use crate::store::ChunkStream;

/// Yields the chunks of a stream in order.
pub(crate) struct Splitter<'a> {
    chunker: &'a Chunker,
    stream: ChunkStream,
    buf: BytesMut,
    ended: bool,
}

impl<'a> Splitter<'a> {
    /// Splits `stream` with `chunker`.
    pub(crate) fn new(chunker: &'a Chunker, stream: ChunkStream) -> Self {
        Splitter {
            chunker,
            stream,
            buf: BytesMut::with_capacity(2 * chunker.window()),
            ended: false,
        }
    }

    /// The next chunk, or None at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        let window = self.chunker.window();
        while self.buf.len() < window && !self.ended {
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if self.buf.capacity() - self.buf.len() < chunk.len() {
                        // Reclaims the space of chunks handed out already
                        // instead of growing without bound.
                        self.buf.reserve(window.max(chunk.len()));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                None => self.ended = true,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let len = self.chunker.cut(&self.buf);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Cuts `stream` with `chunker` and hands each chunk to `store`, at most
/// `in_flight` at once, in order; the digests `store` returns, and the
/// bytes the stream held (which the caller checks against what it
/// expected: a stream is not a promise of its length).
pub(crate) async fn cut_and_store<F, Fut>(
    chunker: &Chunker,
    stream: ChunkStream,
    in_flight: usize,
    store: F,
) -> Result<(Vec<crate::digest::Digest>, u64)>
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<crate::digest::Digest>>,
{
    let mut splitter = Splitter::new(chunker, stream);
    let mut pending = futures::stream::FuturesOrdered::new();
    let mut chunks = Vec::new();
    let mut total = 0u64;
    loop {
        let next = splitter.next().await?;
        let ended = next.is_none();
        if let Some(chunk) = next {
            total += chunk.len() as u64;
            pending.push_back(store(chunk));
        }
        while pending.len() >= in_flight || (ended && !pending.is_empty()) {
            if let Some(digest) = pending.next().await {
                chunks.push(digest?);
            }
        }
        if ended {
            return Ok((chunks, total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::FastCdc;
    use super::super::fastcdc2020::tests::{chunks, noise};
    use super::*;

    #[tokio::test]
    async fn a_stream_in_any_pieces_is_cut_as_the_whole_blob_is() {
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let data = noise(300_000, 21);
        let whole = chunks(|d| chunker.cut(d), &data);
        for piece in [1, 1000, 4096, 65_536, 1 << 20] {
            let pieces: Vec<_> = data
                .chunks(piece)
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect();
            let mut splitter = Splitter::new(&chunker, futures::stream::iter(pieces).boxed());
            let mut got = Vec::new();
            let mut joined = Vec::new();
            while let Some(chunk) = splitter.next().await.unwrap() {
                got.push(chunk.len());
                joined.extend_from_slice(&chunk);
            }
            assert_eq!(got, whole, "pieces of {piece}");
            assert_eq!(joined, data);
        }
    }
}
