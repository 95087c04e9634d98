//! `/`: invocations, newest first, paginated, filtered by status, user,
//! host, command, pattern, repository, branch, a `--build_metadata` pair
//! and date (a plain GET form, so a filtered list is a link one can share).

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;

use super::layout::{badge, duration, parse_date, percent, segment, when};
use super::{PageResult, UiState, auth, layout};
use crate::bes::store::{InvocationFilter, SourceQuery};
use crate::bes::summary::Status;
use crate::error::Error;
use crate::http::caller::HttpCaller;

/// Rows per page.
const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    /// `YYYY-MM-DD`, inclusive.
    from: Option<String>,
    /// `YYYY-MM-DD`, inclusive.
    to: Option<String>,
    page: Option<i64>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn date(v: &Option<String>, name: &str) -> Result<Option<i64>, Error> {
    match given(v) {
        None => Ok(None),
        Some(text) => parse_date(&text).map(Some).ok_or_else(|| {
            Error::InvalidArgument(format!("{name}: expected YYYY-MM-DD, got {text:?}"))
        }),
    }
}

impl ListQuery {
    /// The query string for another page of the same list.
    fn with_page(&self, source: &SourceQuery, page: i64) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = given(v) {
                q.append_pair(k, &v);
            }
        }
        for (k, v) in source.pairs() {
            q.append_pair(k, v);
        }
        q.append_pair("page", &page.to_string());
        q.finish()
    }
}

pub(super) async fn page(
    State(state): State<UiState>,
    caller: HttpCaller,
    uri: Uri,
    Query(q): Query<ListQuery>,
    Query(source): Query<SourceQuery>,
) -> PageResult {
    auth::check_events(&state, &caller, &uri)?;
    let page = q.page.unwrap_or(1).clamp(1, 10_000);
    let status = given(&q.status);
    if let Some(s) = &status
        && !Status::ALL.iter().any(|known| known.as_str() == s)
    {
        let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        return Err(Error::InvalidArgument(format!(
            "status: expected one of {names:?}, got {s:?}"
        ))
        .into());
    }
    let filter = source.narrow(InvocationFilter {
        // One more than a page: whether there is a next one.
        limit: PAGE + 1,
        offset: (page - 1) * PAGE,
        status: status.clone(),
        since_ms: date(&q.from, "from")?,
        until_ms: date(&q.to, "to")?.map(|d| d + 86_400_000),
        ..Default::default()
    })?;
    let mut rows = state.events.invocation_rows(&filter).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let any_running = rows.iter().any(|r| r.status == Status::InProgress);
    let field = |v: &Option<String>| given(v).unwrap_or_default();
    let body = html! {
        h1 { "Invocations" }
        form.filters method="get" action="/" {
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label { "User" input name="user" value=(field(&source.user)); }
            label { "Host" input name="host" value=(field(&source.host)); }
            label { "Command" input name="command" value=(field(&source.command)) placeholder="build, test…"; }
            label { "Pattern" input name="pattern" value=(field(&source.pattern)) placeholder="//app/..."; }
            label { "Repository" input name="repository" value=(field(&source.repository)); }
            label { "Branch" input name="branch" value=(field(&source.branch)); }
            label { "Build metadata" input name="metadata" value=(field(&source.metadata)) placeholder="NAME=VALUE"; }
            label { "From" input type="date" name="from" value=(field(&q.from)); }
            label { "To" input type="date" name="to" value=(field(&q.to)); }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
        @if rows.is_empty() {
            p.muted { "No invocations match. Point Bazel at this server with "
                code { "--bes_backend=grpc://HOST:PORT" } " to see its builds here." }
        } @else {
            table.invocations {
                thead { tr {
                    th { "Status" } th { "Invocation" } th { "Command" } th { "User" }
                    th { "Host" } th { "Started (UTC)" } th.num { "Duration" }
                    th.num { "Cache hits" } th.num { "Targets" }
                } }
                tbody {
                    @for r in &rows {
                        tr class=(layout::status_class(r.status)) {
                            td { (badge(r.status))
                                @if !r.exit_code_name.is_empty() && r.exit_code_name != "SUCCESS" {
                                    " " span.muted { (r.exit_code_name) }
                                } }
                            td.mono { a href={ "/invocation/" (segment(&r.invocation_id)) } { (r.invocation_id) } }
                            td { (r.command) " " span.mono { (r.patterns) }
                                @if !r.branch.is_empty() {
                                    " " a.muted.branch title=(r.repository) href={ "/?branch=" (segment(&r.branch)) } { "on " (r.branch) }
                                } }
                            td { (r.user) }
                            td { (r.host) }
                            td { (when(r.started_at)) }
                            td.num { (r.duration_ms.map(duration).unwrap_or_default()) }
                            td.num title={ (r.cache_hits) " of " (r.actions_executed) " actions" } {
                                (percent(r.cache_hits, r.actions_executed)) }
                            td.num { (r.targets)
                                @if r.failed > 0 { " " span.error { "(" (r.failed) " failed)" } } }
                        }
                    }
                }
            }
        }
        div.pager {
            @if page > 1 { a rel="prev" href={ "/?" (q.with_page(&source, page - 1)) } { "← Newer" } }
            span.muted { "Page " (page) }
            @if more { a rel="next" href={ "/?" (q.with_page(&source, page + 1)) } { "Older →" } }
        }
    };
    // A list with running builds refreshes itself.
    let refresh = (any_running && page == 1).then_some(10);
    Ok(layout::page("Invocations", refresh, body).into_response())
}
