//! `/trends`: how builds go over time. Per UTC day: invocations and
//! failures, the remote cache's hit rate, wall time, test runs, failed
//! runs and flaky tests; filtered by what Bazel says about an invocation
//! (command, user, host, a target pattern, repository, branch, a
//! `--build_metadata` pair).

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{duration, percent};
use super::{PageResult, UiState, auth, layout};
use crate::bes::store::{InvocationFilter, SourceQuery, TrendDay};
use crate::http::caller::HttpCaller;

#[derive(Debug, Deserialize)]
pub(super) struct TrendsQuery {
    /// Days back from now (default 30).
    days: Option<i64>,
}

/// A horizontal bar of `part` in `whole`, drawn in SVG (the pages run no
/// script and set no inline styles).
fn bar(part: i64, whole: i64) -> Markup {
    let width = if whole > 0 {
        (part.clamp(0, whole) * 100 / whole) as u32
    } else {
        0
    };
    html! {
        svg.trend width="100" height="10" viewBox="0 0 100 10" role="img" {
            rect.track x="0" y="0" width="100" height="10" {}
            rect.fill x="0" y="0" width=(width) height="10" {}
        }
    }
}

fn row(d: &TrendDay, longest: i64) -> Markup {
    html! {
        @let day = layout::when(d.day_ms);
        @let day = day.get(..10).unwrap_or_default();
        tr data-day=(day) {
            td { (day) }
            td.num { (d.invocations) }
            td.num { (d.failed) }
            td.num { (percent(d.cache_hits, d.actions)) " " (bar(d.cache_hits, d.actions)) }
            td.num { (percent(d.kiln_hits, d.kiln_lookups)) " " (bar(d.kiln_hits, d.kiln_lookups)) }
            td.num { (duration(d.mean_duration_ms)) " " (bar(d.mean_duration_ms, longest)) }
            td.num { (duration(d.max_duration_ms)) }
            td.num { (d.tests) }
            td.num { (d.test_failures) }
            td.num { (d.flaky_tests) }
        }
    }
}

pub(super) async fn page(
    State(state): State<UiState>,
    caller: HttpCaller,
    uri: Uri,
    Query(q): Query<TrendsQuery>,
    Query(source): Query<SourceQuery>,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let days = q.days.unwrap_or(30).clamp(1, 366);
    let filter = source.narrow(InvocationFilter {
        since_ms: Some(crate::time::now_ms() - days * 86_400_000),
        ..Default::default()
    })?;
    let trend = state.events.trends(&filter).await?;
    let longest = trend.iter().map(|d| d.mean_duration_ms).max().unwrap_or(0);
    let field = |name: &'static str, label: &'static str, v: &Option<String>| {
        html! { label { (label) input type="text" name=(name) value=(v.clone().unwrap_or_default()); } }
    };
    let body = html! {
        h1 { "Trends" }
        p.muted { "Invocations per UTC day, newest first: how many failed, the remote cache's hit rate (as Bazel reports it, and as kiln counted their lookups: Bazel 4 reports no hits of remote execution), their wall time, and their tests." }
        form.filters method="get" action="/trends" {
            label { "Days" input type="number" name="days" min="1" max="366" value=(days); }
            (field("command", "Command", &source.command))
            (field("user", "User", &source.user))
            (field("host", "Host", &source.host))
            (field("pattern", "Target pattern", &source.pattern))
            (field("repository", "Repository", &source.repository))
            (field("branch", "Branch", &source.branch))
            (field("metadata", "Build metadata (NAME=VALUE)", &source.metadata))
            button type="submit" { "Show" }
        }
        @if trend.is_empty() {
            p.muted { "No invocations in this window." }
        } @else {
            table.trends {
                thead { tr { th { "Day (UTC)" } th.num { "Invocations" } th.num { "Failed" } th.num { "Hit rate (Bazel)" } th.num { "Hit rate (kiln)" }
                    th.num { "Mean duration" } th.num { "Longest" } th.num { "Test runs" } th.num { "Failed runs" } th.num title="Tests that failed and then passed within one invocation" { "Flaky tests" } } }
                tbody { @for d in &trend { (row(d, longest)) } }
            }
        }
    };
    Ok(layout::page("Trends", None, body).into_response())
}
