//! CAS blobs for the pages: `/blob/{instance}/{hash}/{size}/{filename}`
//! streams one with a content type and a download name (artifacts, logs,
//! profiles), and the helpers that read a blob, or its tail, for showing
//! inline. Every read is bounded by the caller's budget.

use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use bytes::Bytes;

use super::{PageResult, UiState, auth, layout};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, Result};
use crate::http::caller::HttpCaller;
use crate::store::{Body, Range};

/// A blob named by a page link: instance, digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlobRef {
    pub instance: String,
    pub digest: Digest,
}

impl BlobRef {
    /// `bytestream://HOST/[INSTANCE/]blobs/HASH/SIZE`, as Bazel writes
    /// build-event file URIs. Other URIs (local files) are no blob.
    pub fn from_uri(uri: &str) -> Option<BlobRef> {
        let rest = uri.strip_prefix("bytestream://")?;
        let (_host, path) = rest.split_once('/')?;
        let (instance, blob) = match path.rfind("blobs/") {
            Some(0) => ("", &path[6..]),
            Some(at) if path.as_bytes()[at - 1] == b'/' => (&path[..at - 1], &path[at + 6..]),
            _ => return None,
        };
        let mut parts = blob.split('/');
        let hash = parts.next()?;
        let size: i64 = parts.next()?.parse().ok()?;
        let digest = Digest::parse(DigestFunction::Sha256, hash, size).ok()?;
        Some(BlobRef {
            instance: instance.to_string(),
            digest,
        })
    }

    /// `INSTANCE/HASH/SIZE` (or `HASH/SIZE` for the default instance): the
    /// tail of the blob, action and tree page paths.
    pub fn path(&self) -> String {
        let tail = format!("{}/{}", self.digest.hash_hex(), self.digest.size);
        if self.instance.is_empty() {
            tail
        } else {
            format!("{}/{tail}", self.instance)
        }
    }

    /// The download link, saving as `name`.
    pub fn link(&self, name: &str) -> String {
        let base = name.rsplit('/').next().unwrap_or(name);
        let base = if base.is_empty() { "blob" } else { base };
        format!("/blob/{}/{}", self.path(), layout::segment(base))
    }

    /// Parses `[INSTANCE/]HASH/SIZE` (instance names may hold `/`).
    pub fn parse(path: &str) -> Result<BlobRef> {
        let mut parts = path.rsplitn(3, '/');
        let (Some(size), Some(hash)) = (parts.next(), parts.next()) else {
            return Err(Error::NotFound(format!("no blob at {path:?}")));
        };
        let instance = parts.next().unwrap_or("");
        let size: i64 = size
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("size {size:?} is not a number")))?;
        Ok(BlobRef {
            instance: instance.to_string(),
            digest: Digest::parse(DigestFunction::Sha256, hash, size)?,
        })
    }
}

/// Reads `blob` whole; RESOURCE_EXHAUSTED beyond `max`.
pub(super) async fn read(state: &UiState, blob: &BlobRef, max: u64) -> Result<Bytes> {
    if blob.digest.size > max {
        return Err(Error::exhausted(format!(
            "blob {} is {} bytes; at most {max} are read here",
            blob.digest, blob.digest.size
        )));
    }
    let instance = state.instances.get(&blob.instance)?;
    instance
        .cas
        .get(&blob.digest, Range::FULL)
        .await?
        .collect_expecting(blob.digest.size, max)
        .await
}

/// Text for showing inline: the whole blob up to `max` bytes, else its
/// last `max` bytes; with how many bytes were left out at the start.
pub(super) async fn tail(state: &UiState, blob: &BlobRef, max: u64) -> Result<(String, u64)> {
    let instance = state.instances.get(&blob.instance)?;
    let skip = blob.digest.size.saturating_sub(max);
    let bytes = instance
        .cas
        .get(
            &blob.digest,
            Range {
                offset: skip,
                limit: Some(max),
            },
        )
        .await?
        .collect_max(max)
        .await?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), skip))
}

/// A content type for a file name, so browsers show text and images and
/// download the rest.
fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some(
            "log" | "txt" | "out" | "err" | "md" | "sh" | "py" | "rs" | "c" | "cc" | "h" | "bzl"
            | "bazel" | "build" | "sum",
        ) => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "text/xml; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("gz") => "application/gzip",
        Some("zip") => "application/zip",
        Some("tar") => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// `GET /blob/[INSTANCE/]HASH/SIZE/FILENAME`: the blob, streamed. HTML and
/// SVG are never served as such (they could run script on this origin):
/// they, like every unknown type, download as octet streams.
pub(super) async fn download(
    State(state): State<UiState>,
    Path(path): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    let Some((rest, name)) = path.rsplit_once('/') else {
        return Err(Error::NotFound("a blob link is /blob/HASH/SIZE/NAME".into()).into());
    };
    let blob = BlobRef::parse(rest)?;
    auth::check(&caller, &uri, &blob.instance)?;
    let instance = state.instances.get(&blob.instance)?;
    let body = match instance.cas.get(&blob.digest, Range::FULL).await? {
        Body::Bytes(b) => HttpBody::from(b),
        Body::Stream(s) => HttpBody::from_stream(s),
    };
    let kind = content_type(name);
    let disposition = if kind.starts_with("text/") || kind.starts_with("image/") {
        "inline"
    } else {
        "attachment"
    };
    // The name as a quoted-string with anything unusual replaced, plus
    // RFC 5987's encoded form for the exact name.
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_LENGTH, blob.digest.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("{disposition}; filename=\"{plain}\"; filename*=UTF-8''{exact}"),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
            (
                header::CACHE_CONTROL,
                "private, max-age=86400, immutable".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn bytestream_uris_name_instance_and_digest() {
        let b = BlobRef::from_uri(&format!("bytestream://127.0.0.1:9/blobs/{H}/0")).unwrap();
        assert_eq!(b.instance, "");
        assert_eq!(b.path(), format!("{H}/0"));
        let b = BlobRef::from_uri(&format!("bytestream://h/main/ci/blobs/{H}/0")).unwrap();
        assert_eq!(b.instance, "main/ci");
        assert_eq!(
            b.link("x/test.log"),
            format!("/blob/main/ci/{H}/0/test.log")
        );
        assert_eq!(BlobRef::parse(&b.path()).unwrap(), b);
        assert!(BlobRef::from_uri("file:///tmp/x").is_none());
        assert!(BlobRef::from_uri("bytestream://h/blobs/zz/1").is_none());
        assert!(BlobRef::from_uri(&format!("bytestream://h/myblobs/{H}/0")).is_none());
    }

    #[test]
    fn markup_never_gets_a_markup_type() {
        assert_eq!(content_type("a.html"), "application/octet-stream");
        assert_eq!(content_type("a.svg"), "application/octet-stream");
        assert_eq!(content_type("test.log"), "text/plain; charset=utf-8");
    }
}
