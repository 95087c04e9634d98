//! Cross-pod job news on PostgreSQL. Every change a pod makes to a job is
//! announced with `NOTIFY`, and every pod `LISTEN`s, so a WaitExecution on
//! one pod hears of a completion on another at once, and an idle worker on
//! one pod wakes when another pod queues work, instead of at the next poll.
//!
//! Notifications are best-effort: PostgreSQL drops them for a listener
//! whose connection is down. After every (re)connect the listener reports
//! [`JobNews::Missed`] so the scheduler re-reads what it watches, and
//! polling (slower while news flows) stays as the fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, oneshot};

use super::job::{Job, Stage};

/// The channel kiln's pods talk on.
const CHANNEL: &str = "kiln_jobs";

/// News buffered per listening scheduler; a slower one gets `Missed`.
const BUFFER: usize = 4096;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What another pod (or this one) did to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobNews {
    /// Job `id` reached `version`; `queued` when it (again) waits for a worker.
    Changed {
        /// The job.
        id: String,
        /// Its version after the change.
        version: i64,
        /// Work for idle workers.
        queued: bool,
    },
    /// Some news may have been lost (a reconnect, or a slow reader): whoever
    /// waits on something should look again.
    Missed,
}

impl JobNews {
    fn payload(job: &Job) -> String {
        format!("{}:{}:{}", job.stage as i64, job.version, job.id)
    }

    fn parse(payload: &str) -> Option<JobNews> {
        let mut parts = payload.splitn(3, ':');
        let stage: i64 = parts.next()?.parse().ok()?;
        let version: i64 = parts.next()?.parse().ok()?;
        let id = parts.next()?;
        (!id.is_empty()).then(|| JobNews::Changed {
            id: id.to_string(),
            version,
            queued: stage == Stage::Queued as i64,
        })
    }
}

/// One store's half of the news: announcing its changes and hearing all.
#[derive(Debug)]
pub(super) struct PgNews {
    pool: AnyPool,
    tx: broadcast::Sender<JobNews>,
    /// Kept up to date by the listening task.
    heard: Arc<Heard>,
    /// Dropped with the store: ends the listening task.
    _stop: oneshot::Sender<()>,
}

impl PgNews {
    /// Starts listening on `url` (a task that reconnects until the store is
    /// dropped); announcements go through `pool`.
    pub(super) fn start(url: &str, pool: AnyPool) -> PgNews {
        let (tx, _) = broadcast::channel(BUFFER);
        let heard = Arc::new(Heard::default());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(listen(url.to_string(), tx.clone(), heard.clone(), stopped));
        PgNews {
            pool,
            tx,
            heard,
            _stop: stop,
        }
    }

    /// Tells every pod that `job` changed. Sent after the change committed,
    /// in the background: a lost announcement only delays a waiter to its
    /// next poll, so the change's caller never waits for it.
    pub(super) fn announce(&self, job: &Job) {
        let pool = self.pool.clone();
        let payload = JobNews::payload(job);
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "announcing a job change");
            }
        });
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<JobNews> {
        self.tx.subscribe()
    }

    pub(super) fn hearing(&self) -> bool {
        self.heard.hearing.load(Ordering::Relaxed)
    }

    /// Counts news of queued jobs: a cache of what is queued, read at one
    /// count, is stale at another (without news, its own expiry applies).
    pub(super) fn queued_heard(&self) -> u64 {
        self.heard.queued.load(Ordering::Relaxed)
    }
}

/// What the listening task keeps up to date for the store.
#[derive(Debug, Default)]
struct Heard {
    /// The listening connection is up.
    hearing: AtomicBool,
    /// Queued-job news heard so far (caches of what is queued check it).
    queued: AtomicU64,
}

async fn listen(
    url: String,
    tx: broadcast::Sender<JobNews>,
    heard: Arc<Heard>,
    mut stop: oneshot::Receiver<()>,
) {
    let hearing = &heard.hearing;
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = &mut stop => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for job changes; waiters poll meanwhile");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        hearing.store(true, Ordering::Relaxed);
        // Whatever changed before this connection listened is unknown.
        let _ = tx.send(JobNews::Missed);
        loop {
            let received = tokio::select! {
                _ = &mut stop => return,
                n = listener.try_recv() => n,
            };
            match received {
                Ok(Some(n)) => {
                    if let Some(news) = JobNews::parse(n.payload()) {
                        if matches!(news, JobNews::Changed { queued: true, .. }) {
                            heard.queued.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = tx.send(news);
                    }
                }
                // The connection dropped: reconnect, then report the gap.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "job-change listener lost; reconnecting");
                    break;
                }
            }
        }
        hearing.store(false, Ordering::Relaxed);
        let _ = tx.send(JobNews::Missed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_ignored() {
        assert_eq!(
            JobNews::parse("2:7:a:b"),
            Some(JobNews::Changed {
                id: "a:b".into(),
                version: 7,
                queued: true
            })
        );
        assert_eq!(
            JobNews::parse("4:9:x"),
            Some(JobNews::Changed {
                id: "x".into(),
                version: 9,
                queued: false
            })
        );
        for junk in ["", "2", "2:x:id", "a:1:id", "2:1:"] {
            assert_eq!(JobNews::parse(junk), None, "{junk:?}");
        }
    }
}
