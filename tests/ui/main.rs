//! The web UI in a real browser: headless Chromium loads every page over
//! a real kiln after a real Bazel build (a failing test, a flaky test, a
//! test with coloured output, a binary, remote execution on a `kiln
//! worker`, an uploaded profile) and the tests assert on the rendered DOM.
//! Hostile labels and logs render as text; with auth on, pages ask for a
//! token. Screenshots of each page land in the test's output dir (and in
//! `KILN_UI_SCREENSHOTS`, for README's tour).

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod bazel_build;
mod browser;
mod hostile;
mod insights;
mod misses;

use std::time::{Duration, Instant};

use common::Kiln;

/// Polls kiln's API until invocation `id` is finished; panics after a
/// minute.
pub async fn wait_finished(kiln: &Kiln, id: &str) -> serde_json::Value {
    let url = format!("http://{}/api/v1/invocations/{id}", kiln.server.http_addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::get(&url).await.unwrap();
        if r.status().is_success() {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            if v["status"] != "IN_PROGRESS" {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "invocation {id} never finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs Bazel with `args` and a JSON event file at `events` (off the
/// async runtime), asserts it succeeded, and returns the invocation id
/// once kiln has its summary finished.
pub async fn bazel_invocation(
    kiln: &Kiln,
    bazel: &common::bazel::Bazel,
    mut args: Vec<String>,
    events: &std::path::Path,
) -> String {
    args.push(format!("--build_event_json_file={}", events.display()));
    let b = bazel.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        b.run(&refs)
    })
    .await
    .unwrap();
    assert!(ok, "bazel failed:\n{out}");
    let id = std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["started"]["uuid"].as_str().map(str::to_string))
        .expect("the JSON file names the invocation");
    wait_finished(kiln, &id).await;
    id
}

/// Chromium's DOM of `path` on kiln's HTTP listener (off the async
/// runtime: the browser takes a moment).
pub async fn dom(kiln: &Kiln, path: &str) -> String {
    let url = format!("http://{}{path}", kiln.server.http_addr);
    tokio::task::spawn_blocking(move || browser::dom(&url))
        .await
        .unwrap()
}

/// A screenshot of `path`, checked not blank.
pub async fn screenshot(kiln: &Kiln, path: &str, name: &str, height: u32) {
    let url = format!("http://{}{path}", kiln.server.http_addr);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &name, height))
        .await
        .unwrap();
}

/// The attribute values `href="..."` in `dom` that start with `prefix`.
pub fn links(dom: &str, prefix: &str) -> Vec<String> {
    let needle = format!("href=\"{prefix}");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&needle) {
        let start = at + 6;
        let end = start + rest[start..].find('"').unwrap();
        out.push(unescape(&rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// The five entities an HTML serializer writes.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
