//! `/invocation/{id}`: one build: its header, failures first, every test,
//! logs inline (test logs and failed actions' output from the CAS, the
//! build's own progress output from the event store), artifacts to
//! download, the options, and links to the timing profile. A running
//! invocation's page refreshes itself.
//!
//! The handler gathers what the page shows ([`Gathered`]); the sections
//! (`invocation_sections.rs`) render it and decide nothing.

use axum::extract::{Path, State};
use axum::http::{Uri, header};
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::blob::{self, BlobRef};
use super::invocation_sections as sections;
use super::{PageResult, UiState, ansi, auth, layout};
use crate::bes::summary::{FailedAction, Invocation, Test, Verdict};
use crate::error::{Error, Result};
use crate::execution::job::Job;
use crate::execution::usage::Totals;
use crate::http::caller::HttpCaller;

/// Bytes of one log shown inline; longer logs show their end and a link.
const INLINE_LOG: u64 = 64 << 10;
/// Logs of failed tests and actions inlined per page (the rest are links).
const INLINED_LOGS: usize = 20;
/// Remote executions listed.
const REMOTE_ACTIONS: u64 = 500;

pub(super) async fn find(state: &UiState, id: &str) -> Result<Invocation> {
    state
        .events
        .invocation(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no invocation {id}")))
}

/// Failed first, then flaky, then the rest, passed last (each in reported
/// order).
pub(super) fn rank(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Failed => 0,
        Verdict::Flaky => 1,
        Verdict::Passed => 3,
        Verdict::Running | Verdict::Neutral => 2,
    }
}

/// A log from the CAS, inline: its end when long, with a link to all of it.
async fn inline_log(state: &UiState, uri: &str, name: &str) -> Markup {
    let Some(blob) = BlobRef::from_uri(uri) else {
        return html! { p.muted { "Not uploaded: " code { (uri) } } };
    };
    let link = blob.link(name);
    match blob::tail(state, &blob, INLINE_LOG).await {
        Ok((text, skipped)) => html! {
            @if skipped > 0 {
                p.muted { "The first " (skipped) " bytes are not shown. "
                    a href=(link) { "Whole log (" (blob.digest.size) " bytes)" } }
            }
            pre.log { (maud::PreEscaped(ansi::to_html(&text))) }
            @if skipped == 0 { p { a href=(link) { "Download " (name) } } }
        },
        Err(e) => html! { p.error { "Could not read " (name) ": " (e.to_string()) } },
    }
}

/// `GET /invocation/{id}/log`: the whole progress output, as text.
pub(super) async fn full_log(
    State(state): State<UiState>,
    Path(id): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    find(&state, &id).await?;
    let text = super::progress::all(&state, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response())
}

/// Everything the page shows, gathered before any of it is rendered.
pub(super) struct Gathered {
    pub(super) inv: Invocation,
    /// The last failing attempt's log of the first failed tests.
    pub(super) test_logs: Vec<(String, Markup)>,
    /// The first failed actions with their stderr and stdout inline.
    pub(super) action_logs: Vec<(FailedAction, Vec<Markup>)>,
    /// The end of the build's output, and whether earlier output was cut.
    pub(super) progress: (String, bool),
    pub(super) nondeterministic: Vec<crate::insights::NondeterministicOutput>,
    pub(super) misses: Vec<crate::insights::misses::Miss>,
    pub(super) scorecard: Option<crate::insights::scorecard::Scorecard>,
    /// Its remote executions the caller may read, and what they cost.
    pub(super) remote_jobs: Vec<Job>,
    pub(super) cost: Option<Totals>,
}

impl Gathered {
    async fn of(state: &UiState, caller: &HttpCaller, id: &str) -> Result<Gathered> {
        let inv = find(state, id).await?;
        // Independent reads, at once.
        let (test_logs, action_logs) = tokio::join!(
            failed_test_logs(state, &inv),
            failed_action_logs(state, &inv)
        );
        let ((remote_jobs, cost), progress, nondeterministic, misses, scorecard) = tokio::try_join!(
            remote_jobs(state, caller, id),
            super::progress::tail(state, id),
            super::nondeterminism::readable(state, caller, Some(id), 0),
            super::misses::readable(state, caller, id),
            state.events.scorecard(id),
        )?;
        Ok(Gathered {
            progress,
            nondeterministic,
            misses,
            scorecard,
            inv,
            test_logs,
            action_logs,
            remote_jobs,
            cost,
        })
    }
}

/// The log of the last failing attempt of each of the first failed tests.
async fn failed_test_logs(state: &UiState, inv: &Invocation) -> Vec<(String, Markup)> {
    let failed = inv.tests.iter().filter(|t| t.shown().is_failure());
    let mut logs = Vec::new();
    for t in failed.take(INLINED_LOGS) {
        if let Some(a) = last_failed_attempt(t) {
            logs.push((t.label.clone(), inline_log(state, &a.log, "test.log").await));
        }
    }
    logs
}

fn last_failed_attempt(t: &Test) -> Option<&crate::bes::summary::Attempt> {
    t.attempt_list
        .iter()
        .rev()
        .find(|a| a.status.is_failure() && !a.log.is_empty())
}

async fn failed_action_logs(state: &UiState, inv: &Invocation) -> Vec<(FailedAction, Vec<Markup>)> {
    let mut logs = Vec::new();
    for a in inv.failed_actions.iter().take(INLINED_LOGS) {
        let mut parts = Vec::new();
        for (name, uri) in [("stderr", &a.stderr), ("stdout", &a.stdout)] {
            if !uri.is_empty() {
                parts.push(inline_log(state, uri, name).await);
            }
        }
        logs.push((a.clone(), parts));
    }
    logs
}

/// The invocation's remote executions the caller may read and their cost:
/// summed from the listed jobs unless the list was cut, else from all.
async fn remote_jobs(
    state: &UiState,
    caller: &HttpCaller,
    id: &str,
) -> Result<(Vec<Job>, Option<Totals>)> {
    let Some(s) = &state.scheduler else {
        return Ok((Vec::new(), None));
    };
    let may_read = |i: &str| auth::may_read(caller, i);
    let filter = crate::execution::job::JobFilter {
        invocation_id: Some(id.to_string()),
        limit: REMOTE_ACTIONS,
        ..Default::default()
    };
    let listed = s.list(&filter).await?;
    let all_listed = (listed.len() as u64) < REMOTE_ACTIONS;
    let jobs: Vec<Job> = listed
        .into_iter()
        .filter(|j| may_read(&j.instance))
        .collect();
    let cost = if jobs.is_empty() {
        None
    } else if all_listed {
        let mut totals = Totals::default();
        totals.add_jobs(&jobs);
        Some(totals)
    } else {
        Some(crate::execution::usage::of_invocation(s, id, may_read).await?)
    };
    Ok((jobs, cost))
}

pub(super) async fn page(
    State(state): State<UiState>,
    Path(id): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let g = Gathered::of(&state, &caller, &id).await?;
    let refresh = (!g.inv.is_finished()).then_some(5);
    let title = format!("{} {}", g.inv.status.as_str(), sections::title(&g.inv));
    Ok(layout::page(&title, refresh, sections::render(&g)).into_response())
}
