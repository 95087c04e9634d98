//! Bazel's own output (the stderr and stdout of Progress events), read from
//! the event store: all of it for `/invocation/{id}/log`, or its end for
//! the invocation page, read newest first so a long build's page reads only
//! what it shows.

use prost::Message;

use super::UiState;
use crate::bes::store::{EventFilter, StoredEvent};
use crate::error::Result;
use crate::proto::bep;

/// Bytes of the build's output the invocation page shows.
const TAIL: usize = 256 << 10;
/// Events read per query for the whole output.
const PAGE: i64 = 2000;
/// Events read per query for the end (a few lines each).
const TAIL_PAGE: i64 = 200;

/// The text of the Progress events among `events`, in their order.
fn texts(events: &[StoredEvent]) -> impl Iterator<Item = String> + '_ {
    events.iter().filter_map(|e| {
        let event = crate::proto::bes_v1::BuildEvent::decode(&e.payload[..]).ok()?;
        match crate::bes::summary::classify(&event).2?.payload {
            Some(bep::build_event::Payload::Progress(p)) => Some(p.stderr + &p.stdout),
            _ => None,
        }
    })
}

fn filter(limit: i64) -> EventFilter {
    EventFilter {
        kinds: vec!["progress".into()],
        limit,
        ..Default::default()
    }
}

/// All of the output, in order.
pub(super) async fn all(state: &UiState, id: &str) -> Result<String> {
    let mut text = String::new();
    let mut f = filter(PAGE);
    loop {
        let events = state.events.events(id, &f).await?;
        text.extend(texts(&events));
        match events.last() {
            Some(last) if events.len() as i64 == PAGE => f.after = last.sequence,
            _ => return Ok(text),
        }
    }
}

/// About the last `TAIL` bytes of the output, and whether earlier output
/// was left out.
pub(super) async fn tail(state: &UiState, id: &str) -> Result<(String, bool)> {
    let mut chunks: Vec<String> = Vec::new();
    let mut kept = 0usize;
    let mut f = EventFilter {
        newest_first: true,
        ..filter(TAIL_PAGE)
    };
    let mut more = true;
    while more && kept < TAIL {
        let events = state.events.events(id, &f).await?;
        // Older pages end below the oldest event read (`to` 0 is no bound).
        more = match events.last() {
            Some(last) if events.len() as i64 == TAIL_PAGE && last.sequence > 1 => {
                f.to = last.sequence - 1;
                true
            }
            _ => false,
        };
        for text in texts(&events) {
            kept += text.len();
            chunks.push(text);
        }
    }
    chunks.reverse();
    let mut text = chunks.concat();
    let mut cut = more;
    if text.len() > TAIL {
        let mut from = text.len() - TAIL;
        while !text.is_char_boundary(from) {
            from += 1;
        }
        text.drain(..from);
        cut = true;
    }
    Ok((text, cut))
}
