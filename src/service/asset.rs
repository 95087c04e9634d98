//! The Remote Asset API: Fetch (FetchBlob, FetchDirectory) and Push
//! (PushBlob, PushDirectory). `read` fetches what is cached; causing a
//! download or pushing needs `write`.
//!
//! A failed fetch is the RPC's error (naming the URI), not an OK response
//! with an error in `status`: Bazel before 5 never reads `status`, and
//! would take the missing digest for the empty blob, so a download without
//! a checksum would silently become an empty file. Every client handles an
//! RPC error.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::asset::{Assets, Fetch as FetchRequestOf, Kind, Outcome, Push as PushRequestOf};
use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::instance::Instances;
use crate::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse,
    PushBlobRequest, PushBlobResponse, PushDirectoryRequest, PushDirectoryResponse,
    fetch_server::Fetch, push_server::Push,
};
use crate::service::caller;

/// Both Remote Asset services (one value, two servers).
#[derive(Debug, Clone)]
pub struct AssetService {
    instances: Instances,
    assets: Arc<Assets>,
}

impl AssetService {
    /// Serves `assets` for `instances`.
    pub(crate) fn new(instances: Instances, assets: Arc<Assets>) -> Self {
        AssetService { instances, assets }
    }
}

/// A request's `timeout`, refused when negative.
fn timeout_of(t: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(t) = t else {
        return Ok(None);
    };
    let ms = crate::time::saturating_ms(t.seconds, t.nanos);
    if ms < 0 {
        return Err(Error::InvalidArgument(format!(
            "timeout: expected a duration of at least 0, got {ms} ms"
        )));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
}

/// The content a fetch resolved to, or its error as the RPC's.
fn resolved(outcome: Outcome) -> Result<(String, Digest), Status> {
    match outcome.result {
        Ok(digest) => Ok((outcome.uri, digest)),
        Err(e) => {
            let code = e.code();
            Err(Status::new(code, format!("{}: {e}", outcome.uri)))
        }
    }
}

/// One Fetch call, blob or directory: the fields both requests share.
struct FetchCall<'a> {
    instance_name: &'a str,
    digest_function: i32,
    uris: &'a [String],
    qualifiers: &'a [crate::proto::asset::Qualifier],
    oldest: Option<&'a prost_types::Timestamp>,
    timeout: Option<&'a prost_types::Duration>,
}

impl AssetService {
    async fn fetch<T>(
        &self,
        request: &Request<T>,
        kind: Kind,
        call: FetchCall<'_>,
    ) -> Result<(DigestFunction, Outcome)> {
        let who = caller(request);
        let instance = self.instances.get(call.instance_name)?;
        instance.authorize(&who, Role::Read)?;
        let function = DigestFunction::from_proto(call.digest_function)?;
        if !function.hashes_unsized() {
            return Err(Error::InvalidArgument(format!(
                "digest function {} hashes the size first, which a download does not know: expected sha256 or blake3",
                function.name()
            )));
        }
        let may_download =
            instance.authorize(&who, Role::Write).is_ok() && instance.check_writable().is_ok();
        let req = FetchRequestOf {
            kind,
            function,
            uris: call.uris,
            qualifiers: call.qualifiers,
            oldest_ms: call
                .oldest
                .map(|t| crate::time::saturating_ms(t.seconds, t.nanos)),
            timeout: timeout_of(call.timeout)?,
            may_download,
            caller: caller_key(request, &who),
        };
        Ok((function, self.assets.fetch(&instance, req).await?))
    }

    async fn push<'r, T>(
        &self,
        request: &'r Request<T>,
        instance_name: &str,
        digest_function: i32,
        build: impl FnOnce(DigestFunction) -> Result<PushRequestOf<'r>>,
    ) -> Result<()> {
        let who = caller(request);
        let instance = self.instances.get(instance_name)?;
        // A pushed record decides what every later Fetch of its URIs gets,
        // as an action-cache entry decides what a build gets: the same role.
        instance.authorize(&who, Role::AcWrite)?;
        instance.check_writable()?;
        let function = DigestFunction::from_proto(digest_function)?;
        self.assets.push(&instance, build(function)?).await
    }
}

/// Who a download counts against: the token's subject, else the client's
/// address (as the rate limiter counts calls).
fn caller_key<T>(request: &Request<T>, who: &crate::edge::caller::Caller) -> String {
    match &who.identity {
        Some(crate::auth::Identity::Subject { name, .. }) => format!("sub:{name}"),
        _ => request
            .remote_addr()
            .map(|a| format!("ip:{}", a.ip()))
            .unwrap_or_else(|| "unknown".into()),
    }
}

fn digests(
    function: DigestFunction,
    list: &[crate::proto::reapi::Digest],
    what: &str,
) -> Result<Vec<Digest>> {
    list.iter()
        .map(|d| Digest::from_proto(function, Some(d), what).map_err(Error::from))
        .collect()
}

/// The fields FetchBlobRequest and FetchDirectoryRequest share, by name.
macro_rules! fetch_call {
    ($req:expr) => {
        FetchCall {
            instance_name: &$req.instance_name,
            digest_function: $req.digest_function,
            uris: &$req.uris,
            qualifiers: &$req.qualifiers,
            oldest: $req.oldest_content_accepted.as_ref(),
            timeout: $req.timeout.as_ref(),
        }
    };
}

/// PushBlobRequest and PushDirectoryRequest as one domain Push, `$digest`
/// naming the field that holds the content.
macro_rules! push_of {
    ($req:expr, $kind:expr, $digest:ident, $what:expr) => {
        |f: DigestFunction| -> Result<PushRequestOf<'_>> {
            Ok(PushRequestOf {
                kind: $kind,
                uris: &$req.uris,
                qualifiers: &$req.qualifiers,
                digest: Digest::from_proto(f, $req.$digest.as_ref(), $what)?,
                references_blobs: digests(f, &$req.references_blobs, "referenced blob")?,
                references_directories: digests(
                    f,
                    &$req.references_directories,
                    "referenced directory",
                )?,
                expire_at: $req.expire_at,
            })
        }
    };
}

#[tonic::async_trait]
impl Fetch for AssetService {
    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        let call = fetch_call!(request.get_ref());
        let (function, outcome) = self.fetch(&request, Kind::Blob, call).await?;
        let (uri, digest) = resolved(outcome)?;
        Ok(Response::new(FetchBlobResponse {
            status: Some(tonic_types::pb::Status::default()),
            blob_digest: Some(digest.to_proto()),
            uri,
            qualifiers: Vec::new(),
            expires_at: None,
            digest_function: function.to_proto() as i32,
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        let call = fetch_call!(request.get_ref());
        let (function, outcome) = self.fetch(&request, Kind::Directory, call).await?;
        let (uri, digest) = resolved(outcome)?;
        Ok(Response::new(FetchDirectoryResponse {
            status: Some(tonic_types::pb::Status::default()),
            root_directory_digest: Some(digest.to_proto()),
            uri,
            qualifiers: Vec::new(),
            expires_at: None,
            digest_function: function.to_proto() as i32,
        }))
    }
}

#[tonic::async_trait]
impl Push for AssetService {
    async fn push_blob(
        &self,
        request: Request<PushBlobRequest>,
    ) -> Result<Response<PushBlobResponse>, Status> {
        let req = request.get_ref();
        let build = push_of!(req, Kind::Blob, blob_digest, "blob");
        self.push(&request, &req.instance_name, req.digest_function, build)
            .await?;
        Ok(Response::new(PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<PushDirectoryRequest>,
    ) -> Result<Response<PushDirectoryResponse>, Status> {
        let req = request.get_ref();
        let build = push_of!(
            req,
            Kind::Directory,
            root_directory_digest,
            "root directory"
        );
        self.push(&request, &req.instance_name, req.digest_function, build)
            .await?;
        Ok(Response::new(PushDirectoryResponse {}))
    }
}
