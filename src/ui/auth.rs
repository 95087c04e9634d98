//! Signing in to the pages: a token sent as `Authorization: Bearer` (or
//! Basic, as the HTTP cache accepts), or entered once in a form that keeps
//! it in an HttpOnly, SameSite=Strict cookie, so a browser sends it with
//! every page and no script can read it. Pods keep no sessions: the cookie
//! holds the token itself and every request is checked as gRPC's are.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::{PageError, UiState, layout};
use crate::auth::Role;
use crate::error::Error;

use crate::http::caller::{COOKIE, HttpCaller};

/// How long a browser stays signed in (seconds).
const COOKIE_AGE: u32 = 12 * 3600;

/// Allows a request that may `read` `instance`; without credentials, the
/// login form (returning to `uri`).
pub(super) fn check(caller: &HttpCaller, uri: &Uri, instance: &str) -> Result<(), PageError> {
    match caller.require(instance, Role::Read) {
        Ok(()) => Ok(()),
        Err(Error::Unauthenticated(_)) => Err(PageError::Login(
            uri.path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        )),
        Err(e) => Err(e.into()),
    }
}

/// [`check`] for build-event pages: the build-events instance, when
/// `auth.http_auth` guards them.
pub(super) fn check_events(
    state: &UiState,
    caller: &HttpCaller,
    uri: &Uri,
) -> Result<(), PageError> {
    if !state.events_guarded {
        return Ok(());
    }
    check(caller, uri, &state.guard.instance)
}

/// Whether this request may read `instance` (for filtering lists).
pub(super) fn may_read(caller: &HttpCaller, instance: &str) -> bool {
    caller.may(instance, Role::Read)
}

/// Only a path on this server: never another origin (`//host`, `\\host`)
/// or a scheme, so the form cannot be used to redirect elsewhere. Judged
/// as a browser parses a Location: it drops tabs and newlines anywhere and
/// reads `\\` as `/`, so `/\t/evil.example` would be `//evil.example`;
/// any control character, space or backslash makes it no local path.
fn local_path(next: &str) -> &str {
    let clean = !next.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'\\');
    let ok = clean && next.starts_with('/') && !next.starts_with("//");
    if ok { next } else { "/" }
}

/// The sign-in form, with `status` (401 when a page asked for it).
pub(super) fn login_page(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        div.card.login {
            h1 { "Sign in to kiln" }
            p.muted { "This server needs an API token (the one Bazel uses in --remote_header=authorization=Bearer …)." }
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(local_path(next));
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, layout::page("Sign in", None, body)).into_response()
}

#[derive(Deserialize)]
pub(super) struct NextQuery {
    next: Option<String>,
}

/// `GET /login`.
pub(super) async fn form(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    login_page(q.next.as_deref().unwrap_or("/"), None, StatusCode::OK)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// A state-changing POST not from this origin (a forged sign-in or
/// sign-out): browsers say where a request comes from in `Sec-Fetch-Site`
/// (only `same-origin`, or `none` for one the user typed, pass) and in
/// `Origin` (which must be this host; `null`, sent by sandboxed frames and
/// data URLs, does not pass). Clients that send neither (curl, scripts) are
/// not browsers a page could drive.
fn cross_site(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if value("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return true;
    }
    match value("origin") {
        Some(origin) => {
            let host = value("host").unwrap_or("");
            origin
                .split_once("://")
                .is_none_or(|(_, rest)| rest.trim_end_matches('/') != host)
        }
        None => false,
    }
}

/// The cookie's `Secure` attribute when the listener speaks TLS (a
/// browser then never sends the token over plain HTTP).
fn secure(tls: Option<axum::Extension<crate::http::serve::OverTls>>) -> &'static str {
    if tls.is_some_and(|t| t.0.0) {
        "; Secure"
    } else {
        ""
    }
}

/// `POST /login`: checks the token, then sets the cookie and returns to
/// `next`.
pub(super) async fn login(
    State(state): State<UiState>,
    tls: Option<axum::Extension<crate::http::serve::OverTls>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = local_path(f.next.as_deref().unwrap_or("/")).to_string();
    if cross_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused\n").into_response();
    }
    let token = f.token.trim();
    if let Some(authenticator) = &state.guard.authenticator
        && let Err(e) = authenticator.authenticate(Some(&format!("Bearer {token}")))
    {
        return login_page(&next, Some(&e.to_string()), StatusCode::UNAUTHORIZED);
    }
    let value: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_AGE}{}",
        secure(tls)
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
    )
        .into_response()
}

/// `POST /logout`: forgets the cookie (not for another site's form: a
/// cross-site POST would sign the user out).
pub(super) async fn logout(
    tls: Option<axum::Extension<crate::http::serve::OverTls>>,
    headers: HeaderMap,
) -> Response {
    if cross_site(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-out refused\n").into_response();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
                    secure(tls)
                ),
            ),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path("/invocation/x?y=1"), "/invocation/x?y=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "x",
            "/a\r\nSet-Cookie: x",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/ /evil.example/",
            "/a\\b",
            "\t//evil.example",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert("host", "kiln:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("origin", "http://kiln:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("origin", "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert("origin", "null".parse().unwrap());
        assert!(cross_site(&h), "a sandboxed frame");
        h.remove("origin");
        h.insert("sec-fetch-site", "same-site".parse().unwrap());
        assert!(cross_site(&h), "a sibling subdomain");
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(!cross_site(&h));
    }
}
