//! The insights' background tasks: the miss comparison, which takes the
//! queue of fresh results in batches and stores what it explained every
//! 200 ms, and the scorecards' store round every second. Both end when the
//! insights (their senders and cards) are gone.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{misses, scorecard};
use crate::bes::store::EventStore;

/// Fresh results waiting for the miss comparison, at most.
pub(super) const QUEUED_MISSES: usize = 4096;

/// Results the comparison takes at once (one query and one transaction).
const MISS_BATCH: usize = 256;

pub(super) fn count(
    missed: &Family<Vec<(&'static str, String)>, Counter>,
    instance: &str,
    kind: &str,
) {
    missed
        .get_or_create(&vec![
            ("instance", instance.to_string()),
            ("kind", kind.to_string()),
        ])
        .inc();
}

/// How often changed scorecards are stored.
const SCORECARD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Stores the changed scorecards every [`SCORECARD_EVERY`] until the
/// insights are gone.
pub(super) async fn store_scorecards(
    events: Arc<dyn EventStore>,
    cards: std::sync::Weak<scorecard::Scorecards>,
) {
    let mut tick = tokio::time::interval(SCORECARD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rows) = cards.upgrade().map(|c| c.take_dirty()) else {
            return;
        };
        if rows.is_empty() {
            continue;
        }
        if let Err(e) = events.record_scorecards(&rows).await {
            tracing::warn!(error = %e, "could not store cache scorecards; retrying");
            if let Some(c) = cards.upgrade() {
                c.unstored(&rows);
            }
        }
    }
}

/// How long explained misses wait before they are stored (with every
/// other result explained meanwhile).
const STORE_MISSES_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The background comparison: takes the queue in batches, and stores what
/// it explained every [`STORE_MISSES_EVERY`], until the insights (every
/// sender) are gone.
pub(super) async fn explain_misses(
    events: Arc<dyn EventStore>,
    mut queue: tokio::sync::mpsc::Receiver<misses::Written>,
    running: prometheus_client::metrics::gauge::Gauge,
    missed: Family<Vec<(&'static str, String)>, Counter>,
) {
    let mut recorder = misses::Recorder::new();
    let mut batch = Vec::with_capacity(MISS_BATCH);
    let mut stored = tokio::time::Instant::now();
    loop {
        let wait = if recorder.pending() > 0 {
            STORE_MISSES_EVERY.saturating_sub(stored.elapsed())
        } else {
            std::time::Duration::from_secs(3600)
        };
        let open = match tokio::time::timeout(wait, queue.recv_many(&mut batch, MISS_BATCH)).await {
            Ok(0) => false,
            Ok(_) => {
                let taken = std::mem::take(&mut batch);
                let n = taken.len();
                match recorder.explain(events.as_ref(), taken).await {
                    Ok(kinds) => {
                        for (instance, kind) in kinds {
                            count(&missed, &instance, &kind);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, results = n, "could not explain cache misses");
                    }
                }
                true
            }
            Err(_) => true,
        };
        if recorder.pending() > 0 && (!open || stored.elapsed() >= STORE_MISSES_EVERY) {
            running.dec_by(recorder.store(events.as_ref()).await);
            stored = tokio::time::Instant::now();
        }
        if !open {
            return;
        }
    }
}
