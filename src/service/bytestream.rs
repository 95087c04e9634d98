//! ByteStream: streamed, ranged reads and verified, resumable writes of CAS
//! blobs, plain or zstd-compressed. Large blobs flow chunk by chunk and are
//! never whole in memory.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Role;
use crate::compression;
use crate::error::{Error, Result};
use crate::insights::scorecard::Seen;
use crate::instance::Instances;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server::ByteStream,
};
use crate::resource::{Compressor, parse_read, parse_write};
use crate::service::caller;
use crate::store::{Body, ChunkStream, Range};
use crate::upload::{self, Uploads};

/// The ByteStream service.
#[derive(Debug, Clone)]
pub struct ByteStreamService {
    instances: Instances,
    uploads: Arc<Uploads>,
}

impl ByteStreamService {
    /// Serves the CAS blobs of `instances`, keeping interrupted uploads in
    /// `uploads`.
    pub fn new(instances: Instances, uploads: Arc<Uploads>) -> Self {
        ByteStreamService { instances, uploads }
    }
}

/// Splits a body into pieces of at most `chunk` bytes (zero-copy slices).
pub fn rechunk(body: Body, chunk: usize) -> ChunkStream {
    let split = move |b: Bytes| {
        let pieces: Vec<Result<Bytes>> = (0..b.len())
            .step_by(chunk)
            .map(|i| Ok(b.slice(i..(i + chunk).min(b.len()))))
            .collect();
        futures::stream::iter(pieces)
    };
    match body {
        Body::Bytes(b) => split(b).boxed(),
        Body::Stream(s) => s
            .flat_map(move |item| match item {
                Ok(b) if b.len() > chunk => split(b).boxed(),
                other => futures::stream::iter([other]).boxed(),
            })
            .boxed(),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let req = request.into_inner();
        let name = parse_read(&req.resource_name)?;
        let instance = self.instances.get(&name.instance)?;
        instance.authorize(&who, Role::Read)?;
        if req.read_offset < 0 || req.read_limit < 0 {
            return Err(Error::InvalidArgument(format!(
                "read_offset ({}) and read_limit ({}) must not be negative",
                req.read_offset, req.read_limit
            ))
            .into());
        }
        if name.compressor == Compressor::Zstd && req.read_limit != 0 {
            return Err(Error::InvalidArgument(
                "read_limit must be 0 for compressed-blobs reads".into(),
            )
            .into());
        }
        let offset = req.read_offset as u64;
        if offset > name.digest.size {
            return Err(Error::OutOfRange(format!(
                "read_offset {offset} is past the end of blob {}",
                name.digest
            ))
            .into());
        }
        let range = Range {
            offset,
            limit: (req.read_limit > 0).then_some(req.read_limit as u64),
        };
        let body = instance.cas.get(&name.digest, range).await?;
        let left = name.digest.size - offset;
        let bytes = range.limit.map_or(left, |l| l.min(left));
        instance.note(&writer, Seen::Down(bytes));
        let chunks = match name.compressor {
            Compressor::Identity => rechunk(body, instance.settings.read_chunk_size),
            Compressor::Zstd => compression::compress(body.into_stream()),
        };
        let stream = chunks.map(|r| r.map(|data| ReadResponse { data }).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let who = caller(&request);
        let writer = crate::insights::Writer::of(&request);
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Error::InvalidArgument("empty Write stream".into()))?;
        let name = parse_write(&first.resource_name)?;
        let instance = self.instances.get(&name.instance)?;
        instance.authorize(&who, Role::Write)?;
        // Spool space is reserved per identity (all anonymous callers are one).
        let owner = who.identity.as_ref().map_or("anonymous", |i| i.name());
        let committed_size =
            upload::write(&instance, &self.uploads, owner, name, first, stream.boxed()).await?;
        instance.note(&writer, Seen::Up(committed_size.max(0) as u64));
        Ok(Response::new(WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let name = parse_write(&request.get_ref().resource_name)?;
        let instance = self.instances.get(&name.instance)?;
        instance.authorize(&caller(&request), Role::Write)?;
        if instance.cas.find_missing(&[name.digest]).await?.is_empty() {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: name.digest.size as i64,
                complete: true,
            }));
        }
        match self.uploads.committed(&name) {
            Some(kept) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: kept as i64,
                complete: false,
            })),
            None => Err(Error::NotFound(format!(
                "no upload in progress for {}",
                request.get_ref().resource_name
            ))
            .into()),
        }
    }
}
