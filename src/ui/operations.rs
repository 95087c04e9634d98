//! `/operations`: what the scheduler is doing now (queued and executing
//! jobs with their age, platform and worker, and the most recently
//! finished) and the workers connected to this pod. Each job links to its
//! action page. Only jobs of instances the caller may read are listed.

use axum::extract::State;
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, html};

use super::blob::BlobRef;
use super::layout::{Badge, badge, duration, when};
use super::{PageResult, UiState, auth, layout};
use crate::bes::summary::Verdict;
use crate::execution::job::{Job, JobFilter, Stage};
use crate::http::caller::HttpCaller;

/// A worker's states, as badges.
const BUSY: Badge = Badge::new("EXECUTING", Verdict::Running);
const IDLE: Badge = Badge::new("IDLE", Verdict::Neutral);
const UNSANDBOXED: Badge = Badge::new("UNSANDBOXED", Verdict::Failed);

/// Jobs listed per stage.
const LISTED: u64 = 200;

fn jobs_table(jobs: &[Job], now: i64, class: &str) -> Markup {
    html! {
        table class=(class) {
            thead { tr { th { "Stage" } th { "Action" } th { "Instance" } th { "Platform" } th { "Worker" } th.num { "Age" } th.num { "Attempts" } } }
            tbody { @for j in jobs {
                @let action = BlobRef { instance: j.instance.clone(), digest: j.action_digest };
                tr {
                    td { (badge(j.stage)) }
                    td.mono { a href={ "/action/" (action.path()) } { (j.action_digest.hash_hex().get(..16).unwrap_or("")) "…/" (j.action_digest.size) } }
                    td.mono { (j.instance) }
                    td.mono { @for (k, v) in &j.platform.0 { (k) "=" (v) " " } }
                    td.mono { (j.bot.as_deref().unwrap_or("")) }
                    td.num title=(when(j.queued_at)) { (duration(now.saturating_sub(j.queued_at))) }
                    td.num { (j.attempts) }
                }
            } }
        }
    }
}

pub(super) async fn page(State(state): State<UiState>, caller: HttpCaller, uri: Uri) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let Some(scheduler) = &state.scheduler else {
        let body = html! { h1 { "Operations" } p.muted { "Remote execution is off on this server (execution.enabled)." } };
        return Ok(layout::page("Operations", None, body).into_response());
    };
    let now = crate::time::now_ms();
    let mut lists = Vec::new();
    for stage in [Stage::Executing, Stage::Queued, Stage::Completed] {
        let mut jobs = scheduler
            .list(&JobFilter {
                stage: Some(stage),
                limit: LISTED,
                ..Default::default()
            })
            .await?;
        jobs.retain(|j| auth::may_read(&caller, &j.instance));
        lists.push(jobs);
    }
    let workers: Vec<_> = scheduler
        .workers()
        .into_iter()
        .filter(|w| auth::may_read(&caller, &w.instance))
        .collect();
    let body = html! {
        h1 { "Operations" }
        p.muted { "Refreshes every 5 seconds." }
        h2 { "Executing (" (lists[0].len()) ")" }
        @if lists[0].is_empty() { p.muted { "Nothing is running." } } @else { (jobs_table(&lists[0], now, "executing")) }
        h2 { "Queued (" (lists[1].len()) ")" }
        @if lists[1].is_empty() { p.muted { "Nothing is waiting." } } @else { (jobs_table(&lists[1], now, "queued")) }
        h2 { "Workers connected to this server (" (workers.len()) ")" }
        @if workers.is_empty() { p.muted { "No worker has polled in the last two minutes." } } @else {
            table.workers {
                thead { tr { th { "Worker" } th { "Session" } th { "Instance" } th { "State" } th { "Sandbox" } th { "Offers" } th.num { "Last seen" } } }
                tbody { @for w in &workers {
                    tr { td.mono { (w.bot_id) } td.mono.muted { (w.bot) } td.mono { (w.instance) } td { (badge(if w.busy { BUSY } else { IDLE })) }
                        td { @match w.sandbox.as_deref() {
                            Some("none") => (badge(UNSANDBOXED)),
                            Some(s) => span.mono { (s) },
                            None => span.muted { "not reported" },
                        } }
                        td.mono { (w.offers.join(" ")) } td.num { (duration(now.saturating_sub(w.last_seen_ms))) " ago" } }
                } }
            }
        }
        h2 { "Recently finished" }
        @if lists[2].is_empty() { p.muted { "No finished jobs are kept." } } @else { (jobs_table(&lists[2], now, "completed")) }
    };
    Ok(layout::page("Operations", Some(5), body).into_response())
}
