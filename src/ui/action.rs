//! `/action/{instance}/{hash}/{size}`: one action as the CAS and action
//! cache hold it (the Action, its Command's argv, environment and
//! platform, the input tree, and its result with stdout/stderr inline and
//! the worker's timings), and `/tree/{instance}/{hash}/{size}`: one
//! Directory of an input or output tree, browsable, files downloadable.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, PreEscaped, html};
use prost::Message;

use super::blob::{self, BlobRef};
use super::layout::{duration, segment};
use super::{PageResult, UiState, ansi, auth, layout};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::http::caller::HttpCaller;
use crate::proto::reapi::{Action, ActionResult, Command, Directory, ExecutedActionMetadata};

/// Bytes of stdout or stderr shown inline.
const INLINE_OUTPUT: u64 = 64 << 10;

fn child(instance: &str, d: &Option<crate::proto::reapi::Digest>) -> Option<BlobRef> {
    let d = d.as_ref()?;
    Some(BlobRef {
        instance: instance.to_string(),
        digest: Digest::parse(crate::digest::DigestFunction::Sha256, &d.hash, d.size_bytes).ok()?,
    })
}

async fn decode<M: Message + Default>(state: &UiState, blob: &BlobRef, what: &str) -> Result<M> {
    let max = state
        .instances
        .get(&blob.instance)?
        .settings
        .max_parsed_blob;
    let bytes = blob::read(state, blob, max).await?;
    M::decode(bytes)
        .map_err(|e| Error::InvalidArgument(format!("{what} {} does not decode: {e}", blob.digest)))
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref()
        .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
}

fn timings(m: &ExecutedActionMetadata) -> Markup {
    let step =
        |name: &str, a: &Option<prost_types::Timestamp>, b: &Option<prost_types::Timestamp>| {
            let d = match (ms(a), ms(b)) {
                (Some(a), Some(b)) if b >= a && a > 0 => duration(b - a),
                _ => String::new(),
            };
            html! { tr { td { (name) } td.num { (d) } } }
        };
    html! {
        table.timings {
            tbody {
                tr { td { "Worker" } td.mono { (m.worker) } }
                (step("Queued", &m.queued_timestamp, &m.worker_start_timestamp))
                (step("Fetching inputs", &m.input_fetch_start_timestamp, &m.input_fetch_completed_timestamp))
                (step("Executing", &m.execution_start_timestamp, &m.execution_completed_timestamp))
                (step("Uploading outputs", &m.output_upload_start_timestamp, &m.output_upload_completed_timestamp))
                (step("On the worker", &m.worker_start_timestamp, &m.worker_completed_timestamp))
            }
        }
    }
}

async fn output(
    state: &UiState,
    instance: &str,
    name: &str,
    raw: &[u8],
    digest: &Option<crate::proto::reapi::Digest>,
) -> Markup {
    if !raw.is_empty() {
        return html! { h3 { (name) } pre.log { (PreEscaped(ansi::to_html(&String::from_utf8_lossy(raw)))) } };
    }
    let Some(b) = child(instance, digest).filter(|b| b.digest.size > 0) else {
        return html! {};
    };
    match blob::tail(state, &b, INLINE_OUTPUT).await {
        Ok((text, skipped)) => html! {
            h3 { (name) }
            @if skipped > 0 { p.muted { "The first " (skipped) " bytes are not shown. " a href=(b.link(name)) { "All of it" } } }
            pre.log { (PreEscaped(ansi::to_html(&text))) }
        },
        Err(e) => html! { h3 { (name) } p.error { (e.to_string()) } },
    }
}

async fn result_of(
    state: &UiState,
    blob: &BlobRef,
) -> Result<Option<(ActionResult, &'static str)>> {
    let instance = state.instances.get(&blob.instance)?;
    if let Ok(body) = instance
        .action_cache
        .get(&blob.digest, crate::store::Range::FULL)
        .await
    {
        let bytes = body.collect_max(instance.settings.max_parsed_blob).await?;
        if let Ok(r) = ActionResult::decode(bytes) {
            return Ok(Some((r, "from the action cache")));
        }
    }
    // Not cached (failed, or do_not_cache): the newest job's response.
    if let Some(s) = &state.scheduler {
        let jobs = s
            .list(&crate::execution::job::JobFilter {
                instance: Some(blob.instance.clone()),
                action_hash: Some(blob.digest.hash_hex()),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if let Some(r) = jobs.first().and_then(|j| j.result()) {
            return Ok(Some((r, "from its last execution")));
        }
    }
    Ok(None)
}

pub(super) async fn page(
    State(state): State<UiState>,
    Path(path): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    let blob = BlobRef::parse(&path)?;
    auth::check(&caller, &uri, &blob.instance)?;
    let action: Action = decode(&state, &blob, "Action").await?;
    let command_ref = child(&blob.instance, &action.command_digest);
    let command: Option<Command> = match &command_ref {
        Some(c) => Some(decode(&state, c, "Command").await?),
        None => None,
    };
    let input = child(&blob.instance, &action.input_root_digest);
    let result = result_of(&state, &blob).await?;
    let mut outputs = Vec::new();
    if let Some((r, _)) = &result {
        outputs.push(
            output(
                &state,
                &blob.instance,
                "stdout",
                &r.stdout_raw,
                &r.stdout_digest,
            )
            .await,
        );
        outputs.push(
            output(
                &state,
                &blob.instance,
                "stderr",
                &r.stderr_raw,
                &r.stderr_digest,
            )
            .await,
        );
    }
    let body = html! {
        h1 { "Action " span.mono { (blob.digest) } }
        @if let Some(c) = &command {
            section.card {
                h2 { "Command" }
                pre.mono.argv { (c.arguments.join(" ")) }
                dl.facts {
                    @if !c.working_directory.is_empty() { dt { "Working directory" } dd.mono { (c.working_directory) } }
                    dt { "Outputs" } dd.mono { (c.output_paths.join(" ")) (c.output_files.join(" ")) " " (c.output_directories.join(" ")) }
                    @if let Some(p) = &c.platform { dt { "Platform" } dd.mono { @for p in &p.properties { (p.name) "=" (p.value) " " } } }
                    @if let Some(p) = &action.platform { @if !p.properties.is_empty() { dt { "Action platform" } dd.mono { @for p in &p.properties { (p.name) "=" (p.value) " " } } } }
                    @if let Some(t) = &action.timeout { dt { "Timeout" } dd { (t.seconds) " s" } }
                    dt { "Cacheable" } dd { (if action.do_not_cache { "no" } else { "yes" }) }
                }
                @if !c.environment_variables.is_empty() {
                    h3 { "Environment" }
                    table.env { tbody { @for v in &c.environment_variables { tr { td.mono { (v.name) } td.mono { (v.value) } } } } }
                }
            }
        }
        @if let Some(i) = &input {
            p { "Input tree: " a href={ "/tree/" (i.path()) } { (i.digest) } }
        }
        section.card {
            h2 { "Result" }
            @match &result {
                None => { p.muted { "No result is stored for this action." } }
                Some((r, source)) => {
                    p { "Exit code " strong { (r.exit_code) } " " span.muted { "(" (source) ")" } }
                    @if let Some(m) = &r.execution_metadata { (timings(m)) }
                    @if !r.output_files.is_empty() {
                        h3 { "Output files" }
                        ul { @for f in &r.output_files {
                            li.mono { @if let Some(b) = child(&blob.instance, &f.digest) { a href=(b.link(&f.path)) { (f.path) } " " span.muted { (b.digest.size) " bytes" } } @else { (f.path) } }
                        } }
                    }
                    @if !r.output_directories.is_empty() {
                        h3 { "Output directories" }
                        ul { @for d in &r.output_directories {
                            li.mono { (d.path) " "
                                @if let Some(b) = child(&blob.instance, &d.tree_digest) { a href=(b.link("tree.pb")) { "Tree" } " " }
                                @if let Some(b) = child(&blob.instance, &d.root_directory_digest) { a href=(b.link("directory.pb")) { "Root directory" } }
                            }
                        } }
                    }
                    @for o in &outputs { (o) }
                }
            }
        }
    };
    Ok(layout::page("Action", None, body).into_response())
}

pub(super) async fn tree(
    State(state): State<UiState>,
    Path(path): Path<String>,
    caller: HttpCaller,
    uri: Uri,
) -> PageResult {
    let blob = BlobRef::parse(&path)?;
    auth::check(&caller, &uri, &blob.instance)?;
    let dir: Directory = decode(&state, &blob, "Directory").await?;
    let body = html! {
        h1 { "Directory " span.mono { (blob.digest) } }
        table.tree {
            thead { tr { th { "Name" } th.num { "Size" } th { "" } } }
            tbody {
                @for d in &dir.directories {
                    tr { td.mono { @if let Some(b) = child(&blob.instance, &d.digest) { a href={ "/tree/" (b.path()) } { (d.name) "/" } } @else { (d.name) "/" } } td {} td {} }
                }
                @for f in &dir.files {
                    tr { td.mono { @if let Some(b) = child(&blob.instance, &f.digest) { a href=(b.link(&f.name)) { (f.name) } } @else { (f.name) } }
                        td.num { (f.digest.as_ref().map(|d| d.size_bytes).unwrap_or(0)) }
                        td.muted { @if f.is_executable { "executable" } } }
                }
                @for s in &dir.symlinks {
                    tr { td.mono { (s.name) " → " (s.target) } td {} td.muted { "symlink" } }
                }
            }
        }
        p.muted { "Links to files download them; " a href=(format!("/blob/{}/{}", blob.path(), segment("directory.pb"))) { "this Directory proto" } "." }
    };
    Ok(layout::page("Directory", None, body).into_response())
}
