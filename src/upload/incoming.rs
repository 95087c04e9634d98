//! One Write call's messages as a stream of blob chunks: offsets checked
//! against the stream so far, zstd decoded, and the bytes of a resumable
//! upload teed to where its session keeps them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;

use super::Requests;
use super::sessions::Session;
use crate::compression::Decompressor;
use crate::error::{Error, Result};
use crate::proto::bytestream::WriteRequest;
use crate::store::ChunkStream;

/// Where the bytes of a resumable upload are kept as they pass.
pub(super) enum Tee {
    /// To the spool writer's thread, each piece within the uploads' shared
    /// budget until it is written.
    Spool(super::Spool),
    /// Into the session's list (the bytes after the chunks stored, when
    /// the store keeps chunks).
    Memory(Arc<Session>),
}

/// The state of one Write stream as it is turned into blob chunks.
pub(super) struct Incoming {
    pub(super) first: Option<WriteRequest>,
    pub(super) rest: Requests,
    pub(super) resource: String,
    /// Offset the next message must carry (wire bytes so far).
    pub(super) next_offset: u64,
    pub(super) finished: bool,
    pub(super) decoder: Option<Decompressor>,
    pub(super) tee: Option<Tee>,
    /// Wire bytes received, for the compressed committed_size.
    pub(super) received: Arc<AtomicU64>,
}

impl Incoming {
    pub(super) fn into_stream(self) -> ChunkStream {
        futures::stream::unfold(self, |mut st| async move {
            let item = st.next().await?;
            if item.is_err() {
                st.finished = true;
                st.decoder = None;
            }
            Some((item, st))
        })
        .boxed()
    }

    async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            if let Some(decoder) = &mut self.decoder {
                match decoder.next_chunk() {
                    Ok(Some(chunk)) => return Some(Ok(chunk)),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.finished {
                if self.decoder.as_ref().is_some_and(|d| !d.frame_done()) {
                    self.decoder = None;
                    return Some(Err(Error::InvalidArgument(
                        "the zstd stream ended mid-frame".into(),
                    )));
                }
                return None;
            }
            let msg = match self.receive().await {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            self.finished = msg.finish_write;
            let data = msg.data;
            self.next_offset += data.len() as u64;
            self.received.fetch_add(data.len() as u64, Ordering::SeqCst);
            if let Some(decoder) = &mut self.decoder {
                decoder.feed(data);
                continue;
            }
            match &self.tee {
                Some(Tee::Spool(spool)) if !spool.send(data.clone()).await => {
                    // The spool only keeps the upload resumable: losing it
                    // (a full local disk) must not fail an upload the store
                    // can still take. It now resumes from what it kept.
                    tracing::warn!(
                        "the upload spool stopped (see its error); the upload goes on without it"
                    );
                    self.tee = None;
                }
                Some(Tee::Memory(session)) => {
                    session
                        .kept
                        .lock()
                        .expect("session lock")
                        .tail
                        .push_back(data.clone());
                    session.len.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
                _ => {}
            }
            return Some(Ok(data));
        }
    }

    /// The next message, checked against the stream so far.
    async fn receive(&mut self) -> Result<WriteRequest> {
        let msg = match self.first.take() {
            Some(m) => m,
            None => match self.rest.next().await {
                Some(Ok(m)) => m,
                Some(Err(status)) => {
                    return Err(Error::Cancelled(format!(
                        "upload interrupted: {}",
                        status.message()
                    )));
                }
                None => {
                    return Err(Error::Cancelled(format!(
                        "upload ended after {} bytes without finish_write",
                        self.next_offset
                    )));
                }
            },
        };
        if !msg.resource_name.is_empty() && msg.resource_name != self.resource {
            return Err(Error::InvalidArgument(format!(
                "resource_name changed mid-stream from {:?} to {:?}",
                self.resource, msg.resource_name
            )));
        }
        if msg.write_offset as u64 != self.next_offset {
            return Err(Error::InvalidArgument(format!(
                "write_offset {} but {} bytes were sent so far",
                msg.write_offset, self.next_offset
            )));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn msg(name: &str, offset: i64, data: &'static [u8], finish: bool) -> WriteRequest {
        WriteRequest {
            resource_name: name.into(),
            write_offset: offset,
            finish_write: finish,
            data: Bytes::from_static(data),
        }
    }

    /// Runs a Write's messages through `Incoming` from `start`; the bytes
    /// it yields, or the first error.
    async fn feed(start: u64, msgs: Vec<WriteRequest>) -> Result<Vec<u8>> {
        let mut msgs = msgs.into_iter();
        let first = msgs.next();
        let rest: Requests = futures::stream::iter(msgs.map(Ok)).boxed();
        let incoming = Incoming {
            resource: first
                .as_ref()
                .map(|f| f.resource_name.clone())
                .unwrap_or_default(),
            first,
            rest,
            next_offset: start,
            finished: false,
            decoder: None,
            tee: None,
            received: Arc::new(AtomicU64::new(0)),
        };
        let chunks: Vec<Bytes> = incoming.into_stream().try_collect().await?;
        Ok(chunks.concat())
    }

    /// (name, resumed from, messages, the bytes or an error's text).
    type Case = (
        &'static str,
        u64,
        Vec<WriteRequest>,
        std::result::Result<&'static [u8], &'static str>,
    );

    #[tokio::test]
    async fn offsets_must_continue_the_stream() {
        let n = "uploads/u/blobs/x/6";
        let cases: Vec<Case> = vec![
            (
                "in order",
                0,
                vec![msg(n, 0, b"abc", false), msg("", 3, b"def", true)],
                Ok(b"abcdef"),
            ),
            (
                "one message",
                0,
                vec![msg(n, 0, b"abcdef", true)],
                Ok(b"abcdef"),
            ),
            ("resumed", 3, vec![msg(n, 3, b"def", true)], Ok(b"def")),
            (
                "a gap",
                0,
                vec![msg(n, 0, b"abc", false), msg("", 4, b"ef", true)],
                Err("write_offset 4 but 3"),
            ),
            (
                "an overlap",
                0,
                vec![msg(n, 0, b"abc", false), msg("", 2, b"cdef", true)],
                Err("write_offset 2 but 3"),
            ),
            (
                "a negative offset",
                0,
                vec![msg(n, -1, b"abc", true)],
                Err("write_offset -1"),
            ),
            (
                "a renamed stream",
                0,
                vec![
                    msg(n, 0, b"abc", false),
                    msg("uploads/v/blobs/x/6", 3, b"def", true),
                ],
                Err("changed mid-stream"),
            ),
            (
                "no finish_write",
                0,
                vec![msg(n, 0, b"abc", false)],
                Err("without finish_write"),
            ),
        ];
        for (name, start, msgs, want) in cases {
            let got = feed(start, msgs).await;
            match (want, got) {
                (Ok(bytes), Ok(got)) => assert_eq!(got, bytes, "{name}"),
                (Err(text), Err(e)) => assert!(e.to_string().contains(text), "{name}: {e}"),
                (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
            }
        }
    }

    /// Uploads whose spool writers fall behind hold at most the shared
    /// budget's bytes between them, whatever their queues could take; once
    /// the writers catch up, both finish.
    #[tokio::test]
    async fn uploads_waiting_for_their_spools_hold_at_most_the_budget() {
        const PIECE: usize = 64 << 10;
        static DATA: [u8; PIECE] = [7; PIECE];
        let budget = crate::budget::ByteBudget::new(4 * PIECE as u64);
        let mut writers = Vec::new();
        let mut uploads = Vec::new();
        for u in 0..2 {
            let name = format!("uploads/u{u}/blobs/x/{}", 20 * PIECE);
            let msgs: Vec<WriteRequest> = (0..20)
                .map(|i| WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i * PIECE) as i64,
                    finish_write: i == 19,
                    data: Bytes::from_static(&DATA),
                })
                .collect();
            let mut msgs = msgs.into_iter();
            // A queue as deep as the spool writer's: it alone would hold 16
            // pieces per upload.
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            writers.push(rx);
            let incoming = Incoming {
                resource: name,
                first: msgs.next(),
                rest: futures::stream::iter(msgs.map(Ok)).boxed(),
                next_offset: 0,
                finished: false,
                decoder: None,
                tee: Some(Tee::Spool(super::super::Spool::new(tx, &budget))),
                received: Arc::new(AtomicU64::new(0)),
            };
            uploads.push(tokio::spawn(async move {
                let chunks: Vec<Bytes> = incoming.into_stream().try_collect().await?;
                Ok::<usize, crate::error::Error>(chunks.iter().map(Bytes::len).sum())
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while budget.free_kib() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the budget never filled"
            );
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let queued: usize = writers.iter().map(|w| w.len()).sum();
        assert_eq!(queued, 4, "pieces waiting for the spools, budget 4");
        assert!(uploads.iter().all(|u| !u.is_finished()));
        // The writers catch up: each written piece gives its room back.
        let drains: Vec<_> = writers
            .into_iter()
            .map(|mut rx| tokio::spawn(async move { while rx.recv().await.is_some() {} }))
            .collect();
        for u in uploads {
            assert_eq!(u.await.unwrap().unwrap(), 20 * PIECE);
        }
        for d in drains {
            d.await.unwrap();
        }
        assert_eq!(budget.free_kib(), 4 * PIECE / 1024);
    }

    #[test]
    fn a_resumed_write_must_start_where_the_spool_ends() {
        let first = msg("n", 1000, b"x", false);
        assert!(super::super::require_offset(Some(&first), 1000).is_ok());
        let err = super::super::require_offset(Some(&first), 999).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(err.to_string().contains("999 bytes are committed"), "{err}");
        assert!(super::super::require_offset(None, 5).is_ok());
    }
}
