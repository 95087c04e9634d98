//! `ContentAddressed`: the layer the builder puts at the root of every CAS.
//!
//! Contract: no byte reaches the inner store's commit unless it hashes to the
//! digest it is stored under, so no write path (BatchUpdateBlobs, ByteStream,
//! workers) can skip verification. It also makes the empty blob always present.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::{BlobStore, Body, ChunkStream, Range, Store};
use crate::digest::{Digest, HashKey, Hasher};
use crate::error::{Error, Result};

/// Chunks at least this large are hashed on the blocking pool, so a 350 MB/s
/// SHA-256 never stalls the async workers for more than a fraction of a ms.
const OFFLOAD_MIN: usize = 64 << 10;

/// Verifies content against its digest on every put.
#[derive(Debug)]
pub struct ContentAddressed {
    inner: Store,
    /// Largest blob accepted (0: any).
    max_blob_size: u64,
}

impl ContentAddressed {
    /// Wraps `inner`, accepting blobs of at most `max_blob_size` bytes
    /// (0: any); see the module docs for the guarantee.
    pub fn new(inner: Store, max_blob_size: u64) -> Self {
        ContentAddressed {
            inner,
            max_blob_size,
        }
    }

    /// Refuses a blob above the limit before a byte of it is read.
    fn check_size(&self, digest: &Digest) -> Result<()> {
        check_blob_size(digest, self.max_blob_size)
    }
}

/// INVALID_ARGUMENT for a blob above `max` bytes (0: no limit), the one
/// rule every upload path applies (the CAS root layer enforces it; uploads
/// that spool first ask it up front).
pub(crate) fn check_blob_size(digest: &Digest, max: u64) -> Result<()> {
    if max > 0 && digest.size > max {
        return Err(Error::InvalidArgument(format!(
            "blob {digest} is too large for this instance: expected at most {max} bytes \
             (max_cas_blob_size_bytes), got {}",
            digest.size
        )));
    }
    Ok(())
}

/// The INVALID_ARGUMENT a client sees for content that does not match.
pub fn mismatch(expected: &Digest, actual: &Digest) -> Error {
    Error::InvalidArgument(format!(
        "content does not match its digest: expected {expected}, actual {actual} ({})",
        expected.function.name()
    ))
}

/// The INVALID_ARGUMENT for content longer than its digest says.
pub(crate) fn too_long(expected: &Digest, seen: u64) -> Error {
    Error::InvalidArgument(format!(
        "blob {expected}: received at least {seen} bytes, more than the {} declared",
        expected.size
    ))
}

/// The hash of a stream so far: ready, or still taking in its last chunk
/// on the blocking pool.
enum Hashing {
    Ready(Hasher),
    Running(tokio::task::JoinHandle<Hasher>),
}

impl Hashing {
    async fn settle(self) -> Result<Hasher> {
        match self {
            Hashing::Ready(h) => Ok(h),
            Hashing::Running(job) => Ok(job.await?),
        }
    }

    /// Starts hashing `chunk` after what came before it: at once when it is
    /// small, else on the blocking pool, without waiting for it.
    fn then(mut hasher: Hasher, chunk: &Bytes) -> Hashing {
        if chunk.len() < OFFLOAD_MIN {
            hasher.update(chunk);
            return Hashing::Ready(hasher);
        }
        let chunk = chunk.clone();
        Hashing::Running(tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            hasher
        }))
    }
}

/// Passes `stream` through, hashing it; ends with an error instead of the end
/// of stream if the content turns out not to match `expected`.
///
/// A chunk is passed on while it is hashed, the hash one chunk behind: what
/// the inner store does with a chunk (cut it, write it, send it) overlaps
/// with hashing it instead of following it. The end of the stream, which
/// an inner store waits for before it commits, still comes only after the
/// whole content matched.
fn verifying(expected: Digest, stream: ChunkStream) -> ChunkStream {
    struct State {
        stream: ChunkStream,
        hashing: Option<Hashing>,
        seen: u64,
    }
    let state = State {
        stream,
        hashing: Some(Hashing::Ready(expected.function.hasher(expected.size))),
        seen: 0,
    };
    futures::stream::unfold(state, move |mut st| async move {
        let hashing = st.hashing.take()?;
        match st.stream.next().await {
            Some(Ok(chunk)) => {
                st.seen += chunk.len() as u64;
                if st.seen > expected.size {
                    return Some((Err(too_long(&expected, st.seen)), st));
                }
                match hashing.settle().await {
                    Ok(hasher) => {
                        st.hashing = Some(Hashing::then(hasher, &chunk));
                        Some((Ok(chunk), st))
                    }
                    Err(e) => Some((Err(e), st)),
                }
            }
            Some(Err(e)) => Some((Err(e), st)),
            None => match hashing.settle().await {
                Ok(hasher) => {
                    let actual = hasher.finish();
                    (actual != expected).then(|| (Err(mismatch(&expected, &actual)), st))
                }
                Err(e) => Some((Err(e), st)),
            },
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for ContentAddressed {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        if !digests.iter().any(Digest::is_empty_blob) {
            return self.inner.find_missing(digests).await;
        }
        let stored: Vec<Digest> = digests
            .iter()
            .filter(|d| !d.is_empty_blob())
            .copied()
            .collect();
        self.inner.find_missing(&stored).await
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        let empty = key.function.empty();
        if HashKey::of(&empty) == *key {
            return Ok(Some(empty));
        }
        self.inner.resolve(key).await
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        if digest.is_empty_blob() {
            return Ok(Body::Bytes(range.slice(&Bytes::new())?));
        }
        self.inner.get(digest, range).await
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        self.check_size(digest)?;
        if digest.is_empty_blob() {
            // Never buffer what a client sends under the empty digest: one
            // byte is already a mismatch.
            return match body.collect_max(0).await {
                Ok(_) => Ok(()),
                Err(Error::ResourceExhausted { .. }) => Err(Error::InvalidArgument(format!(
                    "content does not match its digest: expected {digest} (empty), got at least one byte"
                ))),
                Err(e) => Err(e),
            };
        }
        match body {
            Body::Bytes(data) => {
                let hasher = Hashing::then(digest.function.hasher(digest.size), &data)
                    .settle()
                    .await?;
                let actual = hasher.finish();
                if actual != *digest {
                    return Err(mismatch(digest, &actual));
                }
                self.inner.put(digest, Body::Bytes(data)).await
            }
            Body::Stream(stream) => {
                self.inner
                    .put(digest, Body::Stream(verifying(*digest, stream)))
                    .await
            }
        }
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        self.inner.staging(digest)
    }

    async fn put_file(&self, digest: &Digest, file: super::VerifiedFile) -> Result<()> {
        self.check_size(digest)?;
        if file.digest() != *digest {
            return Err(mismatch(digest, &file.digest()));
        }
        if digest.is_empty_blob() {
            return Ok(());
        }
        self.inner.put_file(digest, file).await
    }

    async fn stored_chunks(&self, digest: &Digest) -> Result<Option<super::StoredChunks>> {
        self.inner.stored_chunks(digest).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::digest::DigestFunction;
    use crate::store::contract::{self, blob, streamed};
    use crate::store::memory::MemoryStore;

    fn layer() -> (Arc<MemoryStore>, ContentAddressed) {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        (inner.clone(), ContentAddressed::new(inner, 0))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn contract() {
        contract::run_all(Arc::new(layer().1)).await;
    }

    #[tokio::test]
    async fn rejects_wrong_content_in_both_forms_and_stores_nothing() {
        let (inner, store) = layer();
        let data = blob(1, 200_000);
        let d = DigestFunction::Sha256.digest_of(&data);
        let mut wrong = data.to_vec();
        wrong[100] ^= 1;
        let wrong = Bytes::from(wrong);
        for body in [Body::Bytes(wrong.clone()), streamed(wrong.clone(), 9_000)] {
            let err = store.put(&d, body).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument(m) if m.contains("expected") && m.contains("actual")),
                "{err:?}"
            );
        }
        // Too short and too long are caught too.
        assert!(
            store
                .put(&d, streamed(data.slice(..1000), 100))
                .await
                .is_err()
        );
        let mut long = data.to_vec();
        long.push(0);
        assert!(store.put(&d, streamed(long.into(), 50_000)).await.is_err());
        assert_eq!(inner.find_missing(&[d]).await.unwrap(), vec![d]);
    }

    #[tokio::test]
    async fn the_empty_blob_is_always_present() {
        let (_, store) = layer();
        for f in DigestFunction::ALL {
            let e = f.empty();
            assert!(store.find_missing(&[e]).await.unwrap().is_empty());
            assert!(
                crate::store::get_bytes(&store, &e)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn verifies_blake3_as_well() {
        let (_, store) = layer();
        let data = blob(3, 100_000);
        let d = DigestFunction::Blake3.digest_of(&data);
        store.put(&d, streamed(data.clone(), 7_000)).await.unwrap();
        let sha = DigestFunction::Sha256.digest_of(&data);
        let as_blake = Digest {
            function: DigestFunction::Blake3,
            ..sha
        };
        assert!(store.put(&as_blake, data.into()).await.is_err());
    }

    #[tokio::test]
    async fn an_endless_body_under_the_empty_digest_is_refused_at_once() {
        let (_, store) = layer();
        let endless = futures::stream::repeat_with(|| Ok(Bytes::from_static(b"more"))).boxed();
        let empty = DigestFunction::Sha256.empty();
        let err = store.put(&empty, Body::Stream(endless)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
}
