//! Cuts a stream of bytes into content-defined chunks, holding at most two
//! cut windows of it.

use bytes::Bytes;
use futures::StreamExt;

use super::Chunker;
pub(crate) use super::window::Chunk;
use super::window::Window;
use crate::error::Result;
use crate::store::ChunkStream;

/// Yields the chunks of a stream in order.
pub(crate) struct Splitter<'a> {
    chunker: &'a Chunker,
    stream: ChunkStream,
    window: Window,
    ended: bool,
}

impl<'a> Splitter<'a> {
    /// Splits `stream` with `chunker`.
    pub(crate) fn new(chunker: &'a Chunker, stream: ChunkStream) -> Self {
        Splitter {
            chunker,
            stream,
            window: Window::new(chunker),
            ended: false,
        }
    }

    /// The next chunk, or None at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        while self.window.wants_more() && !self.ended {
            match self.stream.next().await {
                Some(chunk) => self.window.feed(chunk?),
                None => self.ended = true,
            }
        }
        Ok(self.window.cut(self.chunker).map(Chunk::into_bytes))
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
