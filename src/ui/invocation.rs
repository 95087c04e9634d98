//! `/invocation/{id}`: one build: its header, failures first, every test,
//! logs inline (test logs and failed actions' output from the CAS, the
//! build's own progress output from the event store), artifacts to
//! download, the options, and links to the timing profile. A running
//! invocation's page refreshes itself.

use axum::extract::{Path, State};
use axum::http::{Uri, header};
use axum::response::IntoResponse;
use maud::{Markup, PreEscaped, html};

use super::blob::{self, BlobRef};
use super::layout::{badge, duration, percent, segment, size, status_class, when};
use super::{PageResult, UiState, ansi, auth, layout};
use crate::bes::summary::{Invocation, Test};
use crate::error::{Error, Result};
use crate::http::caller::HttpCaller;

/// Bytes of one log shown inline; longer logs show their end and a link.
const INLINE_LOG: u64 = 64 << 10;
/// Logs of failed tests and actions inlined per page (the rest are links).
const INLINED_LOGS: usize = 20;
/// Remote executions listed.
const REMOTE_ACTIONS: u64 = 500;

/// The outcome, worker and measured usage of a finished job's response.
fn job_outcome(
    job: &crate::execution::job::Job,
) -> (String, String, Option<crate::proto::kiln_v1::ResourceUsage>) {
    use prost::Message;
    let Some(r) = job
        .response
        .as_ref()
        .and_then(|r| crate::proto::reapi::ExecuteResponse::decode(&r[..]).ok())
    else {
        return (String::new(), job.bot.clone().unwrap_or_default(), None);
    };
    let status = r
        .status
        .as_ref()
        .filter(|s| s.code != 0)
        .map(|s| s.message.clone());
    match r.result {
        Some(res) => (
            status.unwrap_or_else(|| format!("exit {}", res.exit_code)),
            res.execution_metadata
                .as_ref()
                .map(|m| m.worker.clone())
                .unwrap_or_default(),
            crate::execution::usage::of(&res),
        ),
        None => (status.unwrap_or_default(), String::new(), None),
    }
}

/// What the invocation's remote executions cost, in one line.
fn cost_line(c: &crate::execution::usage::Totals) -> Markup {
    let secs = |s: f64| duration((s * 1000.0) as i64);
    html! {
        p.cost {
            @if c.measured == 0 {
                span.muted { "No worker reported resource usage for these actions." }
            } @else {
                "CPU " strong { (secs(c.user_cpu_seconds + c.system_cpu_seconds)) }
                span.muted { " (user " (secs(c.user_cpu_seconds)) ", system " (secs(c.system_cpu_seconds)) ")" }
                " · peak memory " strong { (size(c.peak_rss_bytes)) }
                " · disk read " (size(c.read_bytes)) ", written " (size(c.written_bytes))
                " · input fetch " (secs(c.input_fetch_seconds)) ", upload " (secs(c.output_upload_seconds))
                span.muted { " · " (c.measured) " of " (c.actions) " finished actions measured"
                    @if c.partial { " (the newest " (crate::execution::usage::MOST_SUMMED) " jobs)" } }
            }
        }
    }
}

pub(super) async fn find(state: &UiState, id: &str) -> Result<Invocation> {
    state
        .events
        .invocation(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no invocation {id}")))
}

/// Failed first, then flaky, then the rest (each in reported order).
fn rank(status: &str, flaky: bool) -> u8 {
    match status_class(status) {
        "bad" => 0,
        _ if flaky => 1,
        "ok" => 3,
        _ => 2,
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
            pre.log { (PreEscaped(ansi::to_html(&text))) }
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

fn test_row(t: &Test) -> Markup {
    let shown = if t.flaky && t.status != "FLAKY" {
        "FLAKY"
    } else {
        t.status.as_str()
    };
    html! {
        tr class=(status_class(shown)) data-label=(t.label) {
            td { (badge(shown)) }
            td.mono { a href={ "/tests/" (segment(&t.label)) } { (t.label) } }
            td.num { (t.attempts) }
            td.num { @if t.shards > 0 { (t.shards) } @else { "-" } }
            td.num { (duration(t.duration_ms)) }
            td { @if t.cached { "cached" } }
            td {
                @for a in &t.attempt_list {
                    @if let Some(b) = BlobRef::from_uri(&a.log) {
                        a href=(b.link("test.log")) title={ "run " (a.run) ", shard " (a.shard) ", attempt " (a.attempt) ": " (a.status) } {
                            span class={ "badge " (status_class(&a.status)) } { "#" (a.attempt) }
                        } " "
                    }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(state): State<UiState>,
    Path(id): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let inv = find(&state, &id).await?;
    let mut tests: Vec<&Test> = inv.tests.iter().collect();
    tests.sort_by_key(|t| rank(&t.status, t.flaky));
    let test_of = |label: &str| inv.tests.iter().find(|t| t.label == label);
    let mut targets: Vec<_> = inv.targets.iter().collect();
    // A test target's row shows its test's status: the build succeeding
    // says nothing about the test passing.
    let shown = |t: &crate::bes::summary::Target| -> String {
        match test_of(&t.label) {
            Some(test) if !test.status.is_empty() => test.status.clone(),
            _ if t.outcome.is_empty() => "PENDING".into(),
            _ => t.outcome.clone(),
        }
    };
    targets.sort_by_key(|t| rank(&shown(t), false));

    // Logs of the first failures, inline.
    let mut logs = Vec::new();
    for t in tests
        .iter()
        .filter(|t| rank(&t.status, t.flaky) == 0)
        .take(INLINED_LOGS)
    {
        let attempt = t
            .attempt_list
            .iter()
            .rev()
            .find(|a| status_class(&a.status) == "bad" && !a.log.is_empty());
        if let Some(a) = attempt {
            logs.push((
                t.label.clone(),
                inline_log(&state, &a.log, "test.log").await,
            ));
        }
    }
    let mut action_logs = Vec::new();
    for a in inv.failed_actions.iter().take(INLINED_LOGS) {
        let mut parts = Vec::new();
        for (name, uri) in [("stderr", &a.stderr), ("stdout", &a.stdout)] {
            if !uri.is_empty() {
                parts.push(inline_log(&state, uri, name).await);
            }
        }
        action_logs.push((a, parts));
    }
    let (progress_text, dropped) = super::progress::tail(&state, &id).await?;
    let nondeterministic = super::nondeterminism::readable(&state, &caller, Some(&id), 0).await?;
    let misses = super::misses::readable(&state, &caller, &id).await?;
    let scorecard = state.events.scorecard(&id).await?;
    let may_read = |i: &str| auth::may_read(&caller, i);
    let (remote_jobs, cost) = match &state.scheduler {
        Some(s) => {
            let listed = s
                .list(&crate::execution::job::JobFilter {
                    invocation_id: Some(id.clone()),
                    limit: REMOTE_ACTIONS,
                    ..Default::default()
                })
                .await?;
            let all_listed = (listed.len() as u64) < REMOTE_ACTIONS;
            let jobs: Vec<_> = listed
                .into_iter()
                .filter(|j| may_read(&j.instance))
                .collect();
            // The listed jobs are all of them unless the list was cut;
            // only then do the sums read the rest.
            let cost = if jobs.is_empty() {
                None
            } else if all_listed {
                let mut totals = crate::execution::usage::Totals::default();
                totals.add_jobs(&jobs);
                Some(totals)
            } else {
                Some(crate::execution::usage::of_invocation(s, &id, may_read).await?)
            };
            (jobs, cost)
        }
        None => (Vec::new(), None),
    };
    let profile = inv
        .tool_logs
        .iter()
        .find(|l| l.name.ends_with(".profile.gz") || l.name == "command.profile.gz");
    let running = !inv.is_finished();
    let title = format!("{} {}", inv.command, inv.patterns.join(" "));
    let remote: i64 = inv
        .runners
        .iter()
        .filter(|r| r.name == "remote")
        .map(|r| r.count)
        .sum();
    let body = html! {
        h1 { (badge(inv.status.as_str())) " " (title)
            @if !nondeterministic.is_empty() { " " span.badge.flaky.nondeterministic { "NONDETERMINISTIC" } } }
        section.card {
            dl.facts {
                dt { "Invocation" } dd.mono { (inv.invocation_id) }
                dt { "Exit" } dd { @if let Some(c) = inv.exit_code { (c) " " (inv.exit_code_name) } @else { span.muted { "running" } } }
                dt { "Command line" } dd.mono { "bazel " (inv.command) " " (inv.patterns.join(" ")) }
                dt { "User" } dd { (inv.user) }
                dt { "Host" } dd { (inv.host) }
                dt { "Started (UTC)" } dd { (when(inv.started_at)) }
                dt { "Duration" } dd { (inv.duration_ms.map(duration).unwrap_or_default()) }
                dt { "Cache hits" } dd { (inv.cache_hits) " of " (inv.actions_executed) " actions "
                    span.muted { (percent(inv.cache_hits, inv.actions_executed)) } }
                dt { "Where actions ran" } dd {
                    @if inv.runners.is_empty() { span.muted { @if running { "not reported yet" } @else { "not reported by this Bazel" } } }
                    @for r in &inv.runners { (r.name) ": " (r.count) "; " }
                    @if remote > 0 { span.muted { "(" (remote) " executed remotely)" } }
                }
                dt { "Events" } dd { (inv.event_count) }
                @if let Some(p) = profile {
                    dt { "Timing" } dd { a href={ "/invocation/" (segment(&inv.invocation_id)) "/timing" } { "Timeline and critical path" }
                        " · " @if let Some(b) = BlobRef::from_uri(&p.uri) { a href=(b.link(&p.name)) { (p.name) } } }
                }
            }
            @if running { p.muted { "Still running: this page refreshes every 5 seconds." } }
            form.compare method="get" action="/compare" {
                input type="hidden" name="a" value=(inv.invocation_id);
                label { "Compare with invocation " input type="text" name="b" size="38"; }
                button type="submit" { "Compare" }
            }
        }

        @if !tests.is_empty() {
            h2 { "Tests (" (tests.len()) ")" }
            table.tests {
                thead { tr { th { "Status" } th { "Test" } th.num { "Attempts" } th.num { "Shards" } th.num { "Duration" } th { "Cached" } th { "Logs" } } }
                tbody { @for t in &tests { (test_row(t)) } }
            }
        }
        @for (label, log) in &logs {
            section.card.failure data-label=(label) {
                h2 { "test.log of " span.mono { (label) } }
                (log)
            }
        }
        @for (a, parts) in &action_logs {
            section.card.failure {
                h2 { "Failed action " (a.mnemonic) " of " span.mono { (a.label) } " (exit " (a.exit_code) ")" }
                @if !a.argv.is_empty() { details { summary { "Command line" } pre.mono { (a.argv.join(" ")) } } }
                @for p in parts { (p) }
            }
        }

        @if !nondeterministic.is_empty() {
            section.card.nondeterministic {
                h2 { "Not deterministic (" (nondeterministic.len()) " outputs)" }
                p.muted { "Actions of this invocation wrote outputs that differ from an earlier run of the same action, or an earlier result of this invocation was replaced by a differing one. "
                    a href={ "/nondeterminism?invocation=" (segment(&inv.invocation_id)) } { "All of them" } }
                (super::nondeterminism::table(&nondeterministic))
            }
        }

        (super::scorecard::section(scorecard.as_ref()))
        (super::misses::section(&misses))

        @if !remote_jobs.is_empty() {
            h2 { "Remote executions (" (remote_jobs.len()) ")" }
            @if let Some(c) = &cost { (cost_line(c)) }
            table.remote {
                thead { tr { th { "Stage" } th { "Action" } th { "Outcome" } th { "Worker" } th.num { "Run time" } th.num { "CPU" } th.num { "Peak memory" } } }
                tbody { @for j in &remote_jobs {
                    @let action = BlobRef { instance: j.instance.clone(), digest: j.action_digest };
                    @let (outcome, worker, usage) = job_outcome(j);
                    tr {
                        td { (badge(match j.stage { crate::execution::job::Stage::Queued => "QUEUED", crate::execution::job::Stage::Executing => "EXECUTING", crate::execution::job::Stage::Completed => "COMPLETED" })) }
                        td.mono { a href={ "/action/" (action.path()) } { (j.action_digest) } }
                        td { (outcome) }
                        td.mono { (worker) }
                        td.num { @if j.completed_at > j.started_at && j.started_at > 0 { (duration(j.completed_at - j.started_at)) } }
                        td.num { @if let Some(u) = &usage { (duration((crate::execution::usage::cpu_seconds(u) * 1000.0) as i64)) } }
                        td.num { @if let Some(u) = &usage { (size(crate::execution::usage::bytes(u.max_rss_bytes))) } }
                    }
                } }
            }
        }

        h2 { "Targets (" (targets.len()) ")" }
        table.targets {
            thead { tr { th { "Status" } th { "Target" } th { "Kind" } } }
            tbody {
                @for t in &targets {
                    @let s = shown(t);
                    tr class=(status_class(&s)) data-label=(t.label) {
                        td { (badge(&s)) }
                        td.mono { (t.label) }
                        td.muted { (t.kind) }
                    }
                }
            }
        }

        h2 { "Build output" }
        @if dropped {
            p.muted { "Earlier output is not shown. "
                a href={ "/invocation/" (segment(&inv.invocation_id)) "/log" } { "Whole output" } }
        }
        pre.log #progress { (PreEscaped(ansi::to_html(&progress_text))) }

        @if !inv.links.is_empty() {
            h2 { "Artifacts (" (inv.links.len()) ")" }
            table.artifacts {
                tbody {
                    @for l in &inv.links {
                        tr { td.mono {
                            @if let Some(b) = BlobRef::from_uri(&l.uri) {
                                a href=(b.link(&l.name)) download { (l.name) }
                                " " span.muted { (b.digest.size) " bytes" }
                            } @else { (l.name) " " span.muted { (l.uri) } }
                        } }
                    }
                }
            }
        }
        @if !inv.tool_logs.is_empty() {
            h2 { "Bazel's logs" }
            ul { @for l in &inv.tool_logs {
                li { @if let Some(b) = BlobRef::from_uri(&l.uri) { a href=(b.link(&l.name)) { (l.name) } } @else { (l.name) } }
            } }
        }
        @if !inv.options.is_empty() {
            h2 { "Options" }
            pre.mono.card { @for o in &inv.options { (o) "\n" } }
        }
    };
    let refresh = running.then_some(5);
    Ok(layout::page(&format!("{} {}", inv.status.as_str(), title), refresh, body).into_response())
}
