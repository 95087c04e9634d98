//! `/compare?a=ID&b=ID`: two invocations side by side: what each was
//! (command line, who, when, how long), the options only one of them set,
//! the targets and tests whose outcomes differ, and their cache scorecards.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{badge, duration, segment, size, when};
use super::{PageResult, UiState, auth, layout};
use crate::bes::summary::Invocation;
use crate::http::caller::HttpCaller;
use crate::insights::scorecard::Scorecard;

#[derive(Debug, Deserialize)]
pub(super) struct CompareQuery {
    a: String,
    b: String,
}

/// Labels whose values differ between the two maps (or are in one only),
/// with both values (`-` where absent).
fn differing(a: BTreeMap<&str, &str>, b: BTreeMap<&str, &str>) -> Vec<(String, String, String)> {
    let labels: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    labels
        .into_iter()
        .filter(|l| a.get(l) != b.get(l))
        .map(|l| {
            let v = |m: &BTreeMap<&str, &str>| m.get(l).map_or("-", |v| v).to_string();
            (l.to_string(), v(&a), v(&b))
        })
        .collect()
}

fn outcomes(inv: &Invocation) -> BTreeMap<&str, &str> {
    inv.targets
        .iter()
        .map(|t| (t.label.as_str(), t.outcome.shown()))
        .collect()
}

fn test_statuses(inv: &Invocation) -> BTreeMap<&str, &str> {
    inv.tests
        .iter()
        .map(|t| (t.label.as_str(), t.status.as_str()))
        .collect()
}

fn link(inv: &Invocation) -> Markup {
    html! { a.mono href={ "/invocation/" (segment(&inv.invocation_id)) } { (inv.invocation_id) } }
}

fn facts(
    a: &Invocation,
    b: &Invocation,
    cards: (&Option<Scorecard>, &Option<Scorecard>),
) -> Markup {
    let line = |i: &Invocation| format!("bazel {} {}", i.command, i.patterns.join(" "));
    let card = |c: &Option<Scorecard>| -> Markup {
        match c {
            Some(c) => {
                html! { (c.totals.hits) " hits, " (c.totals.misses) " misses, " (c.totals.uploads) " uploads; "
                (size(c.bytes_down)) " down, " (size(c.bytes_up)) " up; saved " (duration(c.totals.saved_ms as i64)) }
            }
            None => html! { span.muted { "not counted" } },
        }
    };
    html! {
        table.compare {
            thead { tr { th {} th { "A" } th { "B" } } }
            tbody {
                tr { th { "Invocation" } td { (link(a)) } td { (link(b)) } }
                tr { th { "Status" } td { (badge(a.status)) } td { (badge(b.status)) } }
                tr { th { "Command line" } td.mono { (line(a)) } td.mono { (line(b)) } }
                tr { th { "User" } td { (a.user) } td { (b.user) } }
                tr { th { "Host" } td { (a.host) } td { (b.host) } }
                tr { th { "Started (UTC)" } td { (when(a.started_at)) } td { (when(b.started_at)) } }
                tr { th { "Duration" } td { (a.duration_ms.map(duration).unwrap_or_default()) } td { (b.duration_ms.map(duration).unwrap_or_default()) } }
                tr { th { "Cache hits (Bazel)" } td { (a.cache_hits) " of " (a.actions_executed) } td { (b.cache_hits) " of " (b.actions_executed) } }
                tr #compare-cache { th { "Cache (kiln)" } td { (card(cards.0)) } td { (card(cards.1)) } }
            }
        }
    }
}

fn table(class: &str, first: &str, rows: &[(String, String, String)]) -> Markup {
    html! {
        table class=(class) {
            thead { tr { th { (first) } th { "A" } th { "B" } } }
            tbody { @for (label, x, y) in rows {
                tr data-label=(label) { td.mono { (label) } td.mono { (x) } td.mono { (y) } }
            } }
        }
    }
}

pub(super) async fn page(
    State(state): State<UiState>,
    caller: HttpCaller,
    uri: Uri,
    Query(q): Query<CompareQuery>,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let a = super::invocation::find(&state, &q.a).await?;
    let b = super::invocation::find(&state, &q.b).await?;
    let cards = (
        state.events.scorecard(&q.a).await?,
        state.events.scorecard(&q.b).await?,
    );
    let set = |i: &Invocation| -> BTreeSet<String> { i.options.iter().cloned().collect() };
    let (oa, ob) = (set(&a), set(&b));
    let only_a: Vec<&String> = oa.difference(&ob).collect();
    let only_b: Vec<&String> = ob.difference(&oa).collect();
    let targets = differing(outcomes(&a), outcomes(&b));
    let tests = differing(test_statuses(&a), test_statuses(&b));
    let body = html! {
        h1 { "Comparing two invocations" }
        (facts(&a, &b, (&cards.0, &cards.1)))
        h2 { "Options" }
        @if only_a.is_empty() && only_b.is_empty() { p.muted { "The same options." } }
        @else {
            table.options {
                thead { tr { th { "Only in A" } th { "Only in B" } } }
                tbody { tr {
                    td.mono #only-a { @for o in &only_a { (o) br; } }
                    td.mono #only-b { @for o in &only_b { (o) br; } }
                } }
            }
        }
        h2 { "Targets whose outcome differs (" (targets.len()) ")" }
        @if targets.is_empty() { p.muted { "None." } } @else { (table("targets-diff", "Target", &targets)) }
        h2 { "Tests whose status differs (" (tests.len()) ")" }
        @if tests.is_empty() { p.muted { "None." } } @else { (table("tests-diff", "Test", &tests)) }
    };
    Ok(layout::page("Compare invocations", None, body).into_response())
}
