//! The sections of an invocation's page, rendered from what the handler
//! gathered (`invocation.rs`): each shows one idea and decides nothing the
//! domain types do not already say.

use maud::{Markup, PreEscaped, html};

use super::ansi;
use super::blob::BlobRef;
use super::invocation::{Gathered, rank};
use super::layout::{badge, duration, percent, segment, size, status_class, when};
use crate::bes::summary::{Invocation, Test};
use crate::execution::usage::Totals;

/// `build //app/...`: the command and its patterns.
pub(super) fn title(inv: &Invocation) -> String {
    format!("{} {}", inv.command, inv.patterns.join(" "))
}

/// The whole page body, section by section.
pub(super) fn render(g: &Gathered) -> Markup {
    html! {
        (header(g))
        (tests(&g.inv))
        (failure_logs(g))
        (nondeterminism(g))
        (super::scorecard::section(g.scorecard.as_ref()))
        (super::misses::section(&g.misses))
        (remote(g))
        (targets(&g.inv))
        (output(&g.inv, &g.progress))
        (files(&g.inv))
    }
}

fn header(g: &Gathered) -> Markup {
    let inv = &g.inv;
    let running = !inv.is_finished();
    let profile = inv
        .tool_logs
        .iter()
        .find(|l| l.name.ends_with(".profile.gz") || l.name == "command.profile.gz");
    let remote: i64 = inv
        .runners
        .iter()
        .filter(|r| r.name == "remote")
        .map(|r| r.count)
        .sum();
    html! {
        h1 { (badge(inv.status)) " " (title(inv))
            @if !g.nondeterministic.is_empty() { " " span.badge.flaky.nondeterministic { "NONDETERMINISTIC" } } }
        section.card {
            dl.facts {
                dt { "Invocation" } dd.mono { (inv.invocation_id) }
                dt { "Exit" } dd { @if let Some(c) = inv.exit_code { (c) " " (inv.exit_code_name) } @else { span.muted { "running" } } }
                dt { "Command line" } dd.mono { "bazel " (inv.command) " " (inv.patterns.join(" ")) }
                dt { "User" } dd { (inv.user) }
                dt { "Host" } dd { (inv.host) }
                @if !inv.repository.is_empty() { dt { "Repository" } dd.mono #repository { (inv.repository) } }
                @if !inv.branch.is_empty() || !inv.commit.is_empty() {
                    dt { "Branch" } dd.mono #branch { (inv.branch) @if !inv.commit.is_empty() { " @ " (inv.commit) } }
                }
                @if !inv.metadata.is_empty() {
                    dt { "Build metadata" } dd.mono #metadata { @for (k, v) in &inv.metadata {
                        a href={ "/?metadata=" (segment(&format!("{k}={v}"))) } { (k) "=" (v) } " "
                    } }
                }
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
    }
}

fn test_row(t: &Test) -> Markup {
    let shown = t.shown();
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
                            span class={ "badge " (status_class(a.status)) } { "#" (a.attempt) }
                        } " "
                    }
                }
            }
        }
    }
}

fn tests(inv: &Invocation) -> Markup {
    let mut tests: Vec<&Test> = inv.tests.iter().collect();
    tests.sort_by_key(|t| rank(t.shown().verdict()));
    html! {
        @if !tests.is_empty() {
            h2 { "Tests (" (tests.len()) ")" }
            table.tests {
                thead { tr { th { "Status" } th { "Test" } th.num { "Attempts" } th.num { "Shards" } th.num { "Duration" } th { "Cached" } th { "Logs" } } }
                tbody { @for t in &tests { (test_row(t)) } }
            }
        }
    }
}

fn failure_logs(g: &Gathered) -> Markup {
    html! {
        @for (label, log) in &g.test_logs {
            section.card.failure data-label=(label) {
                h2 { "test.log of " span.mono { (label) } }
                (log)
            }
        }
        @for (a, parts) in &g.action_logs {
            section.card.failure {
                h2 { "Failed action " (a.mnemonic) " of " span.mono { (a.label) } " (exit " (a.exit_code) ")" }
                @if !a.argv.is_empty() { details { summary { "Command line" } pre.mono { (a.argv.join(" ")) } } }
                @for p in parts { (p) }
            }
        }
    }
}

fn nondeterminism(g: &Gathered) -> Markup {
    let rows = &g.nondeterministic;
    html! {
        @if !rows.is_empty() {
            section.card.nondeterministic {
                h2 { "Not deterministic (" (rows.len()) " outputs)" }
                p.muted { "Actions of this invocation wrote outputs that differ from an earlier run of the same action, or an earlier result of this invocation was replaced by a differing one. "
                    a href={ "/nondeterminism?invocation=" (segment(&g.inv.invocation_id)) } { "All of them" } }
                (super::nondeterminism::table(rows))
            }
        }
    }
}

/// What the invocation's remote executions cost, in one line.
fn cost_line(c: &Totals) -> Markup {
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

fn remote(g: &Gathered) -> Markup {
    html! {
        @if !g.remote_jobs.is_empty() {
            h2 { "Remote executions (" (g.remote_jobs.len()) ")" }
            @if let Some(c) = &g.cost { (cost_line(c)) }
            table.remote {
                thead { tr { th { "Stage" } th { "Action" } th { "Outcome" } th { "Worker" } th.num { "Run time" } th.num { "CPU" } th.num { "Peak memory" } } }
                tbody { @for j in &g.remote_jobs {
                    @let action = BlobRef { instance: j.instance.clone(), digest: j.action_digest };
                    @let shown = j.shown();
                    tr {
                        td { (badge(j.stage)) }
                        td.mono { a href={ "/action/" (action.path()) } { (j.action_digest) } }
                        td { (shown.outcome) }
                        td.mono { (shown.worker) }
                        td.num { @if let Some(ms) = shown.run_ms { (duration(ms)) } }
                        td.num { @if let Some(ms) = shown.cpu_ms() { (duration(ms)) } }
                        td.num { @if let Some(b) = shown.peak_rss() { (size(b)) } }
                    }
                } }
            }
        }
    }
}

fn targets(inv: &Invocation) -> Markup {
    let mut rows: Vec<_> = inv
        .targets
        .iter()
        .map(|t| (t, inv.target_status(t)))
        .collect();
    rows.sort_by_key(|(_, s)| rank(s.verdict()));
    html! {
        h2 { "Targets (" (rows.len()) ")" }
        table.targets {
            thead { tr { th { "Status" } th { "Target" } th { "Kind" } } }
            tbody {
                @for (t, s) in &rows {
                    tr class=(status_class(*s)) data-label=(t.label) {
                        td { (badge(*s)) }
                        td.mono { (t.label) }
                        td.muted { (t.kind) }
                    }
                }
            }
        }
    }
}

fn output(inv: &Invocation, (text, dropped): &(String, bool)) -> Markup {
    html! {
        h2 { "Build output" }
        @if *dropped {
            p.muted { "Earlier output is not shown. "
                a href={ "/invocation/" (segment(&inv.invocation_id)) "/log" } { "Whole output" } }
        }
        pre.log #progress { (PreEscaped(ansi::to_html(text))) }
    }
}

/// Artifacts, Bazel's own logs and the options.
fn files(inv: &Invocation) -> Markup {
    html! {
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
    }
}
