//! `S3Store`: blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph,
//! SeaweedFS). Only the bucket holds state, so any number of kiln pods can
//! share it.
//!
//! Key layout: `{prefix}{function}/{hash[0..2]}/{hash}-{size}`, e.g.
//! `cas/sha256/4f/4f1c...-1024`: the digest function is part of the key, the
//! two-hex-digit shard spreads keys over S3's partitions, and the CAS and the
//! action cache live under different prefixes.
//!
//! Writes: one PutObject below the multipart threshold, else a multipart
//! upload whose parts go up at bounded concurrency (never the whole blob in
//! memory) and which is aborted on any failure. In a CAS, writes are
//! create-if-absent (`If-None-Match: *`, a 412 means someone else stored the
//! same content); the builder merges concurrent uploads of one blob within a
//! pod with a `MergedPuts` layer above this store.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{BlobStore, Body, ChunkStream, Range};
use crate::config::S3Config;
use crate::digest::{Digest, HashKey};
use crate::error::{Error, Result};
use chunks::Chunks;

mod chunks;
mod signing;

/// Objects up to this size are read whole; larger ones are streamed.
const WHOLE_READ_MAX: u64 = 256 << 10;

/// A store on one bucket and key prefix.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
    part_size: usize,
    concurrency: usize,
    /// `If-None-Match: *` on writes: only for content-addressed data.
    create_if_absent: bool,
    /// Keys are the SHA-256 of what is stored under them (a CAS), so a put
    /// can give SigV4 the payload hash instead of computing it.
    content_addressed: bool,
    /// Room for the bytes of parts in flight, in KiB, shared by every
    /// upload of this store.
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    /// SigV4 payload signing of uploads (see `S3Config::sign_payload`);
    /// without it parts are sent from the chunks as they arrived, uncopied.
    sign_payload: bool,
    refresh_after: Option<Duration>,
    /// Counts renewals (`kiln_store_calls_total{op="refresh"}`).
    renewals: Option<prometheus_client::metrics::counter::Counter>,
}

/// Aborts a multipart upload whose put was dropped before it finished.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload: Upload,
}

/// The multipart upload a put started, as far as its guard knows.
enum Upload {
    /// CreateMultipartUpload is in flight (a task of its own, so a put
    /// dropped meanwhile still learns the id of the upload S3 made).
    Creating(tokio::task::JoinHandle<Result<String>>),
    /// Created: aborted if the put is dropped.
    Open(String),
    /// Completed or already aborted: nothing to do.
    Closed,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let upload = std::mem::replace(&mut self.upload, Upload::Closed);
        if matches!(upload, Upload::Closed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        runtime.spawn(async move {
            let upload_id = match upload {
                Upload::Open(id) => id,
                Upload::Creating(created) => match created.await {
                    Ok(Ok(id)) => id,
                    _ => return,
                },
                Upload::Closed => return,
            };
            abort_upload(client, bucket, key, upload_id).await;
        });
    }
}

/// Aborts tried per abandoned multipart upload.
const ABORT_ATTEMPTS: u32 = 5;

/// Aborts a multipart upload until S3 no longer knows it. A part whose
/// upload was in flight when an abort arrived may still land and keep its
/// storage (S3's documentation says an upload may need aborting more than
/// once; SeaweedFS lists such an upload again), so after each abort the
/// upload is looked up, and aborted again while it is still there.
async fn abort_upload(client: Client, bucket: String, key: String, upload_id: String) {
    for attempt in 0..ABORT_ATTEMPTS {
        let aborted = client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .send()
            .await;
        match aborted.map_err(|e| s3_error("AbortMultipartUpload", e)) {
            Err(Error::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(key, error = %e, "could not abort an abandoned multipart upload")
            }
            Ok(_) => {}
        }
        // Time for parts still in flight to land before looking again.
        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
        let listed = client
            .list_parts()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(Error::NotFound(_)) = listed.map_err(|e| s3_error("ListParts", e)) {
            tracing::debug!(key, "aborted an abandoned multipart upload");
            return;
        }
    }
    tracing::warn!(
        key,
        upload_id,
        "a multipart upload is still listed after {ABORT_ATTEMPTS} aborts; a bucket lifecycle rule for incomplete uploads will remove it"
    );
}

impl S3Store {
    /// Counts each renewal (the self-copy of an old object) in `counter`.
    pub(crate) fn count_renewals(&mut self, counter: prometheus_client::metrics::counter::Counter) {
        self.renewals = Some(counter);
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store(s3://{}/{})", self.bucket, self.prefix)
    }
}

/// An S3 failure, classified for [`Error`].
fn s3_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    err: SdkError<E, HttpResponse>,
) -> Error {
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or("").to_string();
    let detail = err
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| match &err {
            SdkError::TimeoutError(_) => "timed out".to_string(),
            SdkError::DispatchFailure(e) => format!("cannot reach the endpoint: {e:?}"),
            other => format!("{code} {other}"),
        });
    let message = match status {
        Some(s) => format!("{what}: S3 answered {s} {code}: {detail}"),
        None => format!("{what}: {detail}"),
    };
    match (status, code.as_str()) {
        (Some(404), _) | (_, "NoSuchKey" | "NotFound" | "NoSuchUpload") => Error::NotFound(message),
        (Some(416), _) | (_, "InvalidRange") => Error::OutOfRange(message),
        (Some(403), _) | (_, "AccessDenied") => Error::PermissionDenied(message),
        (Some(s), _) if (400..500).contains(&s) && s != 408 && s != 429 => Error::internal(message),
        _ => Error::Unavailable(message),
    }
}

fn is_precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == 412)
        || err.code() == Some("PreconditionFailed")
}

impl S3Store {
    /// Connects to the bucket `config` names and checks it is reachable, so
    /// bad credentials or a missing bucket fail at start-up, not mid-build.
    pub async fn connect(config: &S3Config, create_if_absent: bool) -> Result<Self> {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(config.timeout.0)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)))
            .load()
            .await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            // S3-compatible servers reject or mis-handle the newer default
            // checksum headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let client = Client::from_conf(builder.build());
        client
            .head_bucket()
            .bucket(&config.bucket)
            .send()
            .await
            .map_err(|e| {
                let inner = s3_error("HeadBucket", e);
                Error::Unavailable(format!(
                    "S3 bucket {:?} is not usable: {inner}",
                    config.bucket
                ))
            })?;
        Ok(S3Store {
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            multipart_threshold: config.multipart_threshold.0.max(5 << 20),
            part_size: config.part_size.0.max(5 << 20) as usize,
            concurrency: config.concurrency.max(1),
            create_if_absent: create_if_absent && config.conditional_writes,
            content_addressed: create_if_absent,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(
                (config.max_in_flight.0.max(config.part_size.0) >> 10) as usize,
            )),
            sign_payload: config.sign_payload.unwrap_or_else(|| {
                config
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"))
            }),
            refresh_after: config.refresh_after.map(|d| d.0),
            renewals: None,
        })
    }

    fn key(&self, d: &Digest) -> String {
        let hash = d.hash_hex();
        format!(
            "{}{}/{}/{hash}-{}",
            self.prefix,
            d.function.name(),
            &hash[..2],
            d.size
        )
    }

    async fn exists(&self, key: String) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(head) => {
                // A client told "present" relies on the object staying: an
                // old one is renewed so a lifecycle rule does not expire it.
                self.refresh_if_old(&key, head.last_modified());
                Ok(true)
            }
            Err(e) => match s3_error("HeadObject", e) {
                Error::NotFound(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    /// The SHA-256 SigV4 would compute over a put of `digest`'s bytes, when
    /// the key says it (a CAS key of a SHA-256 digest).
    fn known_hash(&self, digest: &Digest) -> Option<String> {
        (self.content_addressed && digest.function == crate::digest::DigestFunction::Sha256)
            .then(|| digest.hash_hex())
    }

    /// One PUT; false when a conditional PUT found the object there.
    async fn put_whole(&self, key: &str, data: Chunks, known: Option<String>) -> Result<bool> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(data.len as i64)
            .body(data.body(self.sign_payload));
        if self.create_if_absent {
            req = req.if_none_match("*");
        }
        let sent = match (self.sign_payload, known) {
            (true, Some(hash)) => {
                let given = signing::KnownPayloadHash(hash);
                req.customize().interceptor(given).send().await
            }
            (true, None) => req.send().await,
            (false, _) => req.customize().disable_payload_signing().send().await,
        };
        match sent {
            Ok(_) => Ok(true),
            Err(e) if self.create_if_absent && is_precondition_failed(&e) => Ok(false),
            Err(e) => Err(s3_error("PutObject", e)),
        }
    }

    /// Uploads a stream: whole if it turns out small, else in parts.
    async fn put_stream(
        &self,
        key: &str,
        mut stream: ChunkStream,
        known: Option<String>,
    ) -> Result<()> {
        let mut first = Chunks::default();
        while first.len < self.multipart_threshold {
            match stream.next().await {
                Some(chunk) => first.push(chunk?),
                None => return self.put_whole(key, first, known).await.map(|_| ()),
            }
        }
        let create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key);
        let creating = tokio::spawn(async move {
            let created = create
                .send()
                .await
                .map_err(|e| s3_error("CreateMultipartUpload", e))?;
            Ok(created.upload_id().unwrap_or_default().to_string())
        });
        // If this put is dropped (the client went away mid-upload), even
        // while the upload is being created, the guard aborts the upload in
        // the background: parts of abandoned uploads would otherwise sit in
        // the bucket, billed, until a lifecycle rule (if any) removes them.
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload: Upload::Creating(creating),
        };
        let Upload::Creating(creating) = &mut guard.upload else {
            unreachable!("the guard was just made creating");
        };
        let created = creating.await;
        guard.upload = Upload::Closed;
        let upload_id = created??;
        guard.upload = Upload::Open(upload_id.clone());
        let done = self.finish_multipart(key, &upload_id, first, stream).await;
        guard.upload = Upload::Closed;
        done
    }

    async fn finish_multipart(
        &self,
        key: &str,
        upload_id: &str,
        first: Chunks,
        stream: ChunkStream,
    ) -> Result<()> {
        let upload_id = upload_id.to_string();
        let result = self.upload_parts(key, &upload_id, first, stream).await;
        let parts = match result {
            Ok(parts) => parts,
            Err(e) => {
                self.abort(key, &upload_id);
                return Err(e);
            }
        };
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if self.create_if_absent {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if self.create_if_absent && is_precondition_failed(&e) => {
                self.abort(key, &upload_id);
                Ok(())
            }
            Err(e) => {
                self.abort(key, &upload_id);
                Err(s3_error("CompleteMultipartUpload", e))
            }
        }
    }

    /// Cuts the stream into parts and uploads up to `concurrency` at once
    /// (as tasks, so they progress while the next part is read); the parts
    /// in flight of all uploads together stay within `max_in_flight`, plus
    /// the part each upload is assembling. Dropping the set on an error
    /// cancels the parts still in flight.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        mut buf: Chunks,
        mut stream: ChunkStream,
    ) -> Result<Vec<CompletedPart>> {
        let limit = self.concurrency.min(8);
        let mut tasks = tokio::task::JoinSet::new();
        let mut completed = Vec::new();
        let mut number = 0;
        let mut ended = false;
        loop {
            while !ended && (buf.len as usize) < self.part_size {
                match stream.next().await {
                    Some(chunk) => buf.push(chunk?),
                    None => ended = true,
                }
            }
            if buf.len == 0 {
                break;
            }
            let part = buf.split_to(self.part_size);
            // A part waits for room among all uploads' parts in flight.
            let kib = u32::try_from(part.len.div_ceil(1024)).unwrap_or(u32::MAX);
            let room = self
                .in_flight
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| Error::Unavailable("the S3 store is closing".into()))?;
            number += 1;
            let req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len as i64)
                .body(part.body(self.sign_payload));
            let sign = self.sign_payload;
            tasks.spawn(async move {
                let _room = room;
                let sent = match sign {
                    true => req.send().await,
                    false => req.customize().disable_payload_signing().send().await,
                };
                let out = sent.map_err(|e| s3_error("UploadPart", e))?;
                Ok::<_, Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            });
            while tasks.len() >= limit {
                completed.push(tasks.join_next().await.expect("a task is running")??);
            }
        }
        while let Some(done) = tasks.join_next().await {
            completed.push(done??);
        }
        completed.sort_by_key(|p| p.part_number());
        Ok(completed)
    }

    /// Aborts a failed multipart upload in the background (see
    /// [`abort_upload`]); the put's answer does not wait for it.
    fn abort(&self, key: &str, upload_id: &str) {
        tokio::spawn(abort_upload(
            self.client.clone(),
            self.bucket.clone(),
            key.to_string(),
            upload_id.to_string(),
        ));
    }

    /// Copies an object onto itself so a lifecycle rule counts it as new.
    fn refresh_if_old(&self, key: &str, modified: Option<&aws_sdk_s3::primitives::DateTime>) {
        let (Some(after), Some(modified)) = (self.refresh_after, modified) else {
            return;
        };
        let Ok(modified) = SystemTime::try_from(*modified) else {
            return;
        };
        if modified.elapsed().unwrap_or_default() < after {
            return;
        }
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), key.to_string());
        if let Some(renewals) = &self.renewals {
            renewals.inc();
        }
        tokio::spawn(async move {
            let res = client
                .copy_object()
                .bucket(&bucket)
                .key(&key)
                .copy_source(format!("{bucket}/{key}"))
                .metadata_directive(MetadataDirective::Replace)
                .send()
                .await;
            if let Err(e) = res {
                tracing::warn!(%key, error = %s3_error("CopyObject", e), "refresh-on-access failed");
            }
        });
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let keys: Vec<String> = digests.iter().map(|d| self.key(d)).collect();
        let found: Vec<bool> = futures::stream::iter(keys)
            .map(|key| self.exists(key))
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(digests
            .iter()
            .zip(found)
            .filter(|(_, f)| !f)
            .map(|(d, _)| *d)
            .collect())
    }

    async fn resolve(&self, key: &HashKey) -> Result<Option<Digest>> {
        // Keys end in `-{size}`: one listing of the hash's prefix finds it.
        let probe = self.key(&key.with_size(0));
        let prefix = probe.trim_end_matches('0');
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", e))?;
        let found = listed.contents().iter().find_map(|object| {
            let size = object.key()?.strip_prefix(prefix)?.parse::<u64>().ok()?;
            Some(key.with_size(size))
        });
        Ok(found)
    }

    async fn get(&self, digest: &Digest, range: Range) -> Result<Body> {
        let key = self.key(digest);
        let mut req = self.client.get_object().bucket(&self.bucket).key(&key);
        if range != Range::FULL {
            if range.limit == Some(0) || (range.offset > 0 && range.offset == digest.size) {
                // S3 cannot express an empty range; answer it after an existence check.
                return if self.exists(key).await? {
                    Ok(Body::Bytes(Bytes::new()))
                } else {
                    Err(Error::NotFound(format!("blob {digest} not found")))
                };
            }
            let end = range
                .limit
                .map(|l| (range.offset + l - 1).to_string())
                .unwrap_or_default();
            req = req.range(format!("bytes={}-{end}", range.offset));
        }
        let out = req
            .send()
            .await
            .map_err(|e| match s3_error("GetObject", e) {
                Error::NotFound(_) => Error::NotFound(format!("blob {digest} not found")),
                other => other,
            })?;
        self.refresh_if_old(&key, out.last_modified());
        let len = out.content_length().unwrap_or(0).max(0) as u64;
        let context = format!("reading {key}");
        if len <= WHOLE_READ_MAX {
            let data = out
                .body
                .collect()
                .await
                .map_err(|e| Error::Unavailable(format!("{context}: {e}")))?;
            return Ok(Body::Bytes(data.into_bytes()));
        }
        let stream = futures::stream::try_unfold(out.body, |mut body| async move {
            Ok(body.try_next().await?.map(|chunk| (chunk, body)))
        })
        .map_err(move |e: aws_sdk_s3::primitives::ByteStreamError| {
            Error::Unavailable(format!("{context}: {e}"))
        });
        Ok(Body::Stream(stream.boxed()))
    }

    async fn put_if_absent(&self, digest: &Digest, body: Body) -> Result<bool> {
        // Without conditional writes, or for a blob large enough for parts,
        // look first.
        let Body::Bytes(bytes) = body else {
            return super::put_if_absent_by_looking(self, digest, body).await;
        };
        if !self.create_if_absent || bytes.len() as u64 >= self.multipart_threshold {
            return super::put_if_absent_by_looking(self, digest, Body::Bytes(bytes)).await;
        }
        let key = self.key(digest);
        if self
            .put_whole(&key, Chunks::from(bytes), self.known_hash(digest))
            .await?
        {
            return Ok(true);
        }
        // Present: looked at as an existence check would, so an old object
        // is renewed before a lifecycle rule expires what names it.
        self.exists(key).await?;
        Ok(false)
    }

    async fn put(&self, digest: &Digest, body: Body) -> Result<()> {
        let key = self.key(digest);
        match body {
            Body::Bytes(b) => {
                let known = self.known_hash(digest);
                self.put_whole(&key, Chunks::from(b), known)
                    .await
                    .map(|_| ())
            }
            Body::Stream(s) => self.put_stream(&key, s, self.known_hash(digest)).await,
        }
    }
}
