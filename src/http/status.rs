//! The one mapping from a domain error to an HTTP status, beside gRPC's
//! `From<Error> for Status`: the JSON API, the cache protocol and the pages
//! all answer with it (each in its own body format), so one error never
//! means 413 on one route and 500 on another.

use axum::http::StatusCode;

use crate::error::Error;

/// The HTTP status `e` stands for.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidArgument(_)
        | Error::OutOfRange(_)
        | Error::MissingBlobs(_)
        | Error::Cancelled(_) => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::AlreadyExists(_) | Error::FailedPrecondition(_) | Error::Aborted(_) => {
            StatusCode::CONFLICT
        }
        // A rate or quota the client may retry after; else the store is
        // full or over a limit (WebDAV's "insufficient storage", which
        // Bazel's HTTP cache client reports as such).
        Error::ResourceExhausted {
            retry_after: Some(_),
            ..
        } => StatusCode::TOO_MANY_REQUESTS,
        Error::ResourceExhausted { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_status() {
        let cases = [
            (Error::NotFound("x".into()), 404),
            (Error::InvalidArgument("x".into()), 400),
            (Error::Unauthenticated("x".into()), 401),
            (Error::PermissionDenied("x".into()), 403),
            (Error::exhausted("full"), 507),
            (
                Error::ResourceExhausted {
                    message: "slow down".into(),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                },
                429,
            ),
            (Error::Unavailable("x".into()), 503),
            (Error::internal("x"), 500),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(&e).as_u16(), code, "{e:?}");
        }
    }
}
