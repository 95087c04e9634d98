//! Who makes an HTTP request, found once, before any handler runs: the
//! middleware [`identify`] authenticates the request's credentials (an
//! `Authorization` header, Bearer or Basic with the token as password, or
//! the pages' sign-in cookie on a GET or HEAD) and leaves an [`HttpCaller`]
//! in its extensions. Handlers take the caller as an extractor and ask it
//! whether it may do something on an instance; none reads a token itself.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::{Identity, Policy, Role};
use crate::edge::http_auth::{HttpGuard, basic_as_bearer};
use crate::error::Error;

/// The cookie that carries a signed-in browser's token.
pub(crate) const COOKIE: &str = "kiln_token";

/// The caller of one HTTP request.
#[derive(Debug, Clone)]
pub struct HttpCaller {
    policy: Arc<Policy>,
    /// None when authentication is off; else who the credentials name, or
    /// why they name nobody.
    who: Option<Result<Identity, Error>>,
}

impl HttpCaller {
    /// The caller `headers` make, for a request of `method`: the cookie
    /// counts only for GET and HEAD (a page may be driven into any other
    /// request by another site; those must carry a header).
    pub fn of(guard: &HttpGuard, method: &Method, headers: &HeaderMap) -> HttpCaller {
        let who = guard.authenticator.as_ref().map(|authenticator| {
            let safe = matches!(*method, Method::GET | Method::HEAD);
            let header = credentials(headers, safe)
                .map(|h| basic_as_bearer(&h))
                .transpose()?;
            authenticator.authenticate(header.as_deref())
        });
        HttpCaller {
            policy: guard.policy.clone(),
            who,
        }
    }

    /// Allows `role` on `instance`, or says why not (UNAUTHENTICATED
    /// without valid credentials, PERMISSION_DENIED without the role).
    pub fn require(&self, instance: &str, role: Role) -> Result<(), Error> {
        match &self.who {
            None => Ok(()),
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(identity)) => self.policy.authorize(Some(identity), instance, role),
        }
    }

    /// Whether [`HttpCaller::require`] allows it.
    pub fn may(&self, instance: &str, role: Role) -> bool {
        self.require(instance, role).is_ok()
    }

    /// The authenticated subject, if any (for per-identity limits).
    pub fn subject(&self) -> Option<&str> {
        match &self.who {
            Some(Ok(Identity::Subject { name, .. })) => Some(name),
            _ => None,
        }
    }
}

/// The request's credentials as an `Authorization` value: its header, else
/// (when `cookie_ok`) the sign-in cookie as a Bearer token.
fn credentials(headers: &HeaderMap, cookie_ok: bool) -> Option<String> {
    if let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_string());
    }
    if !cookie_ok {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| {
            let token: String = url::form_urlencoded::parse(format!("t={value}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default();
            format!("Bearer {token}")
        })
}

/// Middleware: finds the request's caller and leaves it for the handlers.
pub async fn identify(
    State(guard): State<HttpGuard>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = HttpCaller::of(&guard, request.method(), request.headers());
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for HttpCaller {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<HttpCaller>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no caller was identified\n",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_read_when_there_is_no_header_and_only_when_safe() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; kiln_token=t%3Bx%20y; c=d".parse().unwrap(),
        );
        assert_eq!(credentials(&h, true).as_deref(), Some("Bearer t;x y"));
        assert_eq!(credentials(&h, false), None, "not for a PUT or POST");
        h.insert(header::AUTHORIZATION, "Bearer other".parse().unwrap());
        assert_eq!(credentials(&h, true).as_deref(), Some("Bearer other"));
        assert_eq!(credentials(&h, false).as_deref(), Some("Bearer other"));
    }
}
