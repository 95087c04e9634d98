//! Kiln's one error type, and the one place gRPC status codes are chosen.
//!
//! Stores and domain code return [`Error`]; services hand it to tonic through
//! `From<Error> for Status`, which attaches the rich details clients act on
//! (PreconditionFailure for missing blobs, RetryInfo for back-pressure).

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use crate::digest::Digest;

/// Result with kiln's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong, in the protocol's own terms.
#[derive(Debug, thiserror::Error, Clone)]
pub enum Error {
    /// The named thing does not exist (a blob, an action result, an upload).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed, or content does not match its digest.
    #[error("{0}")]
    InvalidArgument(String),
    /// A read or write position lies beyond the data.
    #[error("{0}")]
    OutOfRange(String),
    /// Blobs the request depends on are not in the CAS; clients re-upload them.
    #[error("missing blobs: {}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    MissingBlobs(Vec<Digest>),
    /// The caller presented no usable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (a read-only instance, a missing role).
    #[error("{0}")]
    PermissionDenied(String),
    /// Out of space, over a quota or a limit; `retry_after` suggests a back-off.
    #[error("{message}")]
    ResourceExhausted {
        /// What ran out.
        message: String,
        /// When the client may try again, if that is known.
        retry_after: Option<Duration>,
    },
    /// A dependency (disk, object storage) is down; the client should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request does not fit the current state (used sparingly).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The client went away or the call was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// A bug or an unexpected failure, with context for the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Out of space or quota, with no retry hint.
    pub fn exhausted(message: impl Into<String>) -> Self {
        Error::ResourceExhausted {
            message: message.into(),
            retry_after: None,
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::MissingBlobs(_) | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::ResourceExhausted { .. } => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Cancelled(_) => Code::Cancelled,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The `google.rpc.Status` form, for per-item statuses in batch responses.
    pub fn to_rpc_status(&self) -> tonic_types::pb::Status {
        tonic_types::pb::Status {
            code: self.code() as i32,
            message: self.to_string(),
            details: Vec::new(),
        }
    }

    /// Adds context to an I/O error and classifies it: a full disk is
    /// RESOURCE_EXHAUSTED, a missing file NOT_FOUND, anything else INTERNAL.
    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::NotFound => Error::NotFound(format!("{context}: {err}")),
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                Error::exhausted(format!("{context}: {err}"))
            }
            _ => Error::Internal(format!("{context}: {err}")),
        }
    }
}

/// The `google.rpc.Status` of success, for batch responses.
pub fn ok_rpc_status() -> tonic_types::pb::Status {
    tonic_types::pb::Status {
        code: Code::Ok as i32,
        message: String::new(),
        details: Vec::new(),
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::MissingBlobs(digests) => {
                let violations: Vec<PreconditionViolation> = digests
                    .iter()
                    .map(|d| {
                        PreconditionViolation::new(
                            "MISSING",
                            missing_subject(d),
                            "the blob is not in the CAS",
                        )
                    })
                    .collect();
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message,
                    ErrorDetails::with_precondition_failure(violations),
                )
            }
            Error::ResourceExhausted {
                retry_after: Some(delay),
                ..
            } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            other => Status::new(other.code(), message),
        }
    }
}

/// `blobs/{hash}/{size}`, with the digest function only where REAPI asks for it.
fn missing_subject(digest: &Digest) -> String {
    match digest.function {
        crate::digest::DigestFunction::Sha256 => format!("blobs/{digest}"),
        other => format!("blobs/{}/{digest}", other.name()),
    }
}

impl From<prost::DecodeError> for Error {
    fn from(err: prost::DecodeError) -> Self {
        Error::InvalidArgument(format!("undecodable message: {err}"))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Error::Internal(format!("background task failed: {err}"))
    }
}
