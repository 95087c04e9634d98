//! `/nondeterminism`: the actions whose results differed between two runs
//! of the same action (see `crate::insights`), by target, with the outputs
//! that differed; and the same list for one invocation, on its page.

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{segment, when};
use super::{PageResult, UiState, auth, layout};
use crate::http::caller::HttpCaller;
use crate::insights::NondeterministicOutput;

/// Rows one page reads at most.
const LISTED: i64 = 500;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Days back from now (default 7).
    days: Option<i64>,
    /// Only rows either of whose writers was this invocation.
    invocation: Option<String>,
}

/// `hash/size` under `instance` as a page path tail.
fn under(instance: &str, value: &str) -> String {
    if instance.is_empty() {
        value.to_string()
    } else {
        format!("{instance}/{value}")
    }
}

fn value(r: &NondeterministicOutput, v: &str) -> Markup {
    let name = r.output_path.rsplit('/').next().unwrap_or("output");
    html! {
        @if v.is_empty() { span.muted { "absent" } }
        @else if v.starts_with("->") { (v) }
        @else { a href={ "/blob/" (under(&r.instance, v)) "/" (segment(name)) } title=(v) { (short(v)) } }
    }
}

/// `hash/size` shortened to the hash's first 12 digits (the link and the
/// title keep it whole).
fn short(value: &str) -> String {
    match value.split_once('/') {
        Some((hash, size)) if hash.len() > 12 && hash.is_char_boundary(12) => {
            format!("{}…/{size}", &hash[..12])
        }
        _ => value.to_string(),
    }
}

fn invocation(id: &str) -> Markup {
    html! {
        @if id.is_empty() { span.muted { "unknown" } }
        @else { a href={ "/invocation/" (segment(id)) } { (id) } }
    }
}

/// The rows as a table, one per differing output.
pub(super) fn table(rows: &[NondeterministicOutput]) -> Markup {
    html! {
        table.nondeterministic {
            thead { tr { th { "Target" } th { "Mnemonic" } th { "Output" } th { "Before" } th { "After" }
                th { "Earlier invocation" } th { "Later invocation" } th { "Seen (UTC)" } } }
            tbody { @for r in rows {
                tr data-target=(r.target) data-output=(r.output_path) {
                    td.mono { @if r.target.is_empty() { span.muted { "unknown" } } @else { (r.target) } }
                    td { (r.mnemonic) }
                    td.mono { a href={ "/action/" (under(&r.instance, &r.action_digest)) } { (r.output_path) } }
                    td.mono { (value(r, &r.before)) }
                    td.mono { (value(r, &r.after)) }
                    td.mono { (invocation(&r.before_invocation)) }
                    td.mono { (invocation(&r.after_invocation)) }
                    td { (when(r.seen_at)) }
                }
            } }
        }
    }
}

/// The rows of `invocation` (or of the window) the caller may read.
pub(super) async fn readable(
    state: &UiState,
    caller: &HttpCaller,
    invocation: Option<&str>,
    since_ms: i64,
) -> crate::error::Result<Vec<NondeterministicOutput>> {
    let mut rows = state
        .events
        .nondeterminism(invocation, since_ms, LISTED)
        .await?;
    rows.retain(|r| auth::may_read(caller, &r.instance));
    Ok(rows)
}

pub(super) async fn page(
    State(state): State<UiState>,
    caller: HttpCaller,
    uri: Uri,
    Query(q): Query<ListQuery>,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let days = q.days.unwrap_or(7).clamp(1, 365);
    let since = crate::time::now_ms() - days * 86_400_000;
    let rows = readable(&state, &caller, q.invocation.as_deref(), since).await?;
    let mut targets: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
    targets.sort_unstable();
    targets.dedup();
    let body = html! {
        h1 { "Nondeterministic actions" }
        p.muted { "An action is not deterministic when two of its runs, with equal inputs, wrote different outputs: "
            "kiln compares every result written to the action cache with the one it replaces. "
            "Each such action costs later builds their cache hits." }
        form.filters method="get" action="/nondeterminism" {
            label { "Window (days)" input type="number" name="days" min="1" max="365" value=(days); }
            @if let Some(i) = &q.invocation { input type="hidden" name="invocation" value=(i); }
            button type="submit" { "Show" }
        }
        @if rows.is_empty() {
            p.muted { "No action wrote differing outputs in this window." }
        } @else {
            p { (targets.len()) " targets, " (rows.len()) " differing outputs." }
            (table(&rows))
        }
    };
    Ok(layout::page("Nondeterministic actions", None, body).into_response())
}
