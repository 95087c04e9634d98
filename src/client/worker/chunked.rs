//! Large outputs uploaded by chunks (REAPI 2.12): when the server splices
//! blobs and advertises FastCDC parameters, an output of at least
//! [`MIN_SIZE`] is cut as the server would cut it, only the chunks the
//! server lacks are sent, and SpliceBlob puts the output together from
//! them. An output that changed a little since the last build (a linked
//! binary, an archive) costs the few chunks that changed, not all of it.
//! Any failure falls back to the plain upload: chunking only saves bytes.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::StreamExt;

use super::cas::{Cas, Source, status};
use crate::chunking::splitter::Splitter;
use crate::chunking::{Chunker, FastCdc};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::proto::reapi::capabilities_client::CapabilitiesClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::{
    GetCapabilitiesRequest, SpliceBlobRequest, batch_update_blobs_request, chunking_function,
};

/// Outputs from this size up are uploaded by chunks: below it an output
/// is a handful of chunks, and a changed one shares few of them.
pub(super) const MIN_SIZE: u64 = 4 << 20;

/// Bytes of chunks read and sent in one batch request at most; a larger
/// chunk (up to four times the average, 4 MiB at REAPI 2.12's largest)
/// goes through ByteStream.
const BATCH_BYTES: u64 = 2 << 20;

/// The chunker the server's Capabilities advertise for SpliceBlob, or
/// None when it does not splice.
pub(super) async fn chunker(cas: &Cas) -> Option<Arc<Chunker>> {
    let caps = CapabilitiesClient::new(cas.conn())
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: cas.instance().to_string(),
        })
        .await
        .ok()?
        .into_inner()
        .cache_capabilities?;
    let params = caps
        .fast_cdc_2020_params
        .filter(|_| caps.splice_blob_support)?;
    let fast = FastCdc::new(params.avg_chunk_size_bytes, params.seed).ok()?;
    Some(Arc::new(Chunker::FastCdc(fast)))
}

/// A chunk of the output: its digest and where it lies in the file.
struct Piece {
    digest: Digest,
    offset: u64,
}

/// Uploads `digest` from `source` by chunks; returns how many chunks were
/// sent (the others were present).
pub(super) async fn upload(
    cas: &Cas,
    chunker: &Chunker,
    digest: &Digest,
    source: &Source,
) -> Result<usize> {
    let file = source.open()?;
    let reader = tokio::fs::File::from_std(
        file.try_clone()
            .map_err(|e| Error::io("reopening an output", e))?,
    );
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)
        .map(|r| r.map_err(|e| Error::io("reading an output", e)))
        .boxed();
    let mut splitter = Splitter::new(chunker, stream);
    let mut pieces = Vec::new();
    let mut offset = 0u64;
    while let Some(chunk) = splitter.next().await? {
        let d = cas.function().digest_of(&chunk);
        pieces.push(Piece { digest: d, offset });
        offset += chunk.len() as u64;
    }
    if offset != digest.size {
        return Err(Error::InvalidArgument(format!(
            "output {digest} changed while it was uploaded: {offset} bytes, expected {}",
            digest.size
        )));
    }
    let missing = cas
        .missing(pieces.iter().map(|p| p.digest).collect())
        .await?;
    let mut seen = std::collections::HashSet::new();
    let todo: Vec<&Piece> = pieces
        .iter()
        .filter(|p| missing.contains(&p.digest) && seen.insert(p.digest))
        .collect();
    let file = Arc::new(file);
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for p in &todo {
        if p.digest.size > BATCH_BYTES {
            let data = read_at(&file, p).await?;
            cas.write(&p.digest, &Source::Bytes(data.into())).await?;
            continue;
        }
        if batch_bytes + p.digest.size > BATCH_BYTES && !batch.is_empty() {
            cas.update_batch(std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        batch_bytes += p.digest.size;
        let data = read_at(&file, p).await?;
        batch.push(batch_update_blobs_request::Request {
            digest: Some(p.digest.to_proto()),
            data: data.into(),
            compressor: 0,
        });
    }
    if !batch.is_empty() {
        cas.update_batch(batch).await?;
    }
    ContentAddressableStorageClient::new(cas.conn())
        .splice_blob(SpliceBlobRequest {
            instance_name: cas.instance().to_string(),
            blob_digest: Some(digest.to_proto()),
            chunk_digests: pieces.iter().map(|p| p.digest.to_proto()).collect(),
            digest_function: cas.function().to_proto() as i32,
            chunking_function: chunking_function::Value::FastCdc2020 as i32,
        })
        .await
        .map_err(status("splicing an output"))?;
    Ok(todo.len())
}

/// The bytes of chunk `p` of `file`.
async fn read_at(file: &Arc<std::fs::File>, p: &Piece) -> Result<Vec<u8>> {
    let (f, at, len) = (file.clone(), p.offset, p.digest.size as usize);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at).map(|_| buf)
    })
    .await
    .map_err(|e| Error::internal(format!("reading a chunk: {e}")))?
    .map_err(|e| Error::io("reading a chunk of an output", e))
}
