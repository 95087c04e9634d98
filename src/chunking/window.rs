//! The bytes of a stream waiting to be cut, and the chunks cut from them:
//! FastCDC's pieces are kept as they arrived and cut where they lie, so no
//! byte is copied to be cut.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Chunker;
use crate::digest::{Digest, DigestFunction};
use crate::store::Body;

/// A chunk as cut: the pieces of the stream it spans, not copied together.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pieces: smallvec::SmallVec<[Bytes; 2]>,
    len: usize,
}

impl Chunk {
    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        self.pieces.push(piece);
    }

    /// Its bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Its digest under `function` (hashed piece by piece).
    pub(crate) fn digest(&self, function: DigestFunction) -> Digest {
        let mut hasher = function.hasher(self.len as u64);
        for piece in &self.pieces {
            hasher.update(piece);
        }
        hasher.finish()
    }

    /// A store's body of it: its one piece, or its pieces as a stream.
    pub(crate) fn into_body(self) -> Body {
        if self.pieces.len() == 1 {
            return Body::Bytes(self.pieces.into_iter().next().unwrap_or_default());
        }
        Body::Stream(futures::stream::iter(self.pieces.into_iter().map(Ok)).boxed())
    }

    /// Its bytes in one buffer (copied together if it spans pieces).
    pub(crate) fn into_bytes(self) -> Bytes {
        if self.pieces.len() == 1 {
            return self.pieces.into_iter().next().unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(self.len);
        for piece in &self.pieces {
            buf.extend_from_slice(piece);
        }
        buf.freeze()
    }
}

/// The bytes waiting to be cut: fed pieces, handing out chunks once it holds
/// a whole cut window (or the stream ended).
pub(super) enum Window {
    /// For FastCDC, the pieces as they arrived: cut where they lie, so no
    /// byte is copied (copies into the window and the page faults of its
    /// new buffers were a quarter of a chunked write's CPU).
    Pieces {
        pieces: VecDeque<Bytes>,
        len: usize,
        size: usize,
    },
    /// For RepMaxCDC, whose cut looks at its whole window at once: one
    /// buffer the pieces are copied into.
    Contiguous { buf: BytesMut, size: usize },
}

impl Window {
    pub(super) fn new(chunker: &Chunker) -> Self {
        let size = chunker.window();
        match chunker {
            Chunker::FastCdc(_) => Window::Pieces {
                pieces: VecDeque::new(),
                len: 0,
                size,
            },
            Chunker::RepMax(_) => Window::Contiguous {
                buf: BytesMut::with_capacity(2 * size),
                size,
            },
        }
    }

    pub(super) fn wants_more(&self) -> bool {
        match self {
            Window::Pieces { len, size, .. } => len < size,
            Window::Contiguous { buf, size } => buf.len() < *size,
        }
    }

    pub(super) fn feed(&mut self, piece: Bytes) {
        match self {
            Window::Pieces { pieces, len, .. } => {
                if !piece.is_empty() {
                    *len += piece.len();
                    pieces.push_back(piece);
                }
            }
            Window::Contiguous { buf, size } => {
                if buf.capacity() - buf.len() < piece.len() {
                    // Reclaims the space of chunks handed out already
                    // instead of growing without bound.
                    buf.reserve((*size).max(piece.len()));
                }
                buf.extend_from_slice(&piece);
            }
        }
    }

    /// The next chunk (call once the window is full or the stream ended).
    pub(super) fn cut(&mut self, chunker: &Chunker) -> Option<Chunk> {
        match self {
            Window::Pieces { pieces, len, .. } => {
                if *len == 0 {
                    return None;
                }
                let mut n = match chunker {
                    Chunker::FastCdc(c) => c.cut_pieces(pieces.iter().map(|p| &p[..]), *len),
                    Chunker::RepMax(_) => unreachable!("RepMaxCDC cuts a contiguous window"),
                };
                *len -= n;
                let mut chunk = Chunk::default();
                while n > 0 {
                    let Some(mut front) = pieces.pop_front() else {
                        break;
                    };
                    if front.len() > n {
                        chunk.push(front.split_to(n));
                        pieces.push_front(front);
                        break;
                    }
                    n -= front.len();
                    chunk.push(front);
                }
                Some(chunk)
            }
            Window::Contiguous { buf, .. } => {
                if buf.is_empty() {
                    return None;
                }
                let n = chunker.cut(buf);
                let mut chunk = Chunk::default();
                chunk.push(buf.split_to(n).freeze());
                Some(chunk)
            }
        }
    }
}
