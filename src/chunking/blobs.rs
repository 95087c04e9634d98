//! SplitBlob and SpliceBlob on an instance's CAS: the chunking functions
//! applied to stored blobs.
//!
//! Split stores every chunk of a blob as a blob of its own, so a client can
//! fetch only the chunks it lacks; Splice stores a blob as the concatenation
//! of chunks a client uploaded, verified like any other upload (the CAS's
//! root layer hashes every byte against the digest, so no client digest is
//! trusted).

use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::lanes::cut_and_store;
use super::{Chunker, FastCdc, Function, RepMax};
use crate::config::ChunkingConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::store::{Body, Range, Store};

/// Chunks hashed and stored at once per split: enough to keep both cores
/// busy hashing while the splitter cuts the next one.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Memory for the chunk lists of blobs split recently (about 48 bytes per
/// chunk): a second SplitBlob of a blob only checks that its chunks are
/// all still stored.
const KNOWN_BYTES: u64 = 32 << 20;
/// Missing chunks named in a NOT_FOUND.
const NAMED_MISSING: usize = 8;

/// An instance's chunking: the functions it offers, and what it split.
#[derive(Debug)]
pub struct Chunking {
    fast_cdc: Chunker,
    rep_max: Option<Chunker>,
    max_splice_chunks: usize,
    max_split_size: u64,
    splits: Semaphore,
    known: moka::sync::Cache<(Digest, Function), Arc<[Digest]>>,
}

impl Chunking {
    /// The chunking `config` describes, or None when it is switched off.
    pub fn new(config: &ChunkingConfig) -> Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        let fast = &config.fast_cdc_2020;
        let rep = &config.rep_max_cdc;
        Ok(Some(Chunking {
            fast_cdc: Chunker::FastCdc(FastCdc::new(fast.avg_chunk_size.0, fast.seed)?),
            rep_max: if rep.enabled {
                Some(Chunker::RepMax(RepMax::new(
                    rep.min_chunk_size.0,
                    rep.horizon_size.0,
                )?))
            } else {
                None
            },
            max_splice_chunks: config.max_splice_chunks,
            max_split_size: config.max_split_size.0,
            splits: Semaphore::new(config.max_concurrent_splits),
            known: moka::sync::Cache::builder()
                .max_capacity(KNOWN_BYTES)
                .weigher(|_, v: &Arc<[Digest]>| {
                    (64 + v.len() * std::mem::size_of::<Digest>()).min(u32::MAX as usize) as u32
                })
                .build(),
        }))
    }

    /// FAST_CDC_2020's parameters, to advertise.
    pub fn fast_cdc(&self) -> &FastCdc {
        match &self.fast_cdc {
            Chunker::FastCdc(c) => c,
            Chunker::RepMax(_) => unreachable!("fast_cdc holds FastCDC"),
        }
    }

    /// REP_MAX_CDC's parameters, to advertise, when offered.
    pub fn rep_max(&self) -> Option<&RepMax> {
        match &self.rep_max {
            Some(Chunker::RepMax(c)) => Some(c),
            _ => None,
        }
    }

    /// The chunker for a request's function (UNKNOWN: FastCDC, the one
    /// Bazel prefers).
    fn chunker(&self, function: Option<Function>) -> Result<&Chunker> {
        match function {
            None | Some(Function::FastCdc2020) => Ok(&self.fast_cdc),
            Some(Function::RepMaxCdc) => self.rep_max.as_ref().ok_or_else(|| {
                Error::InvalidArgument(
                    "chunking function REP_MAX_CDC is not offered here: expected FAST_CDC_2020"
                        .into(),
                )
            }),
        }
    }

    /// The chunks of the stored blob `blob` under `function`, each stored
    /// in `cas`; NOT_FOUND when the blob is not stored. Asking again for a
    /// blob split before checks (and so keeps alive) the blob and its
    /// chunks instead of reading it again.
    pub async fn split(
        &self,
        cas: &Store,
        blob: &Digest,
        function: Option<Function>,
    ) -> Result<(Function, Vec<Digest>)> {
        let chunker = self.chunker(function)?;
        let key = (*blob, chunker.function());
        if let Some(known) = self.known.get(&key) {
            let mut all = Vec::with_capacity(known.len() + 1);
            all.push(*blob);
            all.extend(known.iter().copied());
            if cas.find_missing(&all).await?.is_empty() {
                return Ok((key.1, known.to_vec()));
            }
            self.known.invalidate(&key);
        }
        if !cas.find_missing(&[*blob]).await?.is_empty() {
            return Err(Error::NotFound(format!("blob {blob} is not in the CAS")));
        }
        if blob.size == 0 {
            return Ok((key.1, Vec::new()));
        }
        if blob.size <= chunker.single_chunk_max() {
            return Ok((key.1, vec![*blob]));
        }
        if let Some(stored) = cas.stored_chunks(blob).await?
            && stored.params == chunker.params()
        {
            // Stored as these very chunks, found present just now.
            self.known.insert(key, stored.chunks.clone().into());
            return Ok((key.1, stored.chunks));
        }
        if blob.size > self.max_split_size {
            return Err(Error::exhausted(format!(
                "blob {blob} is {} bytes: SplitBlob cuts blobs of at most {} bytes here \
                 (chunking.max_split_size); read it whole",
                blob.size, self.max_split_size
            )));
        }
        let _turn = self
            .splits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("kiln is stopping".into()))?;
        let chunks = store_chunks(cas, blob, chunker).await?;
        self.known.insert(key, chunks.clone().into());
        Ok((key.1, chunks))
    }

    /// Stores `blob` as the concatenation of the stored `chunks`, verified
    /// against its digest as it is written. NOT_FOUND names chunks that are
    /// not stored; INVALID_ARGUMENT for chunks whose sizes do not add up to
    /// the blob's, too many chunks, or content that does not match.
    pub async fn splice(&self, cas: &Store, blob: &Digest, chunks: &[Digest]) -> Result<()> {
        if chunks.len() > self.max_splice_chunks {
            return Err(Error::InvalidArgument(format!(
                "SpliceBlob names {} chunks: expected at most {}",
                chunks.len(),
                self.max_splice_chunks
            )));
        }
        let total = chunks
            .iter()
            .try_fold(0u64, |sum, c| sum.checked_add(c.size))
            .ok_or_else(|| {
                Error::InvalidArgument("chunk sizes add up to more than 2^64 bytes".into())
            })?;
        if total != blob.size {
            return Err(Error::InvalidArgument(format!(
                "chunks add up to {total} bytes: expected {}, the size of blob {blob}",
                blob.size
            )));
        }
        if cas.find_missing(&[*blob]).await?.is_empty() {
            return Ok(());
        }
        let missing = cas.find_missing(chunks).await?;
        if !missing.is_empty() {
            let named: Vec<String> = missing
                .iter()
                .take(NAMED_MISSING)
                .map(|d| d.to_string())
                .collect();
            return Err(Error::NotFound(format!(
                "{} of the {} chunks are not in the CAS: {}{}",
                missing.len(),
                chunks.len(),
                named.join(", "),
                if missing.len() > NAMED_MISSING {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        let store = cas.clone();
        let body = futures::stream::iter(chunks.to_vec())
            .then(move |chunk| {
                let store = store.clone();
                async move { Ok::<_, Error>(store.get(&chunk, Range::FULL).await?.into_stream()) }
            })
            .try_flatten()
            .boxed();
        cas.put(blob, Body::Stream(body)).await
    }
}

/// Reads `blob`, cuts it with `chunker`, and stores each chunk not stored
/// yet; the chunks' digests in order.
async fn store_chunks(cas: &Store, blob: &Digest, chunker: &Chunker) -> Result<Vec<Digest>> {
    let body = cas.get(blob, Range::FULL).await?;
    let function = blob.function;
    let (chunks, total) = cut_and_store(
        chunker,
        body.into_stream(),
        CHUNKS_IN_FLIGHT,
        // Splits are few at once (`max_concurrent_splits`).
        None,
        |chunk| async move {
            let (digest, chunk) =
                tokio::task::spawn_blocking(move || (chunk.digest(function), chunk)).await?;
            if !cas.find_missing(&[digest]).await?.is_empty() {
                cas.put(&digest, chunk.into_body()).await?;
            }
            Ok(digest)
        },
        |_| {},
    )
    .await?;
    if total != blob.size {
        return Err(Error::internal(format!(
            "blob {blob} read back as {total} bytes"
        )));
    }
    Ok(chunks)
}
