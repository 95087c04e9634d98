//! Other pods' changes, heard from the store's news (PostgreSQL's
//! LISTEN/NOTIFY, see `execution/news.rs`): watchers of a changed job and
//! idle workers wake at once; polling stays as the fallback, slower while
//! news flows.

use std::time::Duration;

use tokio::sync::broadcast;

use super::Scheduler;
use crate::execution::news::JobNews;

/// Hears the store's news for as long as the scheduler lives.
pub(super) async fn hear(
    scheduler: std::sync::Weak<Scheduler>,
    mut news: broadcast::Receiver<JobNews>,
) {
    loop {
        let heard = match news.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => JobNews::Missed,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(scheduler) = scheduler.upgrade() else {
            return;
        };
        scheduler.heard(heard).await;
    }
}

impl Scheduler {
    /// How long to wait before looking for other pods' changes.
    pub(super) fn poll_every(&self) -> Duration {
        if self.store.hearing() {
            self.settings.notified_poll_interval
        } else {
            self.settings.poll_interval
        }
    }

    /// Acts on news of a change (possibly this pod's own): wakes idle
    /// workers for queued work, and this pod's watchers of the job if
    /// what they know is older.
    async fn heard(&self, news: JobNews) {
        let stale: Vec<String> = {
            let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            match &news {
                JobNews::Changed { id, version, .. } => w
                    .get(id)
                    .filter(|tx| {
                        tx.receiver_count() > 0
                            && tx.borrow().as_ref().is_none_or(|j| j.version < *version)
                    })
                    .map(|_| vec![id.clone()])
                    .unwrap_or_default(),
                JobNews::Missed => w
                    .iter()
                    .filter(|(_, tx)| tx.receiver_count() > 0)
                    .map(|(id, _)| id.clone())
                    .collect(),
            }
        };
        if matches!(
            news,
            JobNews::Missed | JobNews::Changed { queued: true, .. }
        ) {
            self.idle.wake_all();
        }
        for id in stale {
            match self.store.get(&id).await {
                Ok(Some(job)) => self.changed(&job),
                Ok(None) => {}
                // The watcher's own poll retries.
                Err(e) => tracing::debug!(error = %e, job = %id, "reading a changed job"),
            }
        }
    }
}
