//! Zstandard for `compressed-blobs/zstd/...`: a streaming compressor for reads
//! and a bounded streaming decompressor for writes. Neither ever holds a whole
//! blob; the decompressor yields at most [`OUT_CHUNK`] bytes per step, so a
//! small, highly compressible upload cannot balloon in memory.

use bytes::Bytes;
use futures::StreamExt;
use zstd::stream::raw::{DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, Result};
use crate::store::ChunkStream;

/// Largest piece the decompressor produces at once.
pub const OUT_CHUNK: usize = 256 << 10;

/// Largest zstd window a client's frame may ask for (`2^24` = 16 MiB). The
/// decoder allocates a buffer of the window's size before producing a byte,
/// so a frame header alone could otherwise make kiln reserve 128 MiB (or,
/// with `--long`, 2 GiB); no ordinary compression level needs more.
const WINDOW_LOG_MAX: u32 = 24;

/// A decoder that refuses frames with windows above [`WINDOW_LOG_MAX`].
fn decoder() -> Result<Decoder<'static>> {
    let mut decoder = Decoder::new().map_err(zstd_err)?;
    decoder
        .set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
        .map_err(zstd_err)?;
    Ok(decoder)
}

/// Decompresses a whole (small) zstd payload, such as one entry of a batch
/// upload, refusing it as soon as it would produce more than `limit` bytes:
/// memory grows with what the data really holds, never with a size a client
/// declared, and a bomb costs at most `limit` bytes and the work to get there.
pub fn decompress_bounded(data: &[u8], limit: u64) -> Result<Bytes> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut decoder = decoder()?;
    // Start near what compressed data usually expands to; grow by doubling.
    let first = data.len().saturating_mul(4).clamp(64, OUT_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(first.min(limit.saturating_add(1)));
    let mut input = InBuffer::around(data);
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(too_large(limit));
            }
            let room = out.capacity().max(64).min(limit + 1 - out.len());
            out.reserve_exact(room);
        }
        let pos = out.len();
        let before = input.pos();
        let mut output = OutBuffer::around_pos(&mut out, pos);
        let hint = decoder.run(&mut input, &mut output).map_err(zstd_err)?;
        let produced = output.pos() - pos;
        if out.len() > limit {
            return Err(too_large(limit));
        }
        let consumed = input.pos() - before;
        if hint == 0 && input.pos() == data.len() {
            return Ok(Bytes::from(out));
        }
        if produced == 0 && consumed == 0 && out.len() < out.capacity() {
            return Err(Error::InvalidArgument(
                "zstd: the data ends in the middle of a frame".into(),
            ));
        }
    }
}

fn too_large(limit: usize) -> Error {
    Error::InvalidArgument(format!(
        "zstd: the data decompresses to more than the {limit} bytes its digest declares"
    ))
}

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
            decoder: decoder()?,
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
    fn bounded_decompression_stops_at_the_limit() {
        let zeros = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let whole = decompress_bounded(&zeros, 8 << 20).unwrap();
        assert_eq!(whole.len(), 8 << 20);
        let err = decompress_bounded(&zeros, (8 << 20) - 1).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        assert!(decompress_bounded(&zeros[..zeros.len() / 2], 8 << 20).is_err());
        assert!(decompress_bounded(b"not zstd at all", 100).is_err());
        let empty = zstd::bulk::compress(b"", 3).unwrap();
        assert!(decompress_bounded(&empty, 0).unwrap().is_empty());
        let two = [
            zstd::bulk::compress(b"ab", 1).unwrap(),
            zstd::bulk::compress(b"cd", 1).unwrap(),
        ]
        .concat();
        assert_eq!(decompress_bounded(&two, 4).unwrap(), "abcd");
        assert!(decompress_bounded(&two, 3).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut d = Decompressor::new().unwrap();
        d.feed(Bytes::from_static(b"definitely not zstd"));
        assert!(d.next_chunk().is_err());
    }
}
