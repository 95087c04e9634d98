//! `/invocation/{id}/timing`: Bazel's JSON trace profile
//! (`command.profile.gz`, uploaded to the CAS with the build's logs) drawn
//! by kiln as an SVG timeline (one row per thread), with the critical path
//! and the slowest actions. The profile is read with a compressed and a
//! decompressed budget, and the drawing keeps a bounded number of boxes.

use std::collections::BTreeMap;
use std::io::Read;

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::blob::{self, BlobRef};
use super::layout::{duration, segment};
use super::{PageResult, UiState, auth, layout};
use crate::error::{Error, Result};
use crate::http::caller::HttpCaller;

/// Largest compressed profile read.
const MAX_PROFILE: u64 = 64 << 20;
/// Most decompressed JSON read (a CPU budget: events stream, so memory
/// follows the events kept, not this); a longer trace shows its start.
const MAX_JSON: u64 = 256 << 20;
/// Boxes drawn at most; shorter events go first when there are more.
const MAX_BOXES: usize = 20_000;
/// The drawing's width in pixels, and the label column.
const WIDTH: f64 = 1300.0;
const LABELS: f64 = 190.0;
const ROW: f64 = 16.0;

/// One trace event (Chrome's Trace Event Format); only what is drawn.
#[derive(Debug, Deserialize)]
pub(super) struct TraceEvent {
    #[serde(default)]
    name: String,
    #[serde(default)]
    cat: String,
    #[serde(default)]
    ph: String,
    /// Microseconds.
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    tid: i64,
    #[serde(default)]
    args: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A parsed profile: complete events and thread names.
#[derive(Debug, Default)]
pub(super) struct Profile {
    pub events: Vec<TraceEvent>,
    pub threads: BTreeMap<i64, String>,
    /// Events past `MAX_EVENTS` that were not kept.
    pub dropped: u64,
}

impl Profile {
    fn add(&mut self, e: TraceEvent) {
        match e.ph.as_str() {
            "M" if e.name == "thread_name" => {
                let name = e
                    .args
                    .as_ref()
                    .and_then(|a| a.get("name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string();
                self.threads.insert(e.tid, name);
            }
            "X" if self.events.len() < MAX_EVENTS => self.events.push(e),
            "X" => self.dropped += 1,
            _ => {}
        }
    }
}

/// Events kept at most (memory is proportional to these, not to the file).
const MAX_EVENTS: usize = 1_000_000;

/// Streams the trace's events into a [`Profile`], keeping only what is
/// drawn: the JSON is never held whole. The file is `{"traceEvents": [...]}`
/// or a bare array; a trace cut off mid-array (Bazel killed) keeps the
/// events before the cut.
struct Collect<'a>(&'a mut Profile);

impl<'de> serde::de::DeserializeSeed<'de> for Collect<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Collect<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON trace")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(e) = seq.next_element::<TraceEvent>()? {
            self.0.add(e);
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "traceEvents" {
                map.next_value_seed(Collect(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Parses a gzipped (or plain) JSON trace, reading at most `MAX_JSON`
/// bytes of JSON.
pub(super) fn parse(data: &[u8]) -> Result<Profile> {
    let reader: Box<dyn Read + '_> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut profile = Profile::default();
    let mut de =
        serde_json::Deserializer::from_reader(std::io::BufReader::new(reader.take(MAX_JSON)));
    let outcome = serde::de::DeserializeSeed::deserialize(Collect(&mut profile), &mut de);
    match outcome {
        Ok(()) => Ok(profile),
        // Cut off (or past the budget) after some events: show those.
        Err(e) if e.is_eof() && !profile.events.is_empty() => Ok(profile),
        Err(e) => Err(Error::InvalidArgument(format!(
            "the profile is not a JSON trace: {e}"
        ))),
    }
}

impl Profile {
    /// Threads with at least one complete event, in tid order: the rows.
    pub fn rows(&self) -> Vec<(i64, String)> {
        let mut tids: Vec<i64> = self.events.iter().map(|e| e.tid).collect();
        tids.sort_unstable();
        tids.dedup();
        tids.into_iter()
            .map(|t| {
                let name = self
                    .threads
                    .get(&t)
                    .cloned()
                    .unwrap_or_else(|| format!("thread {t}"));
                (t, name)
            })
            .collect()
    }
}

fn colour(cat: &str) -> &'static str {
    match cat {
        "action processing" => "#53b1fd",
        "critical path component" => "#f97066",
        "remote action execution" | "remote execution process wrapper" => "#ee46bc",
        "remote action cache check" | "Remote execution upload time" => "#2ed3b7",
        "package creation" | "Loading and analysis" => "#fdb022",
        "Fetching remote output" | "remote output download" => "#47cd89",
        _ => "#98a2b3",
    }
}

fn svg(profile: &Profile) -> Markup {
    let rows = profile.rows();
    let start = profile
        .events
        .iter()
        .map(|e| e.ts)
        .fold(f64::INFINITY, f64::min);
    let end = profile
        .events
        .iter()
        .map(|e| e.ts + e.dur)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = (end - start).max(1.0);
    let scale = (WIDTH - LABELS) / span;
    let row_of: BTreeMap<i64, usize> = rows.iter().enumerate().map(|(i, (t, _))| (*t, i)).collect();
    // The longest events, if there are more than can be drawn.
    let mut order: Vec<&TraceEvent> = profile.events.iter().collect();
    if order.len() > MAX_BOXES {
        order.sort_by(|a, b| b.dur.total_cmp(&a.dur));
        order.truncate(MAX_BOXES);
    }
    let height = rows.len() as f64 * ROW + 24.0;
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
            viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="Timeline" {
            @for (i, (tid, name)) in rows.iter().enumerate() {
                g.thread data-tid=(tid) {
                    text x="4" y=((i as f64) * ROW + 12.0) { (name) }
                    line x1=(LABELS) x2=(WIDTH) y1=((i as f64 + 1.0) * ROW) y2=((i as f64 + 1.0) * ROW) stroke="#f2f4f7";
                }
            }
            @for e in &order {
                @let y = row_of.get(&e.tid).copied().unwrap_or(0) as f64 * ROW + 2.0;
                @let x = LABELS + (e.ts - start) * scale;
                @let w = (e.dur * scale).max(0.5);
                rect.ev x=(format!("{x:.1}")) y=(y) width=(format!("{w:.1}")) height=(ROW - 4.0) fill=(colour(&e.cat)) {
                    title { (e.name) " (" (e.cat) ", " (duration((e.dur / 1000.0) as i64)) ")" }
                }
            }
            @for s in 0..=10 {
                @let x = LABELS + (WIDTH - LABELS) * f64::from(s) / 10.0;
                text x=(format!("{:.0}", x.min(WIDTH - 40.0))) y=(height - 6.0) { (duration((span / 1000.0 * f64::from(s) / 10.0) as i64)) }
            }
        }
    }
}

fn events_table(events: &[&TraceEvent], class: &str) -> Markup {
    html! {
        table class=(class) {
            thead { tr { th { "What" } th { "Category" } th.num { "Duration" } } }
            tbody { @for e in events {
                tr { td.mono { (e.name) } td.muted { (e.cat) } td.num { (duration((e.dur / 1000.0) as i64)) } }
            } }
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
    let inv = super::invocation::find(&state, &id).await?;
    let back = format!("/invocation/{}", segment(&id));
    let Some(blob) = inv
        .tool_logs
        .iter()
        .filter(|l| l.name.ends_with("profile.gz") || l.name.ends_with(".profile"))
        .find_map(|l| BlobRef::from_uri(&l.uri))
    else {
        return Err(Error::NotFound(format!(
            "invocation {id} uploaded no profile (Bazel writes one with --generate_json_trace_profile)"
        ))
        .into());
    };
    let data = blob::read(&state, &blob, MAX_PROFILE).await?;
    let profile = tokio::task::spawn_blocking(move || parse(&data))
        .await
        .map_err(|e| Error::internal_from("parsing a profile", e))??;
    let mut critical: Vec<&TraceEvent> = profile
        .events
        .iter()
        .filter(|e| e.cat == "critical path component")
        .collect();
    critical.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    let mut slowest: Vec<&TraceEvent> = profile
        .events
        .iter()
        .filter(|e| e.cat == "action processing")
        .collect();
    slowest.sort_by(|a, b| b.dur.total_cmp(&a.dur));
    slowest.truncate(25);
    let critical_total: f64 = critical.iter().map(|e| e.dur).sum();
    let body = html! {
        h1 { "Timing of " a href=(back) { (inv.command) " " (inv.patterns.join(" ")) } }
        p.muted { (profile.events.len()) " events on " (profile.rows().len()) " threads. Hover a box for its name." }
        div style="overflow-x:auto" { (svg(&profile)) }
        h2 { "Critical path" }
        @if critical.is_empty() {
            p.muted { "The profile has no critical path events." }
        } @else {
            p { (critical.len()) " steps, " (duration((critical_total / 1000.0) as i64)) " in all." }
            (events_table(&critical, "critical"))
        }
        h2 { "Slowest actions" }
        @if slowest.is_empty() { p.muted { "No action events." } } @else { (events_table(&slowest, "slowest")) }
    };
    Ok(layout::page("Timing", None, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"otherData":{},"traceEvents":[
      {"name":"thread_name","ph":"M","pid":1,"tid":1,"args":{"name":"main"}},
      {"name":"thread_name","ph":"M","pid":1,"tid":7,"args":{"name":"skyframe-evaluator 0"}},
      {"cat":"action processing","name":"Compiling a.c","ph":"X","ts":100,"dur":5000,"pid":1,"tid":7},
      {"cat":"build phase marker","name":"Launch Blaze","ph":"i","ts":0,"pid":1,"tid":1},
      {"cat":"critical path component","name":"action 'Compiling a.c'","ph":"X","ts":100,"dur":5000,"pid":1,"tid":9},
      {"cat":"general information","name":"x","ph":"X","ts":0,"dur":9000,"pid":1,"tid":1}
    ]}"#;

    #[test]
    fn rows_are_threads_with_complete_events() {
        let p = parse(TRACE.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 3);
        let rows = p.rows();
        assert_eq!(
            rows,
            vec![
                (1, "main".into()),
                (7, "skyframe-evaluator 0".into()),
                (9, "thread 9".into())
            ]
        );
        let svg = svg(&p).into_string();
        assert_eq!(svg.matches("class=\"thread\"").count(), 3);
    }

    #[test]
    fn gzip_and_a_cut_off_trace_parse() {
        use std::io::Write;
        let cut = &TRACE[..TRACE.rfind("{\"cat\":\"general").unwrap()];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(cut.as_bytes()).unwrap();
        let p = parse(&gz.finish().unwrap()).unwrap();
        assert_eq!(p.events.len(), 2);
    }

    #[test]
    fn garbage_is_invalid_argument() {
        assert!(matches!(parse(b"not json"), Err(Error::InvalidArgument(_))));
    }
}
