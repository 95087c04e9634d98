//! Bazel's HTTP cache protocol on the HTTP listener: `GET`, `HEAD` and `PUT`
//! of `/cas/{sha256}` and `/ac/{sha256}` (and `/{instance}/cas/...` for a
//! named instance), for `--remote_cache=http://...`, proxies and CDNs, and
//! build tools that speak no gRPC. The same instances, stores, roles and
//! verification as gRPC: a CAS PUT must hash to its path before it is
//! stored, an AC value must be a valid ActionResult, and an AC GET is
//! completeness-checked like GetActionResult. Bodies stream both ways.
//!
//! Paths carry a hash but no size; [`crate::store::BlobStore::resolve`]
//! finds the stored key, so results and blobs stored over gRPC are served
//! here too. An action result written here is kept under its action's full
//! digest when one is stored already, else under the hash with size 0
//! (Bazel's HTTP client never sends the action's size): gRPC clients, who
//! ask by full digest, do not see those.

use axum::Router;
use axum::body::Body as HttpBody;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;

use crate::auth::Role;
use crate::digest::{Digest, DigestFunction, HashKey};
use crate::edge::http_auth::refusal;
use crate::error::Error;
use crate::instance::{Instance, Instances};
use crate::proto::reapi::ActionResult;
use crate::store::{Body, Range};

/// Uploads at most this size are read whole (one buffer, the stores' fast
/// path); larger ones stream.
const WHOLE_UPLOAD_MAX: u64 = 1 << 20;

/// What the cache routes need.
#[derive(Debug, Clone)]
pub struct CacheState {
    /// Every instance, by name.
    pub instances: Instances,
    /// Largest CAS upload accepted (`http_cache.max_upload`).
    pub max_upload: u64,
}

/// The routes: `/cas/H`, `/ac/H` for the default instance and
/// `/{instance}/cas/H`, `/{instance}/ac/H` (instance names may hold `/`).
pub fn router(state: CacheState) -> Router {
    Router::new()
        .route("/cas/{hash}", any(default_cas))
        .route("/ac/{hash}", any(default_ac))
        .route("/{*path}", any(prefixed))
        .with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cas,
    Ac,
}

async fn default_cas(
    State(state): State<CacheState>,
    Path(hash): Path<String>,
    request: Request,
) -> Response {
    serve(&state, "", Kind::Cas, &hash, request).await
}

async fn default_ac(
    State(state): State<CacheState>,
    Path(hash): Path<String>,
    request: Request,
) -> Response {
    serve(&state, "", Kind::Ac, &hash, request).await
}

async fn prefixed(
    State(state): State<CacheState>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    let mut parts = path.rsplitn(3, '/');
    let (Some(hash), Some(kind), Some(instance)) = (parts.next(), parts.next(), parts.next())
    else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let kind = match kind {
        "cas" => Kind::Cas,
        "ac" => Kind::Ac,
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    serve(&state, instance, kind, hash, request).await
}

/// The HTTP status a domain error stands for here.
fn failure(e: Error) -> Response {
    if matches!(e, Error::Unauthenticated(_) | Error::PermissionDenied(_)) {
        return refusal(&e);
    }
    let status = crate::http::status::status_of(&e);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(error = %e, "HTTP cache request failed");
    }
    (status, format!("{e}\n")).into_response()
}

async fn serve(
    state: &CacheState,
    instance: &str,
    kind: Kind,
    hash: &str,
    request: Request,
) -> Response {
    match handle(state, instance, kind, hash, request).await {
        Ok(response) => response,
        Err(e) => failure(e),
    }
}

async fn handle(
    state: &CacheState,
    instance: &str,
    kind: Kind,
    hash: &str,
    request: Request,
) -> Result<Response, Error> {
    let method = request.method().clone();
    let role = match (&method, kind) {
        (&Method::GET | &Method::HEAD, _) => Role::Read,
        (&Method::PUT, Kind::Cas) => Role::Write,
        (&Method::PUT, Kind::Ac) => Role::AcWrite,
        _ => {
            return Ok((
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, HEAD, PUT")],
                "the HTTP cache answers GET, HEAD and PUT\n",
            )
                .into_response());
        }
    };
    // Authorize before saying whether the instance exists.
    let caller = request
        .extensions()
        .get::<crate::http::caller::HttpCaller>()
        .cloned()
        .ok_or_else(|| Error::internal("no caller was identified"))?;
    caller.require(instance, role)?;
    let instance = state
        .instances
        .get(instance)
        .map_err(|_| Error::NotFound(format!("no instance {instance:?}")))?;
    // Bazel's HTTP cache protocol is SHA-256 only.
    let key = HashKey::parse(DigestFunction::Sha256, hash)?;
    match (method, kind) {
        (Method::PUT, Kind::Cas) => put_cas(state, &instance, key, request).await,
        (Method::PUT, _) => put_ac(&instance, key, request).await,
        (method, Kind::Cas) => get_cas(&instance, key, method == Method::HEAD).await,
        (method, Kind::Ac) => get_ac(&instance, key, method == Method::HEAD).await,
    }
}

fn found(len: u64, body: HttpBody) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

async fn get_cas(instance: &Instance, key: HashKey, head: bool) -> Result<Response, Error> {
    let digest = instance
        .cas
        .resolve(&key)
        .await?
        .ok_or_else(|| Error::NotFound(format!("blob {} not found", hex(&key))))?;
    if head {
        return Ok(found(digest.size, HttpBody::empty()));
    }
    let body = match instance.cas.get(&digest, Range::FULL).await? {
        Body::Bytes(bytes) => HttpBody::from(bytes),
        Body::Stream(stream) => HttpBody::from_stream(stream),
    };
    Ok(found(digest.size, body))
}

async fn get_ac(instance: &Instance, key: HashKey, head: bool) -> Result<Response, Error> {
    let missing = || Error::NotFound(format!("no action result for {}", hex(&key)));
    let action = instance
        .action_cache
        .resolve(&key)
        .await?
        .ok_or_else(missing)?;
    let result = crate::action_result::lookup(instance, &action)
        .await?
        .ok_or_else(missing)?;
    let encoded = result.encode_to_vec();
    let len = encoded.len() as u64;
    let body = if head {
        HttpBody::empty()
    } else {
        HttpBody::from(encoded)
    };
    Ok(found(len, body))
}

/// The declared length of a PUT (a `Content-Length`, or none and no
/// chunked encoding: empty): required, since the CAS key includes it and
/// nothing is buffered to learn it.
fn content_length(request: &Request) -> Option<u64> {
    http_body::Body::size_hint(request.body()).exact()
}

fn length_required() -> Response {
    (
        StatusCode::LENGTH_REQUIRED,
        "a PUT needs a Content-Length\n",
    )
        .into_response()
}

fn too_large(len: u64, max: u64) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("upload of {len} bytes: at most {max} bytes are accepted here\n"),
    )
        .into_response()
}

/// The request body as a store body: whole when small, else a stream that
/// fails (aborting the put) if the client sends more than it declared.
async fn body_of(request: Request, len: u64) -> Result<Body, Error> {
    let cut = |e: axum::Error| Error::Cancelled(format!("the upload broke off: {e}"));
    let stream = request.into_body().into_data_stream().map_err(cut);
    if len <= WHOLE_UPLOAD_MAX {
        return Body::Stream(stream.boxed())
            .collect_expecting(len, len)
            .await
            .map(Body::Bytes)
            .map_err(|e| match e {
                Error::ResourceExhausted { .. } => Error::InvalidArgument(format!(
                    "the body is longer than its Content-Length of {len}"
                )),
                other => other,
            });
    }
    Ok(Body::Stream(stream.boxed()))
}

async fn put_cas(
    state: &CacheState,
    instance: &Instance,
    key: HashKey,
    request: Request,
) -> Result<Response, Error> {
    let Some(len) = content_length(&request) else {
        return Ok(length_required());
    };
    if len > state.max_upload {
        return Ok(too_large(len, state.max_upload));
    }
    instance.check_writable()?;
    let digest: Digest = key.with_size(len);
    if instance.cas.find_missing(&[digest]).await?.is_empty() {
        // Stored already: read what the client sends (so the connection
        // stays usable) and keep nothing of it.
        let mut stream = request.into_body().into_data_stream();
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
        return Ok(StatusCode::OK.into_response());
    }
    // ContentAddressed at the root of every CAS checks length and hash
    // before anything becomes visible.
    instance
        .cas
        .put(&digest, body_of(request, len).await?)
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn put_ac(instance: &Instance, key: HashKey, request: Request) -> Result<Response, Error> {
    let Some(len) = content_length(&request) else {
        return Ok(length_required());
    };
    let max = instance.settings.max_parsed_blob;
    if len > max {
        return Ok(too_large(len, max));
    }
    instance.check_writable()?;
    let bytes: Bytes = body_of(request, len).await?.collect_max(max).await?;
    let result = ActionResult::decode(bytes).map_err(|e| {
        Error::InvalidArgument(format!("the body is not a serialized ActionResult: {e}"))
    })?;
    crate::action_result::validate(DigestFunction::Sha256, &result)?;
    let action = match instance.action_cache.resolve(&key).await? {
        Some(stored) => stored,
        None => key.with_size(0),
    };
    // Stored re-encoded, as gRPC's UpdateActionResult stores it: fields the
    // client added beyond ActionResult's are not kept (the action-cache
    // store also holds kiln's own records, which must not be forgeable).
    crate::action_result::store(instance, &action, &result, Default::default()).await?;
    Ok(StatusCode::OK.into_response())
}

fn hex(key: &HashKey) -> String {
    key.with_size(0).hash_hex()
}
