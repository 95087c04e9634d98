//! Zstandard for `compressed-blobs/zstd/...`: a streaming compressor for reads
//! and a bounded streaming decompressor for writes. Neither ever holds a whole
//! blob; the decompressor yields at most [`OUT_CHUNK`] bytes per step, so a
//! small, highly compressible upload cannot balloon in memory.

use bytes::Bytes;
use futures::StreamExt;
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, Result};
use crate::store::ChunkStream;

/// Largest piece the decompressor produces at once.
pub const OUT_CHUNK: usize = 256 << 10;

/// Compression level for reads: fast, since the client asked to save bytes on
/// the wire, not to wait for the best ratio.
const LEVEL: i32 = 1;

fn zstd_err(e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("zstd: {e}"))
}

/// Compresses a chunk stream into one zstd frame, chunk by chunk, on the
/// blocking pool (compression is CPU work).
pub fn compress(input: ChunkStream) -> ChunkStream {
    struct State {
        input: ChunkStream,
        encoder: Option<Encoder<'static>>,
    }
    let encoder = Encoder::new(LEVEL).map_err(zstd_err);
    let state = State {
        input,
        encoder: encoder.ok(),
    };
    futures::stream::unfold(state, |mut st| async move {
        let mut encoder = st.encoder.take()?;
        let chunk = st.input.next().await;
        let result = tokio::task::spawn_blocking(move || {
            let out = match chunk {
                Some(Ok(data)) => encode(&mut encoder, &data).map(|o| (o, false)),
                Some(Err(e)) => Err(e),
                None => finish(&mut encoder).map(|o| (o, true)),
            };
            (encoder, out)
        })
        .await;
        match result {
            Ok((encoder, Ok((out, done)))) => {
                if !done {
                    st.encoder = Some(encoder);
                }
                Some((Ok(Bytes::from(out)), st))
            }
            Ok((_, Err(e))) => Some((Err(e), st)),
            Err(e) => Some((Err(e.into()), st)),
        }
    })
    .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.is_empty())))
    .boxed()
}

fn encode(encoder: &mut Encoder<'static>, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    let mut input = InBuffer::around(data);
    while input.pos() < data.len() {
        if out.len() == out.capacity() {
            out.reserve(64 << 10);
        }
        let pos = out.len();
        let mut output = OutBuffer::around_pos(&mut out, pos);
        encoder.run(&mut input, &mut output).map_err(zstd_err)?;
    }
    Ok(out)
}

fn finish(encoder: &mut Encoder<'static>) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    loop {
        let pos = out.len();
        if out.capacity() == pos {
            out.reserve(64 << 10);
        }
        let mut output = OutBuffer::around_pos(&mut out, pos);
        let remaining = encoder.finish(&mut output, true).map_err(zstd_err)?;
        if remaining == 0 {
            return Ok(out);
        }
    }
}

/// A streaming zstd decoder fed with compressed pieces, emitting bounded
/// uncompressed pieces.
pub struct Decompressor {
    decoder: Decoder<'static>,
    pending: Bytes,
    frame_done: bool,
}

impl Decompressor {
    /// A decoder for one zstd stream.
    pub fn new() -> Result<Self> {
        Ok(Decompressor {
            decoder: Decoder::new().map_err(zstd_err)?,
            pending: Bytes::new(),
            frame_done: false,
        })
    }

    /// Queues compressed input; call [`Decompressor::next_chunk`] until it
    /// returns `None` before feeding more.
    pub fn feed(&mut self, data: Bytes) {
        debug_assert!(self.pending.is_empty());
        self.pending = data;
    }

    /// The next uncompressed piece (at most [`OUT_CHUNK`] bytes) from the
    /// queued input; `None` once the input is used up.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let mut out = vec![0u8; OUT_CHUNK];
        let mut input = InBuffer::around(&self.pending);
        let mut output = OutBuffer::around(&mut out[..]);
        let hint = self
            .decoder
            .run(&mut input, &mut output)
            .map_err(zstd_err)?;
        let (consumed, produced) = (input.pos(), output.pos());
        if hint == 0 {
            self.frame_done = true;
        }
        self.pending = self.pending.slice(consumed..);
        if produced == 0 && consumed == 0 {
            // No progress: the decoder needs more input than is queued.
            self.pending = Bytes::new();
            return Ok(None);
        }
        if produced == 0 && self.pending.is_empty() {
            return Ok(None);
        }
        out.truncate(produced);
        Ok(Some(Bytes::from(out)))
    }

    /// True once a whole frame has been decoded; a stream that ends before
    /// that was truncated.
    pub fn frame_done(&self) -> bool {
        self.frame_done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::blob;

    #[tokio::test]
    async fn round_trip_in_bounded_pieces() {
        let data = [blob(1, 300_000), Bytes::from(vec![7u8; 5 << 20])].concat();
        let chunks: Vec<Result<Bytes>> = data
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let compressed: Vec<Bytes> = compress(futures::stream::iter(chunks).boxed())
            .map(|r| r.unwrap())
            .collect()
            .await;
        let whole = compressed.concat();
        assert!(whole.len() < data.len() / 4, "compressible data compresses");
        assert_eq!(zstd::decode_all(&whole[..]).unwrap(), data);

        let mut d = Decompressor::new().unwrap();
        let mut out = Vec::new();
        for piece in whole.chunks(1000) {
            d.feed(Bytes::copy_from_slice(piece));
            while let Some(c) = d.next_chunk().unwrap() {
                assert!(c.len() <= OUT_CHUNK);
                out.extend_from_slice(&c);
            }
        }
        assert!(d.frame_done());
        assert_eq!(out, data);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Decompressor::new().unwrap();
        d.feed(Bytes::from_static(b"definitely not zstd"));
        assert!(d.next_chunk().is_err());
    }
}
