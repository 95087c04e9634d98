//! Cuts a stream and stores its chunks at once, on three lanes: reading
//! (and hashing whole, under a verifying layer), cutting, and storing,
//! within a byte budget shared by every upload of a chunked layer.

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::Chunker;
use super::window::{Chunk, Window};
use crate::budget::ByteBudget;
use crate::error::Result;
use crate::store::ChunkStream;

/// Pieces of the stream waiting for the cutter (about a MiB each from gRPC).
const PIECES_AHEAD: usize = 4;

/// Cuts `stream` with `chunker` and hands each chunk to `store`, at most
/// `in_flight` at once (and within `budget`'s bytes, when given, shared
/// with other calls), in order; the digests `store` returns, and the
/// bytes the stream held (which the caller checks against what it
/// expected: a stream is not a promise of its length). `stored` is told of
/// each chunk stored, in order, as soon as it and every chunk before it
/// are (an upload keeps only the bytes after them to resume from).
///
/// Three things run at once: the stream is read (and, under a verifying
/// layer, hashed whole), the cutter scans for cut points on the blocking
/// pool, and chunks are named and stored. In one task the cut (about 0.7 of
/// a SHA-256 pass per byte) waited for the read and the read for the cut.
/// An error from the stream fails the call once the chunks cut before it
/// are stored; chunks of a blob that is never finished are orphans the
/// store's eviction removes.
pub(crate) async fn cut_and_store<F, Fut>(
    chunker: &Chunker,
    mut stream: ChunkStream,
    in_flight: usize,
    budget: Option<&ByteBudget>,
    store: F,
    mut stored: impl FnMut(&crate::digest::Digest),
) -> Result<(Vec<crate::digest::Digest>, u64)>
where
    F: Fn(Chunk) -> Fut,
    Fut: std::future::Future<Output = Result<crate::digest::Digest>>,
{
    let (to_cutter, mut pieces) = tokio::sync::mpsc::channel::<Bytes>(PIECES_AHEAD);
    let (to_store, mut cut) =
        tokio::sync::mpsc::channel::<(Chunk, Option<OwnedSemaphorePermit>)>(in_flight.max(1));
    let chunker = std::sync::Arc::new(chunker.clone());
    // Set once the stream failed: what was cut before is still stored (it
    // is what a resumed upload need not send again), the bytes after the
    // last cut are not a chunk.
    let broken = std::sync::atomic::AtomicBool::new(false);
    let broken = &broken;
    // Each cut is its own short blocking call, never a thread held while
    // the network is waited for: uploads held open by a client would
    // otherwise pin the blocking pool that hashing needs.
    let cutter = async move {
        let mut window = Window::new(&chunker);
        let mut ended = false;
        loop {
            while window.wants_more() && !ended {
                let next = tokio::select! {
                    next = pieces.recv() => next,
                    // The stores failed: nothing more is cut.
                    () = to_store.closed() => return Ok(()),
                };
                match next {
                    Some(piece) => window.feed(piece),
                    None => ended = true,
                }
            }
            if ended && broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let c = chunker.clone();
            let (w, chunk) = tokio::task::spawn_blocking(move || {
                let chunk = window.cut(&c);
                (window, chunk)
            })
            .await?;
            window = w;
            let Some(chunk) = chunk else {
                return Ok::<_, crate::error::Error>(());
            };
            // Room for it among all uploads' chunks waiting to be stored;
            // held until it is stored.
            let room = match budget {
                Some(budget) => tokio::select! {
                    room = budget.take(chunk.len()) => room,
                    () = to_store.closed() => return Ok(()),
                },
                None => None,
            };
            if to_store.send((chunk, room)).await.is_err() {
                return Ok(());
            }
        }
    };
    let feed = async move {
        loop {
            let piece = tokio::select! {
                piece = stream.next() => piece,
                // The cutter stopped (the stores failed): the client's
                // next piece is not waited for.
                () = to_cutter.closed() => break,
            };
            let Some(piece) = piece else {
                break;
            };
            match piece {
                Ok(piece) => {
                    if to_cutter.send(piece).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    broken.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
        Ok::<_, crate::error::Error>(())
    };
    // The stores in flight progress while the next chunk is awaited (a
    // future in the queue moves only while it is polled).
    let drain = async {
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut chunks = Vec::new();
        let mut total = 0u64;
        let mut ended = false;
        loop {
            tokio::select! {
                Some(digest) = pending.next(), if !pending.is_empty() => {
                    let digest = digest?;
                    stored(&digest);
                    chunks.push(digest);
                }
                next = cut.recv(), if !ended && pending.len() < in_flight.max(1) => match next {
                    Some((chunk, room)) => {
                        total += chunk.len() as u64;
                        let stored = store(chunk);
                        pending.push_back(async move {
                            let digest = stored.await;
                            drop(room);
                            digest
                        });
                    }
                    None => ended = true,
                },
                else => return Ok((chunks, total)),
            }
        }
    };
    // Joined, not raced: a failed stream still lets the chunks cut before
    // it be stored. A failed store ends the cutter (its channel closes),
    // and with it the feed.
    let (fed, cutter, stored) = tokio::join!(feed, cutter, drain);
    fed?;
    cutter?;
    stored
}

#[cfg(test)]
mod tests {
    use super::super::FastCdc;
    use super::super::fastcdc2020::tests::{chunks, noise};
    use super::*;
    use crate::digest::{Digest, DigestFunction};
    use crate::error::Error;

    /// The SHA-256 digests of `data`'s chunks of the given sizes, in order.
    fn named(sizes: &[usize], data: &[u8]) -> Vec<Digest> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&n| {
                at += n;
                DigestFunction::Sha256.digest_of(&data[at - n..at])
            })
            .collect()
    }

    fn pieces(data: &[u8], n: usize) -> Vec<Result<Bytes>> {
        data.chunks(n)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect()
    }

    /// `cut_and_store` without a budget, naming each chunk as its store.
    async fn cut_and_name(
        chunker: &Chunker,
        stream: ChunkStream,
        in_flight: usize,
        stored: impl FnMut(&Digest),
    ) -> Result<(Vec<Digest>, u64)> {
        cut_and_store(
            chunker,
            stream,
            in_flight,
            None,
            |c| async move { Ok(c.digest(DigestFunction::Sha256)) },
            stored,
        )
        .await
    }

    /// The cutter on its own lane cuts exactly where the whole blob is cut,
    /// and the chunks come back named in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_are_cut_and_stored_in_order() {
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let data = noise(500_000, 5);
        let whole = chunks(|d| chunker.cut(d), &data);
        let stream = futures::stream::iter(pieces(&data, 70_000)).boxed();
        let (digests, total) = cut_and_name(&chunker, stream, 3, |_| {}).await.unwrap();
        assert_eq!(total, data.len() as u64);
        let expected = named(&whole, &data);
        assert_eq!(digests, expected);
    }

    /// Two uploads sharing a budget hold at most its bytes of chunks
    /// waiting to be stored, however many chunks each may have in flight:
    /// with the store stalled, they fill the budget and wait; once it
    /// moves, both finish with every chunk in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_sharing_a_budget_hold_at_most_its_bytes() {
        use std::sync::atomic::{AtomicU64, Ordering};
        const BUDGET: u64 = 64 << 10;
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let budget = ByteBudget::new(BUDGET);
        let gate = tokio::sync::Semaphore::new(0);
        let (held, most) = (AtomicU64::new(0), AtomicU64::new(0));
        let store = |c: Chunk| {
            let (gate, held, most) = (&gate, &held, &most);
            async move {
                let len = c.len() as u64;
                let now = held.fetch_add(len, Ordering::SeqCst) + len;
                most.fetch_max(now, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                held.fetch_sub(len, Ordering::SeqCst);
                Ok(c.digest(DigestFunction::Sha256))
            }
        };
        let upload = |seed: u64| {
            let data = noise(400_000, seed);
            let expected = named(&chunks(|d| chunker.cut(d), &data), &data);
            let stream = futures::stream::iter(pieces(&data, 50_000)).boxed();
            let done = cut_and_store(&chunker, stream, 64, Some(&budget), store, |_| {});
            async move { (done.await.unwrap().0, expected) }
        };
        let both = futures::future::join(upload(11), upload(12));
        let watch = async {
            // The budget fills: less room left than the largest chunk
            // (16 KiB) needs, so the cutters wait.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while budget.free_kib() >= 16 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the budget never filled"
                );
                tokio::task::yield_now().await;
            }
            gate.add_permits(1 << 20);
        };
        let (((a, want_a), (b, want_b)), ()) = futures::future::join(both, watch).await;
        assert_eq!(a, want_a);
        assert_eq!(b, want_b);
        let most = most.load(Ordering::SeqCst);
        assert!(
            most <= BUDGET,
            "{most} bytes waited to be stored, budget {BUDGET}"
        );
    }

    /// A stream that fails (a client gone, content that did not match)
    /// fails the call: it is never a shorter blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_stream_fails_the_call() {
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let data = noise(200_000, 6);
        let mut items = pieces(&data, 50_000);
        items.push(Err(Error::InvalidArgument("content does not match".into())));
        let stream = futures::stream::iter(items).boxed();
        let got = cut_and_name(&chunker, stream, 2, |_| {}).await;
        assert!(matches!(got, Err(Error::InvalidArgument(_))), "{got:?}");
    }

    /// The chunks cut before a stream failed are still stored, and
    /// reported in order: a resumed upload need not send them again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_cut_before_a_failure_are_stored_and_reported() {
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let data = noise(400_000, 8);
        let whole = chunks(|d| chunker.cut(d), &data);
        let expected = named(&whole, &data);
        let mut items = pieces(&data, 30_000);
        items.push(Err(Error::Cancelled("the client went away".into())));
        let stored = std::sync::Mutex::new(Vec::new());
        let got = cut_and_name(&chunker, futures::stream::iter(items).boxed(), 3, |d| {
            stored.lock().unwrap().push(*d)
        })
        .await;
        assert!(matches!(got, Err(Error::Cancelled(_))), "{got:?}");
        let stored = stored.into_inner().unwrap();
        assert_eq!(stored[..], expected[..stored.len()], "in order, a prefix");
        let covered: u64 = stored.iter().map(|d| d.size).sum();
        assert!(
            covered + chunker.window() as u64 >= data.len() as u64,
            "all but the last window is stored: {covered} of {}",
            data.len()
        );
    }

    /// Uploads whose clients have gone quiet hold no blocking thread: with
    /// a pool of one, hashing still runs while eight of them wait.
    #[test]
    fn waiting_uploads_do_not_hold_the_blocking_pool() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
            let data = Bytes::from(noise(100_000, 7));
            let mut uploads = Vec::new();
            for _ in 0..8 {
                let (chunker, data) = (chunker.clone(), data.clone());
                uploads.push(tokio::spawn(async move {
                    // A full window, then a client that sends nothing more.
                    let stream = futures::stream::iter([Ok(data)])
                        .chain(futures::stream::pending())
                        .boxed();
                    cut_and_name(&chunker, stream, 2, |_| {}).await
                }));
            }
            let hashed = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                tokio::task::spawn_blocking(|| DigestFunction::Sha256.digest_of(b"x")),
            )
            .await;
            assert!(
                hashed.is_ok(),
                "the blocking pool is held by waiting uploads"
            );
            for u in uploads {
                u.abort();
            }
        });
    }
}
