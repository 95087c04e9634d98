//! The insights' background tasks: the miss recorder, which takes the
//! buffer of fresh results every 200 ms and stores what it recorded, and
//! the scorecards' store round every second. Both end when the insights
//! (their buffer and cards) are gone.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{misses, scorecard};
use crate::bes::store::EventStore;

/// Fresh results waiting to be recorded, at most.
const BUFFERED_MISSES: usize = 16384;

/// Buffered results that wake the recorder before its round is due.
const DRAIN_AT: usize = 1024;

/// Fresh results waiting for the recorder: a vector under a lock rather
/// than a channel, so a write costs a push, not a wake-up of the task.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    items: std::sync::Mutex<Vec<misses::Written>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Buffer {
    /// Leaves `w` for the recorder; false when the buffer is full.
    pub(super) fn push(&self, w: misses::Written) -> bool {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= BUFFERED_MISSES {
            return false;
        }
        items.push(w);
        if items.len() == 1 || items.len() == DRAIN_AT {
            self.wake.notify_one();
        }
        true
    }

    /// What is waiting, in exchange for `spare` (emptied): the two vectors
    /// take turns, so neither grows again every round.
    fn take(&self, mut spare: Vec<misses::Written>) -> Vec<misses::Written> {
        spare.clear();
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *items, &mut spare);
        spare
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // The recorder wakes, finds the buffer gone and ends.
        self.wake.notify_one();
    }
}

/// Counts `n` misses of `instance` of `kind` (a round's at once: the
/// family's label lookup copies and hashes its labels).
pub(super) fn count(
    missed: &Family<Vec<(&'static str, String)>, Counter>,
    instance: &str,
    kind: &str,
    n: u64,
) {
    missed
        .get_or_create(&vec![
            ("instance", instance.to_string()),
            ("kind", kind.to_string()),
        ])
        .inc_by(n);
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

/// How long fresh results gather before they are recorded (with every
/// other result written meanwhile).
const RECORD_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The background recorder: once results arrive, lets them gather for
/// [`RECORD_EVERY`] (or until [`DRAIN_AT`] wait), records and stores them
/// in one transaction, until the insights (the buffer) are gone.
pub(super) async fn record_misses(
    events: Arc<dyn EventStore>,
    buffer: std::sync::Weak<Buffer>,
    running: prometheus_client::metrics::gauge::Gauge,
    missed: Family<Vec<(&'static str, String)>, Counter>,
) {
    let Some(wake) = buffer.upgrade().map(|b| b.wake.clone()) else {
        return;
    };
    let mut recorder = misses::Recorder::new();
    let mut spare = Vec::new();
    loop {
        wake.notified().await;
        tokio::select! {
            _ = tokio::time::sleep(RECORD_EVERY) => {}
            _ = wake.notified() => {}
        }
        let Some(mut batch) = buffer.upgrade().map(|b| b.take(std::mem::take(&mut spare))) else {
            return;
        };
        if batch.is_empty() {
            spare = batch;
            continue;
        }
        for (instance, kind, n) in recorder.record(events.as_ref(), batch.drain(..)).await {
            count(&missed, &instance, kind.name(), n);
        }
        spare = batch;
        running.dec_by(recorder.store(events.as_ref()).await);
    }
}
