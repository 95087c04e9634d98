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
    /// A deadline passed before the work was done (a download's timeout).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Content failed a consistency check (a download whose checksum is not
    /// the one asked for).
    #[error("{0}")]
    Aborted(String),
    /// The client went away or the call was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// A bug or an unexpected failure: what kiln was doing, and the
    /// underlying error (kept as the source, so logs show the whole chain).
    #[error("internal error: {context}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Internal {
        /// What was being done.
        context: String,
        /// The cause, if another error.
        #[source]
        source: Option<Source>,
    },
}

/// The cause of an internal error; shared so that [`Error`] stays `Clone`
/// (merged requests hand one error to every waiter).
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync>;

impl Error {
    /// An unexpected failure with no underlying error.
    pub fn internal(context: impl Into<String>) -> Self {
        Error::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// An unexpected failure caused by `source`.
    pub fn internal_from(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Internal {
            context: context.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

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
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Aborted(_) => Code::Aborted,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Internal { .. } => Code::Internal,
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
            _ => Error::internal_from(context.to_string(), err),
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

impl From<crate::digest::InvalidDigest> for Error {
    fn from(err: crate::digest::InvalidDigest) -> Self {
        Error::InvalidArgument(err.0)
    }
}

impl From<crate::digest::InvalidDigest> for Status {
    fn from(err: crate::digest::InvalidDigest) -> Self {
        Error::from(err).into()
    }
}

impl From<prost::DecodeError> for Error {
    fn from(err: prost::DecodeError) -> Self {
        Error::InvalidArgument(format!("undecodable message: {err}"))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Self {
        Error::internal_from("background task failed", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn each_error_maps_to_its_status() {
        let d = DigestFunction::Sha256.digest_of(b"x");
        let cases: Vec<(Error, Code)> = vec![
            (Error::NotFound("n".into()), Code::NotFound),
            (Error::InvalidArgument("i".into()), Code::InvalidArgument),
            (Error::OutOfRange("o".into()), Code::OutOfRange),
            (Error::MissingBlobs(vec![d]), Code::FailedPrecondition),
            (
                Error::FailedPrecondition("f".into()),
                Code::FailedPrecondition,
            ),
            (Error::Unauthenticated("u".into()), Code::Unauthenticated),
            (Error::PermissionDenied("p".into()), Code::PermissionDenied),
            (Error::exhausted("r"), Code::ResourceExhausted),
            (Error::Unavailable("u".into()), Code::Unavailable),
            (Error::AlreadyExists("a".into()), Code::AlreadyExists),
            (Error::Cancelled("c".into()), Code::Cancelled),
            (Error::internal("x"), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.to_rpc_status().code, code as i32);
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn missing_blobs_carry_precondition_violations() {
        let sha = DigestFunction::Sha256.digest_of(b"x");
        let blake = DigestFunction::Blake3.digest_of(b"y");
        let status = Status::from(Error::MissingBlobs(vec![sha, blake]));
        let details = status.get_error_details();
        let failure = details
            .precondition_failure()
            .expect("a PreconditionFailure");
        let subjects: Vec<&str> = failure
            .violations
            .iter()
            .map(|v| v.subject.as_str())
            .collect();
        assert_eq!(
            subjects,
            [format!("blobs/{sha}"), format!("blobs/blake3/{blake}")]
        );
        assert!(failure.violations.iter().all(|v| v.r#type == "MISSING"));
    }

    #[test]
    fn back_pressure_carries_retry_info() {
        let err = Error::ResourceExhausted {
            message: "slow down".into(),
            retry_after: Some(Duration::from_millis(250)),
        };
        let status = Status::from(err);
        let retry = status
            .get_error_details()
            .retry_info()
            .cloned()
            .expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
    }

    #[test]
    fn io_errors_are_classified_and_keep_their_cause() {
        use std::error::Error as _;
        let gone = Error::io(
            "reading x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(gone.code(), Code::NotFound);
        let full = Error::io(
            "writing x",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(full.code(), Code::ResourceExhausted);
        let odd = Error::io("syncing x", std::io::Error::other("disk on fire"));
        assert_eq!(odd.code(), Code::Internal);
        assert!(odd.to_string().contains("syncing x: disk on fire"), "{odd}");
        assert_eq!(odd.source().unwrap().to_string(), "disk on fire");
    }
}
