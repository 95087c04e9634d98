//! ContentAddressableStorage: FindMissingBlobs, the two batch calls and
//! GetTree, each a thin shell over the instance's CAS store and tree cache.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::chunking;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result, ok_rpc_status};
use crate::insights::scorecard::Seen;
use crate::instance::{Instance, Instances};
use crate::proto::reapi::{
    self, BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse, GetTreeRequest,
    GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    batch_read_blobs_response, batch_update_blobs_response, compressor,
    content_addressable_storage_server::ContentAddressableStorage,
};
use crate::service::caller;
use crate::store::get_bytes;
use crate::tree;

/// Parallel store calls per batch read.
const BATCH_CONCURRENCY: usize = 16;
/// Parallel puts per batch update: the bytes are in memory already, and a
/// store that commits in rounds (the fs store) makes a whole batch durable
/// at once only when its puts are all waiting together.
const BATCH_UPDATE_CONCURRENCY: usize = 256;
/// Encoded bytes per GetTree page: well under the 4 MiB most clients accept.
const TREE_PAGE_BYTES: usize = 2 << 20;

/// The ContentAddressableStorage service.
#[derive(Debug, Clone)]
pub struct CasService {
    instances: Instances,
}

impl CasService {
    /// Serves the CAS of `instances`.
    pub fn new(instances: Instances) -> Self {
        CasService { instances }
    }
}

/// Converts a list of protocol digests, failing on the first malformed one.
pub fn parse_digests(function: DigestFunction, digests: &[reapi::Digest]) -> Result<Vec<Digest>> {
    digests
        .iter()
        .map(|d| Digest::parse(function, &d.hash, d.size_bytes).map_err(Error::from))
        .collect()
}

/// The request's own Digest messages of the `missing` digests, moved into
/// the answer rather than encoded again (hex-encoding half of a
/// thousand-digest query was a twelfth of the call's CPU). Stores answer in
/// the order asked, so `missing` is walked beside `digests`; an answer in
/// another order is encoded as before.
fn missing_protos(
    protos: Vec<reapi::Digest>,
    digests: &[Digest],
    missing: &[Digest],
) -> Vec<reapi::Digest> {
    let mut out = Vec::with_capacity(missing.len());
    let mut next = missing.iter().peekable();
    for (proto, digest) in protos.into_iter().zip(digests) {
        if next.peek() == Some(&digest) {
            out.push(proto);
            next.next();
        }
    }
    if next.peek().is_some() {
        return missing.iter().map(Digest::to_proto).collect();
    }
    out
}

/// Stores one blob of a batch, after checking its declared size.
async fn update_one(
    instance: &Instance,
    function: DigestFunction,
    req: reapi::batch_update_blobs_request::Request,
) -> batch_update_blobs_response::Response {
    let reapi::batch_update_blobs_request::Request {
        digest: proto_digest,
        data,
        compressor,
    } = req;
    let result = async {
        let digest = Digest::from_proto(function, proto_digest.as_ref(), "blob")?;
        let data = decode_batch_data(&digest, compressor, data)?;
        if data.len() as u64 != digest.size {
            return Err(Error::InvalidArgument(format!(
                "blob {digest}: expected {} bytes, got {}",
                digest.size,
                data.len()
            )));
        }
        instance.cas.put(&digest, data.into()).await
    }
    .await;
    batch_update_blobs_response::Response {
        digest: proto_digest,
        status: Some(match result {
            Ok(()) => ok_rpc_status(),
            Err(e) => e.to_rpc_status(),
        }),
    }
}

/// Undoes the batch's per-blob compression, never inflating past the size
/// the digest declares.
fn decode_batch_data(digest: &Digest, compressor: i32, data: Bytes) -> Result<Bytes> {
    match compressor::Value::try_from(compressor) {
        Ok(compressor::Value::Identity) => Ok(data),
        Ok(compressor::Value::Zstd) => crate::compression::decompress_bounded(&data, digest.size)
            .map_err(|e| Error::InvalidArgument(format!("blob {digest}: {e}"))),
        _ => Err(Error::InvalidArgument(format!(
            "blob {digest}: unsupported compressor {compressor}"
        ))),
    }
}

/// Refuses a batch whose entries add up to more than `limit` bytes; the sum
/// is checked, so sizes chosen to wrap around 2^64 cannot slip under it.
pub(crate) fn check_batch_total(sizes: impl Iterator<Item = u64>, limit: u64) -> Result<()> {
    let mut total: u64 = 0;
    for size in sizes {
        total = total.checked_add(size).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "batch sizes add up to more than 2^64 bytes: expected at most {limit}"
            ))
        })?;
    }
    if total > limit {
        return Err(Error::InvalidArgument(format!(
            "batch of {total} bytes exceeds max_batch_total_size_bytes: expected at most {limit}; use ByteStream"
        )));
    }
    Ok(())
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let max = instance.settings.max_find_missing;
        if req.blob_digests.len() > max {
            return Err(Error::InvalidArgument(format!(
                "FindMissingBlobs asks about {} digests: expected at most {max}; split the query",
                req.blob_digests.len()
            ))
            .into());
        }
        let digests = parse_digests(function, &req.blob_digests)?;
        let missing = instance.cas.find_missing(&digests).await?;
        let asked: u64 = digests.iter().map(|d| d.size).sum();
        let absent: u64 = missing.iter().map(|d| d.size).sum();
        instance.note(
            &writer,
            Seen::Present {
                blobs: (digests.len() - missing.len()) as u64,
                bytes: asked.saturating_sub(absent),
            },
        );
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing_protos(req.blob_digests, &digests, &missing),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Write)?;
        instance.check_writable()?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        // What each entry will occupy once decoded: its declared size (a
        // zstd entry inflates to it), or its data when that is longer.
        let sizes = req.requests.iter().map(|r| {
            let declared = r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64);
            declared.max(r.data.len() as u64)
        });
        check_batch_total(sizes, instance.settings.max_batch_total_size)?;
        let sent: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        instance.note(&writer, Seen::Up(sent));
        let instance = &instance;
        let responses = futures::stream::iter(req.requests)
            .map(|r| update_one(instance, function, r))
            .buffered(BATCH_UPDATE_CONCURRENCY)
            .collect()
            .await;
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = parse_digests(function, &req.digests)?;
        check_batch_total(
            digests.iter().map(|d| d.size),
            instance.settings.max_batch_total_size,
        )?;
        let cas = instance.cas.as_ref();
        // Each answer carries the request's own Digest message back.
        let responses = futures::stream::iter(req.digests.into_iter().zip(digests))
            .map(|(proto, d)| async move {
                let (data, status) = match get_bytes(cas, &d).await {
                    Ok(data) => (data, ok_rpc_status()),
                    Err(e) => (Bytes::new(), e.to_rpc_status()),
                };
                batch_read_blobs_response::Response {
                    digest: Some(proto),
                    data,
                    status: Some(status),
                    compressor: compressor::Value::Identity as i32,
                }
            })
            .buffered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let read: u64 = responses.iter().map(|r| r.data.len() as u64).sum();
        instance.note(&writer, Seen::Down(read));
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let root = Digest::from_proto(function, req.root_digest.as_ref(), "root")?;
        let nodes = instance
            .tree_cache
            .get(instance.cas.as_ref(), root, instance.settings.walk)
            .await?;
        let pages = tree::pages(&nodes, &req.page_token, req.page_size, TREE_PAGE_BYTES)?;
        let stream = futures::stream::iter(pages).map(move |page| {
            Ok(GetTreeResponse {
                directories: nodes[page.start..page.end].to_vec(),
                next_page_token: page.next_page_token,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        // Split stores the chunks it cuts: a write, though of nothing new.
        instance.authorize(&who, Role::Read)?;
        instance.check_writable()?;
        let chunking = chunking_of(&instance, "SplitBlob")?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let blob = Digest::from_proto(function, req.blob_digest.as_ref(), "blob")?;
        let asked = chunking::Function::from_proto(req.chunking_function)?;
        let (used, chunks) = chunking.split(&instance.cas, &blob, asked).await?;
        instance.note(
            &writer,
            Seen::Split {
                bytes: blob.size,
                chunks: chunks.len() as u64,
            },
        );
        Ok(Response::new(SplitBlobResponse {
            chunk_digests: chunks.iter().map(Digest::to_proto).collect(),
            chunking_function: used.to_proto() as i32,
        }))
    }

    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let instance = self.instances.get(&req.instance_name)?;
        instance.authorize(&who, Role::Write)?;
        instance.check_writable()?;
        let chunking = chunking_of(&instance, "SpliceBlob")?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let blob = Digest::from_proto(function, req.blob_digest.as_ref(), "blob")?;
        // The function only says how the client cut; the bytes are verified
        // whatever it says, but an unknown value is still an error.
        chunking::Function::from_proto(req.chunking_function)?;
        let chunks = parse_digests(function, &req.chunk_digests)?;
        chunking.splice(&instance.cas, &blob, &chunks).await?;
        instance.note(
            &writer,
            Seen::Spliced {
                bytes: blob.size,
                chunks: chunks.len() as u64,
            },
        );
        Ok(Response::new(SpliceBlobResponse {
            blob_digest: req.blob_digest,
        }))
    }
}

/// The instance's chunking, or UNIMPLEMENTED where it is switched off (as
/// Capabilities says).
fn chunking_of<'i>(
    instance: &'i Instance,
    rpc: &str,
) -> Result<&'i chunking::blobs::Chunking, Status> {
    instance.chunking.as_ref().ok_or_else(|| {
        Status::unimplemented(format!(
            "{rpc} is switched off on instance {:?} (chunking.enabled: false)",
            instance.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_digests_are_answered_with_the_requests_own_messages() {
        let digests: Vec<Digest> = (0u8..6)
            .map(|i| DigestFunction::Sha256.digest_of(&[i]))
            .collect();
        let protos: Vec<reapi::Digest> = digests.iter().map(Digest::to_proto).collect();
        // In the order asked (every store answers so), duplicates included.
        let mut asked = protos.clone();
        asked.push(protos[1].clone());
        let mut parsed = digests.clone();
        parsed.push(digests[1]);
        let missing = [digests[1], digests[4], digests[1]];
        assert_eq!(
            missing_protos(asked, &parsed, &missing),
            vec![protos[1].clone(), protos[4].clone(), protos[1].clone()]
        );
        // In another order: encoded again, nothing lost.
        let reordered = [digests[4], digests[1]];
        assert_eq!(
            missing_protos(protos.clone(), &digests, &reordered),
            vec![protos[4].clone(), protos[1].clone()]
        );
        assert!(missing_protos(protos, &digests, &[]).is_empty());
    }
}
