//! `Chunked`: the layer that stores large blobs as content-defined chunks,
//! so that two versions of an artifact share every chunk an edit did not
//! touch, whichever client uploaded them and however.
//!
//! Contract, beyond the store contract:
//! - a blob of at least `min_size` bytes is stored as its chunks (each a
//!   blob of the store below), a layout listing them and a pointer to the
//!   layout ([`super::chunked_layout`]); smaller blobs pass through, and so
//!   do reads of large blobs stored whole before the layer was switched on;
//! - a chunked blob is present only while its pointer, layout and every
//!   chunk are: `find_missing` checks (and so renews) them all, and a read
//!   of a blob whose chunk was evicted is NOT_FOUND before a byte is sent;
//! - a ranged read fetches only the chunks the range covers.
//!
//! It sits directly under the CAS's root layer, which verifies every byte
//! of the whole blob; the layer hashes each chunk itself to name it.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};

use super::build::ChunkedLayer;
use super::chunked_layout::{Layout, decode_pointer, encode_pointer, pointer_key};
use super::instrumented::ChunkedMetrics;
use super::turns::Turns;
use super::{BlobStore, Body, Range, Store, StoredChunks, VerifiedFile, get_bytes};
use crate::budget::ByteBudget;
use crate::chunking::Chunker;
use crate::chunking::lanes::cut_and_store;
use crate::chunking::splitter::Chunk;
use crate::digest::{Digest, DigestFunction, HashKey};
use crate::error::{Error, Result};

/// Chunks hashed and stored at once per upload: enough to keep both cores
/// hashing while the splitter cuts the next, and to overlap the fs store's
/// commit rounds (4 measured 20% slower than 16 on the embedded default);
/// at most this many chunks' bytes (8 MiB at the default average) are held.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Chunk reads started ahead of the one being sent: on S3 each is a GET
/// whose latency the others hide (2 read a chunked blob at 58% of an
/// unchunked one there). Each waits as a started response, not as bytes
/// in memory.
const READ_AHEAD: usize = 8;
/// Memory for the layouts of blobs used recently (about 40 bytes per
/// chunk), so a read or a FindMissingBlobs of a hot blob costs no lookup
/// of its pointer and layout.
const LAYOUTS_BYTES: u64 = 32 << 20;

/// A chunked blob's layout and the digest it is stored under.
#[derive(Debug)]
struct Known {
    layout: Layout,
    list: Digest,
}

/// Stores blobs of at least `min_size` bytes as chunks; see the module docs.
#[derive(Debug)]
pub struct Chunked {
    inner: Store,
    /// Where pointers live: the instance's action cache.
    pointers: Store,
    chunker: Chunker,
    min_size: u64,
    /// Room for cut chunks waiting to be stored, all uploads together.
    budget: ByteBudget,
    layouts: moka::sync::Cache<Digest, Arc<Known>>,
    counts: ChunkedMetrics,
    /// Turns of the chunks being stored.
    chunk_turns: Turns,
    /// Turns of the blobs whose layout and pointer are being written.
    blob_turns: Turns,
}

impl Chunked {
    /// Chunks blobs of at least `spec.min_size` bytes into `inner`.
    pub(crate) fn new(inner: Store, spec: ChunkedLayer, counts: ChunkedMetrics) -> Self {
        Chunked {
            budget: ByteBudget::new(spec.in_flight),
            inner,
            pointers: spec.pointers,
            chunker: spec.chunker,
            min_size: spec.min_size.max(1),
            layouts: moka::sync::Cache::builder()
                .max_capacity(LAYOUTS_BYTES)
                .weigher(|_, k: &Arc<Known>| {
                    (96 + 40 * k.layout.chunks.len()).min(u32::MAX as usize) as u32
                })
                .build(),
            counts,
            chunk_turns: Turns::default(),
            blob_turns: Turns::default(),
        }
    }

    fn chunked(&self, digest: &Digest) -> bool {
        digest.size >= self.min_size
    }

    /// The layout of a blob stored as chunks, or None (stored whole, or
    /// not at all). Reads the pointer and the layout, checking the layout
    /// against its own digest: the store below does not verify.
    async fn layout(&self, blob: &Digest) -> Result<Option<Arc<Known>>> {
        if let Some(layout) = self.layouts.get(blob) {
            return Ok(Some(layout));
        }
        let function = blob.function;
        let pointer = match get_bytes(&*self.pointers, &pointer_key(function, &blob.hash)).await {
            Ok(p) if p.is_empty() => return Ok(None),
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((size, layout_digest)) = decode_pointer(function, &pointer) else {
            tracing::error!(%blob, "a chunked blob's pointer is damaged");
            return Ok(None);
        };
        if size != blob.size {
            return Ok(None);
        }
        let bytes = match get_bytes(&*self.inner, &layout_digest).await {
            Ok(b) => b,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let layout = (function.digest_of(&bytes) == layout_digest)
            .then(|| Layout::decode(function, &bytes, blob.size))
            .flatten();
        let Some(layout) = layout else {
            tracing::error!(%blob, layout = %layout_digest, "a chunked blob's layout is damaged");
            return Ok(None);
        };
        let known = Arc::new(Known {
            layout,
            list: layout_digest,
        });
        self.layouts.insert(*blob, known.clone());
        Ok(Some(known))
    }

    /// Which of the chunked `blobs` (not stored whole) lack their pointer,
    /// layout or a chunk; asking renews what is there.
    async fn missing_chunked(&self, blobs: &[Digest]) -> Result<HashSet<Digest>> {
        let mut missing = HashSet::new();
        let (mut keys, mut parts, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        let mut key_owners = Vec::new();
        for blob in blobs {
            match self.layout(blob).await? {
                None => {
                    missing.insert(*blob);
                }
                Some(known) => {
                    keys.push(pointer_key(blob.function, &blob.hash));
                    key_owners.push(*blob);
                    for d in std::iter::once(known.list).chain(known.layout.chunks.iter().copied())
                    {
                        parts.push(d);
                        owners.push(*blob);
                    }
                }
            }
        }
        if parts.is_empty() {
            return Ok(missing);
        }
        let (no_pointer, absent) = futures::try_join!(
            self.pointers.find_missing(&keys),
            self.inner.find_missing(&parts)
        )?;
        let absent: HashSet<Digest> = absent.into_iter().collect();
        let no_pointer: HashSet<Digest> = no_pointer.into_iter().collect();
        let pointerless = keys
            .iter()
            .zip(&key_owners)
            .filter(|(k, _)| no_pointer.contains(k))
            .map(|(_, owner)| *owner);
        let chunkless: HashSet<Digest> = parts
            .iter()
            .zip(&owners)
            .filter(|(part, _)| absent.contains(part))
            .map(|(_, owner)| *owner)
            .collect();
        for owner in pointerless {
            if missing.insert(owner) {
                self.layouts.invalidate(&owner);
            }
        }
        for owner in chunkless {
            if missing.insert(owner) {
                self.bury(&owner).await?;
            }
        }
        Ok(missing)
    }

    /// Removes the chunk list of a blob whose chunks are gone, so nothing
    /// is left that names them: its pointer becomes a tombstone (empty).
    /// Under the blob's turn and only once its chunks are seen gone again,
    /// so an upload of the same blob that stored them meanwhile keeps its
    /// pointer (an upload finishing later writes the pointer over the
    /// tombstone).
    async fn bury(&self, blob: &Digest) -> Result<()> {
        let Some(known) = self.layout(blob).await? else {
            return Ok(());
        };
        let _turn = self.blob_turns.take(*blob).await;
        self.layouts.invalidate(blob);
        let parts: Vec<Digest> = std::iter::once(known.list)
            .chain(known.layout.chunks.iter().copied())
            .collect();
        if self.inner.find_missing(&parts).await?.is_empty() {
            return Ok(());
        }
        tracing::info!(%blob, "a chunked blob lost chunks; its chunk list is removed");
        self.pointers
            .put(
                &pointer_key(blob.function, &blob.hash),
                Body::Bytes(Bytes::new()),
            )
            .await
    }

    /// Names `chunk` and stores it unless the store has it, one storer of
    /// a chunk at a time (uploads of similar blobs cut the same chunks).
    async fn store_chunk(&self, function: DigestFunction, chunk: Chunk) -> Result<Digest> {
        let (digest, chunk) =
            tokio::task::spawn_blocking(move || (chunk.digest(function), chunk)).await?;
        let _turn = self.chunk_turns.take(digest).await;
        if self.inner.put_if_absent(&digest, chunk.into_body()).await? {
            self.counts.chunks_stored.inc();
            self.counts.stored_bytes.inc_by(digest.size);
        } else {
            self.counts.chunks_present.inc();
        }
        Ok(digest)
    }

    /// Cuts `body` into chunks, stores the ones the store lacks, and
    /// returns them in order.
    async fn store_chunks(&self, blob: &Digest, body: Body) -> Result<Vec<Digest>> {
        let function = blob.function;
        let (chunks, total) = cut_and_store(
            &self.chunker,
            body.into_stream(),
            CHUNKS_IN_FLIGHT,
            Some(&self.budget),
            |chunk| self.store_chunk(function, chunk),
            |chunk| super::progress::report(blob, chunk),
        )
        .await?;
        if total != blob.size {
            return Err(Error::InvalidArgument(format!(
                "blob {blob}: expected {} bytes, received {total}",
                blob.size
            )));
        }
        Ok(chunks)
    }
}

#[async_trait]
impl BlobStore for Chunked {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let whole_missing = self.inner.find_missing(digests).await?;
        let large: Vec<Digest> = whole_missing
            .iter()
            .filter(|d| self.chunked(d))
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if large.is_empty() {
            return Ok(whole_missing);
        }
        let missing = self.missing_chunked(&large).await?;
        Ok(whole_missing
            .into_iter()
            .filter(|d| !self.chunked(d) || missing.contains(d))
            .collect())
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        if !self.chunked(digest) {
            return self.inner.get(digest, range).await;
        }
        let Some(layout) = self.layout(digest).await? else {
            return self.inner.get(digest, range).await;
        };
        let (start, end) = range.bounds(digest.size)?;
        let parts = layout.layout.parts(start, end);
        let wanted: Vec<Digest> = parts.iter().map(|(c, _)| *c).collect();
        let absent = self.inner.find_missing(&wanted).await?;
        if !absent.is_empty() {
            self.bury(digest).await?;
            return Err(Error::NotFound(format!(
                "blob {digest} not found ({} of its chunks are gone)",
                absent.len()
            )));
        }
        let inner = self.inner.clone();
        let stream = futures::stream::iter(parts)
            .map(move |(chunk, range)| {
                let inner = inner.clone();
                async move { Ok::<_, Error>(inner.get_passing(&chunk, range).await?.into_stream()) }
            })
            .buffered(READ_AHEAD)
            .try_flatten();
        Ok(Body::Stream(stream.boxed()))
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        if !self.chunked(digest) {
            return self.inner.put(digest, body).await;
        }
        let chunks = self.store_chunks(digest, body).await?;
        let layout = Layout::new(self.chunker.params(), chunks);
        let bytes = layout.encode();
        let list = digest.function.digest_of(&bytes);
        let key = pointer_key(digest.function, &digest.hash);
        // Concurrent uploads of one blob cut the same chunks, layout and
        // pointer: each is written once, the uploads taking turns. (Not for
        // the whole upload: a waiting upload would leave its client's data
        // unread, and uploads sharing a connection would stall the first.)
        let _turn = self.blob_turns.take(*digest).await;
        if !self.inner.find_missing(&[list]).await?.is_empty() {
            self.inner.put(&list, Body::Bytes(bytes)).await?;
        }
        // The pointer last: the blob is visible only once all it names is.
        // Compared, not only looked for: a tombstone (`bury`) is a pointer
        // too.
        let pointer = encode_pointer(digest.size, &list);
        let stored = match get_bytes(&*self.pointers, &key).await {
            Ok(p) => Some(p),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if stored.as_deref() != Some(&pointer[..]) {
            self.pointers.put(&key, Body::Bytes(pointer)).await?;
        }
        self.layouts
            .insert(*digest, Arc::new(Known { layout, list }));
        self.counts.logical_bytes.inc_by(digest.size);
        Ok(())
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        if let Some(d) = self.inner.resolve(key).await? {
            return Ok(Some(d));
        }
        let pointer = match get_bytes(&*self.pointers, &pointer_key(key.function, &key.hash)).await
        {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // A tombstone (empty) decodes to nothing.
        Ok(
            decode_pointer(key.function, &pointer).map(|(size, _)| Digest {
                function: key.function,
                hash: key.hash,
                size,
            }),
        )
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn staging(&self, digest: &Digest) -> super::Staging {
        // The chunks stored so far are the upload's resumable state: only
        // the bytes after them wait, in memory, and no spool is written
        // (whatever the store below: a spool on the fs store would only be
        // read back, and on S3 it cost a copy of every byte on local disk).
        if self.chunked(digest) {
            super::Staging::Chunks
        } else {
            self.inner.staging(digest)
        }
    }

    async fn put_file(&self, digest: &Digest, file: VerifiedFile) -> Result<()> {
        if !self.chunked(digest) {
            return self.inner.put_file(digest, file).await;
        }
        self.put(digest, file.into_body().await?).await
    }

    async fn stored_chunks(&self, digest: &Digest) -> Result<Option<StoredChunks>> {
        if !self.chunked(digest) {
            return Ok(None);
        }
        Ok(self.layout(digest).await?.map(|l| StoredChunks {
            params: l.layout.params,
            chunks: l.layout.chunks.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::FastCdc;
    use crate::store::memory::MemoryStore;

    fn store() -> (Arc<MemoryStore>, Chunked) {
        let (inner, _, store) = store_and_pointers();
        (inner, store)
    }

    /// The layer over a memory store, with the store its pointers live in.
    fn store_and_pointers() -> (Arc<MemoryStore>, Arc<MemoryStore>, Chunked) {
        let inner = Arc::new(MemoryStore::new(64 << 20));
        let pointers = Arc::new(MemoryStore::new(1 << 20));
        let chunker = Chunker::FastCdc(FastCdc::new(4 << 10, 0).unwrap());
        let counts = ChunkedMetrics::default();
        let spec = ChunkedLayer {
            chunker,
            min_size: 16 << 10,
            in_flight: 64 << 20,
            pointers: pointers.clone(),
        };
        let store = Chunked::new(inner.clone(), spec, counts);
        (inner, pointers, store)
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        crate::store::contract::blob(seed, len).to_vec()
    }

    #[tokio::test]
    async fn the_store_contract_holds() {
        let (_, store) = store();
        crate::store::contract::run(&store).await;
    }

    #[tokio::test]
    async fn an_edited_blob_shares_the_chunks_the_edit_did_not_touch() {
        let (inner, store) = store();
        let v1 = noise(400_000, 1);
        let d1 = DigestFunction::Sha256.digest_of(&v1);
        store
            .put(&d1, Body::Bytes(v1.clone().into()))
            .await
            .unwrap();
        let mut v2 = v1.clone();
        v2[200_000] ^= 1;
        let d2 = DigestFunction::Sha256.digest_of(&v2);
        let before = inner.stored_bytes();
        store
            .put(&d2, Body::Bytes(v2.clone().into()))
            .await
            .unwrap();
        let added = inner.stored_bytes() - before;
        assert!(added < 40_000, "the second version added {added} bytes");
        for (d, v) in [(d1, &v1), (d2, &v2)] {
            let got = store
                .get(&d, Range::FULL)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            assert!(got[..] == v[..]);
            let r = Range {
                offset: 123_456,
                limit: Some(100_000),
            };
            let got = store.get(&d, r).await.unwrap().collect().await.unwrap();
            assert!(got[..] == v[123_456..223_456]);
        }
        let chunks = store.stored_chunks(&d1).await.unwrap().unwrap();
        assert!(chunks.chunks.len() > 20);
        assert_eq!(store.resolve(&HashKey::of(&d2)).await.unwrap(), Some(d2));
    }

    #[tokio::test]
    async fn a_blob_whose_pointer_is_gone_is_missing() {
        let (_, pointers, store) = store_and_pointers();
        let v = noise(100_000, 5);
        let d = DigestFunction::Sha256.digest_of(&v);
        store.put(&d, Body::Bytes(v.into())).await.unwrap();
        assert!(store.find_missing(&[d]).await.unwrap().is_empty());
        pointers.remove(&pointer_key(d.function, &d.hash)).await;
        assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
    }

    #[tokio::test]
    async fn a_blob_whose_chunk_is_gone_is_missing_and_not_found() {
        let (inner, store) = store();
        let v = noise(100_000, 3);
        let d = DigestFunction::Sha256.digest_of(&v);
        store.put(&d, Body::Bytes(v.into())).await.unwrap();
        assert!(store.find_missing(&[d]).await.unwrap().is_empty());
        let chunks = store.stored_chunks(&d).await.unwrap().unwrap().chunks;
        inner.remove(&chunks[3]).await;
        assert_eq!(store.find_missing(&[d, d]).await.unwrap(), vec![d, d]);
        let e = store.get(&d, Range::FULL).await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    }

    /// A blob whose chunk is gone loses its chunk list (its pointer is a
    /// tombstone), so nothing names the chunks; uploaded again it is
    /// whole again.
    #[tokio::test]
    async fn the_list_of_a_blob_whose_chunk_is_gone_is_removed() {
        let (inner, pointers, store) = store_and_pointers();
        let v = noise(100_000, 7);
        let d = DigestFunction::Sha256.digest_of(&v);
        store.put(&d, Body::Bytes(v.clone().into())).await.unwrap();
        let key = pointer_key(d.function, &d.hash);
        let chunks = store.stored_chunks(&d).await.unwrap().unwrap().chunks;
        inner.remove(&chunks[1]).await;
        assert_eq!(store.find_missing(&[d]).await.unwrap(), vec![d]);
        let pointer = crate::store::get_bytes(&*pointers, &key).await.unwrap();
        assert!(pointer.is_empty(), "the pointer is a tombstone");
        assert!(store.stored_chunks(&d).await.unwrap().is_none());
        assert_eq!(store.resolve(&HashKey::of(&d)).await.unwrap(), None);
        store.put(&d, Body::Bytes(v.clone().into())).await.unwrap();
        assert!(store.find_missing(&[d]).await.unwrap().is_empty());
        let got = crate::store::get_bytes(&store, &d).await.unwrap();
        assert!(got[..] == v[..]);
    }
}
