//! `/tests`: the flakiest and slowest tests over a window of days, and
//! `/tests/{label}`: one test's history across invocations. A run is flaky
//! when it failed and then passed within one invocation (a retry under
//! `--flaky_test_attempts`), or when runs with equal inputs (the test
//! target's output digests) both passed and failed.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;

use super::layout::{badge, duration, segment, status_class, when};
use super::{PageResult, UiState, auth, layout};
use crate::bes::store::{TestRun, TestStats};
use crate::http::caller::HttpCaller;

/// Runs shown in one test's history.
const HISTORY: i64 = 200;
/// Tests listed per table.
const LISTED: usize = 50;

#[derive(Debug, Deserialize)]
pub(super) struct WindowQuery {
    /// Days back from now (default 7).
    days: Option<i64>,
}

use crate::bes::summary::TestStatus;

/// Fingerprints under which these runs both passed and failed.
fn mixed(runs: &[TestRun]) -> HashSet<&str> {
    let mut seen: HashMap<&str, (bool, bool)> = HashMap::new();
    for r in runs.iter().filter(|r| !r.fingerprint.is_empty()) {
        let e = seen.entry(&r.fingerprint).or_default();
        if r.status.passed() {
            e.0 = true;
        } else if r.status.is_failure() {
            e.1 = true;
        }
    }
    seen.into_iter()
        .filter(|(_, (p, f))| *p && *f)
        .map(|(k, _)| k)
        .collect()
}

fn stats_table(rows: &[&TestStats], class: &str) -> maud::Markup {
    html! {
        table class=(class) {
            thead { tr { th { "Test" } th.num { "Runs" } th.num { "Failures" } th.num { "Flaky runs" }
                th.num { "Mixed inputs" } th.num { "Mean" } th.num { "Longest" } } }
            tbody { @for s in rows {
                tr class=(if s.flaky() { "flaky" } else if s.failures > 0 { "bad" } else { "" }) data-label=(s.label) {
                    td.mono { a href={ "/tests/" (segment(&s.label)) } { (s.label) }
                        @if s.flaky() { " " (badge(TestStatus::Flaky)) } }
                    td.num { (s.runs) } td.num { (s.failures) } td.num { (s.flaky_runs) }
                    td.num { (s.mixed_inputs) } td.num { (duration(s.mean_ms)) } td.num { (duration(s.max_ms)) }
                }
            } }
        }
    }
}

pub(super) async fn overview(
    State(state): State<UiState>,
    caller: HttpCaller,
    uri: Uri,
    Query(q): Query<WindowQuery>,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let days = q.days.unwrap_or(7).clamp(1, 365);
    let since = crate::time::now_ms() - days * 86_400_000;
    let stats = state.events.test_stats(since, 1000).await?;
    let mut flaky: Vec<&TestStats> = stats.iter().filter(|s| s.flaky()).collect();
    flaky.sort_by_key(|s| std::cmp::Reverse((s.flaky_runs + s.mixed_inputs, s.failures)));
    flaky.truncate(LISTED);
    let mut slow: Vec<&TestStats> = stats.iter().collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.mean_ms));
    slow.truncate(LISTED);
    let mut failing: Vec<&TestStats> = stats
        .iter()
        .filter(|s| s.failures > 0 && !s.flaky())
        .collect();
    failing.sort_by_key(|s| std::cmp::Reverse(s.failures));
    failing.truncate(LISTED);
    let body = html! {
        h1 { "Tests" }
        form.filters method="get" action="/tests" {
            label { "Window (days)" input type="number" name="days" min="1" max="365" value=(days); }
            button type="submit" { "Show" }
        }
        p.muted { (stats.len()) " tests ran in finished invocations over the last " (days) " days." }
        h2 { "Flakiest" }
        @if flaky.is_empty() { p.muted { "No flaky tests in this window." } } @else { (stats_table(&flaky, "flakiest")) }
        h2 { "Failing" }
        @if failing.is_empty() { p.muted { "No failing tests in this window." } } @else { (stats_table(&failing, "failing")) }
        h2 { "Slowest" }
        @if slow.is_empty() { p.muted { "No tests in this window." } } @else { (stats_table(&slow, "slowest")) }
    };
    Ok(layout::page("Tests", None, body).into_response())
}

pub(super) async fn history(
    State(state): State<UiState>,
    Path(label): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let runs = state.events.test_history(&label, HISTORY).await?;
    let mixed = mixed(&runs);
    let is_flaky = |r: &TestRun| r.flaky || mixed.contains(r.fingerprint.as_str());
    let flaky_runs = runs.iter().filter(|r| is_flaky(r)).count();
    let failures = runs.iter().filter(|r| r.status.is_failure()).count();
    let max = runs.iter().map(|r| r.duration_ms).max().unwrap_or(0).max(1);
    let verdict = if flaky_runs > 0 {
        TestStatus::Flaky
    } else if failures > 0 {
        TestStatus::Failed
    } else if runs.is_empty() {
        TestStatus::NoStatus
    } else {
        TestStatus::Passed
    };
    let body = html! {
        h1 { "Test " span.mono { (label) } }
        section.card {
            p { (badge(verdict)) " " (runs.len()) " runs, " (failures) " not passing, " (flaky_runs) " flaky."
                @if !mixed.is_empty() { " It both passed and failed on the same inputs." } }
        }
        @if runs.is_empty() {
            p.muted { "No finished invocation ran this test." }
        } @else {
            table.history {
                thead { tr { th { "Status" } th { "When (UTC)" } th { "Invocation" } th.num { "Attempts" } th.num { "Duration" } th { "" } th { "Cached" } th { "Inputs" } } }
                tbody { @for r in &runs {
                    @let shown = if is_flaky(r) { TestStatus::Flaky } else { r.status };
                    tr class=(status_class(shown)) data-flaky=(is_flaky(r)) {
                        td { (badge(shown)) }
                        td { (when(r.started_at)) }
                        td.mono { a href={ "/invocation/" (segment(&r.invocation_id)) } { (r.invocation_id) } }
                        td.num { (r.attempts) }
                        td.num { (duration(r.duration_ms)) }
                        td { span.bar style={ "width:" ((r.duration_ms * 120 / max).max(1)) "px" } {} }
                        td { @if r.cached { "cached" } }
                        td.mono.muted { (r.fingerprint) }
                    }
                } }
            }
        }
    };
    Ok(layout::page(&format!("Test {label}"), None, body).into_response())
}
