//! The scheduler: queues actions as jobs, hands them to workers, finishes
//! them, and wakes whoever watches. State lives in the [`JobStore`]; this
//! pod adds only wake-ups: in-process notifications for changes it makes,
//! news of other pods' changes where the store announces them (PostgreSQL's
//! LISTEN/NOTIFY, see `news.rs`), and polling as the fallback: every
//! `poll_interval`, or every `notified_poll_interval` while news flows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::watch;

mod demand;
mod hearing;
mod housekeeping;
mod idle;
mod leases;
mod rerun;
mod usage_metrics;
mod workers;

#[cfg(test)]
mod tests;

use super::job::{Job, JobFilter, Platform, Stage};
use super::store::JobStore;
use crate::config::ExecutionConfig;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::instance::Instances;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::metrics::Metrics;

/// The scheduler's metrics.
#[derive(Debug)]
pub(super) struct ExecMetrics {
    /// Jobs by event: queued, merged, cached, completed, failed, cancelled,
    /// requeued, timed_out.
    jobs: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Time from queueing to a worker taking the job, in seconds.
    pub(super) queue_wait: Histogram,
    /// Time from a worker taking the job to its result, in seconds.
    pub(super) run: Histogram,
    /// Queued jobs per platform label (all pods' jobs, refreshed by this
    /// pod every second).
    pub(super) queued_by: Family<Vec<(&'static str, String)>, Gauge>,
    /// Executing jobs per platform label.
    pub(super) executing_by: Family<Vec<(&'static str, String)>, Gauge>,
    /// Age of the oldest queued job, in seconds (0 when none is queued).
    pub(super) oldest_queued_seconds: Gauge,
    /// What finished actions cost, as their workers measured it.
    pub(super) usage: usage_metrics::UsageMetrics,
}

impl ExecMetrics {
    fn register(registry: &Metrics) -> ExecMetrics {
        let m = ExecMetrics {
            jobs: Family::default(),
            queue_wait: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            run: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            queued_by: Family::default(),
            executing_by: Family::default(),
            oldest_queued_seconds: Gauge::default(),
            usage: usage_metrics::UsageMetrics::register(registry),
        };
        registry.register(
            "exec_queued",
            "Jobs waiting for a worker, per platform (labels: /api/v1/platforms)",
            m.queued_by.clone(),
        );
        registry.register(
            "exec_executing",
            "Jobs a worker runs, per platform (labels: /api/v1/platforms)",
            m.executing_by.clone(),
        );
        registry.register(
            "exec_oldest_queued_seconds",
            "Age of the oldest queued job",
            m.oldest_queued_seconds.clone(),
        );
        registry.register("exec_jobs", "Execution jobs by event", m.jobs.clone());
        registry.register(
            "exec_queue_wait_seconds",
            "Time from queueing to a worker taking the job",
            m.queue_wait.clone(),
        );
        registry.register(
            "exec_run_seconds",
            "Time from a worker taking a job to its result",
            m.run.clone(),
        );
        m
    }
}
use crate::proto::reapi::{Action, ActionResult, Command, ExecuteResponse};
use crate::time::now_ms;

/// Timing and retry settings, copied out of config.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// Queued longer than this without a worker: fail.
    pub queue_timeout: Duration,
    /// Timeout of actions that set none.
    pub default_action_timeout: Duration,
    /// Cap on action timeouts.
    pub max_action_timeout: Duration,
    /// A worker silent this long loses its leases.
    pub lease_timeout: Duration,
    /// Runs per job before it fails.
    pub max_attempts: u32,
    /// How often to look for other pods' changes.
    pub poll_interval: Duration,
    /// How often while the store's news of them is heard.
    pub notified_poll_interval: Duration,
    /// Longest wait of an idle worker's update.
    pub bot_wait: Duration,
    /// How long finished jobs are kept.
    pub retention: Duration,
}

impl From<&ExecutionConfig> for ExecSettings {
    fn from(c: &ExecutionConfig) -> Self {
        ExecSettings {
            queue_timeout: c.queue_timeout.0,
            default_action_timeout: c.default_action_timeout.0,
            max_action_timeout: c.max_action_timeout.0,
            lease_timeout: c.lease_timeout.0,
            max_attempts: c.max_attempts,
            poll_interval: c.poll_interval.0,
            notified_poll_interval: c.notified_poll_interval.0,
            bot_wait: c.bot_wait.0,
            retention: c.retention.0,
        }
    }
}

/// What a worker reports when it finishes a lease.
#[derive(Debug)]
pub struct Outcome {
    /// The action's result (possibly partial, e.g. after a timeout).
    pub result: Option<ActionResult>,
    /// OK, or why the action could not be run to completion.
    pub status: tonic_types::pb::Status,
}

/// Who queued a job: what links its run to the client's trace and build.
#[derive(Debug, Clone, Default)]
pub struct Submitter {
    /// The client's W3C `traceparent`, for the worker's span.
    pub traceparent: String,
    /// The client's invocation (RequestMetadata), or empty.
    pub invocation_id: String,
    /// The target and mnemonic the client names (RequestMetadata), or empty.
    pub target: String,
    pub mnemonic: String,
}

/// The scheduler of one server (any number of pods may share its store).
#[derive(Debug)]
pub struct Scheduler {
    store: Arc<dyn JobStore>,
    instances: Instances,
    settings: ExecSettings,
    metrics: ExecMetrics,
    /// Per-job news for watchers in this pod: the job as this pod last
    /// changed it, so a local watcher needs no database read.
    watchers: Mutex<HashMap<String, watch::Sender<Option<Job>>>>,
    /// What completing a job needs, for jobs this pod leased out: spares a
    /// database read when (as usual) the same pod takes the report.
    leased: moka::sync::Cache<String, leases::Leased>,
    /// Idle workers' updates, woken when this pod queues work they can run.
    idle: idle::IdleTakers,
    stopping: AtomicBool,
    /// Platform labels handed out so far, with their properties.
    platforms: Mutex<std::collections::BTreeMap<String, Vec<(String, String)>>>,
    /// The last demand read: label → (queued, executing).
    demand_now: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    /// Workers heard from lately (see `workers.rs`).
    workers: moka::sync::Cache<String, workers::SeenWorker>,
    /// Its background tasks (housekeeping, news from other pods), ended by
    /// [`Scheduler::end_tasks`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Publishes `job` unless a newer version of it is already published
/// (concurrent changes in one pod may report out of order).
fn newer(tx: &watch::Sender<Option<Job>>, job: &Job) {
    tx.send_if_modified(|current| match current {
        Some(known) if known.version >= job.version => false,
        _ => {
            *current = Some(job.clone());
            true
        }
    });
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An ExecuteResponse for a job that ends without a result.
fn failure(code: tonic::Code, message: String) -> Bytes {
    Bytes::from(
        ExecuteResponse {
            status: Some(tonic_types::pb::Status {
                code: code as i32,
                message: message.clone(),
                details: Vec::new(),
            }),
            message,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

impl Scheduler {
    /// A scheduler over `store`, finishing jobs into `instances`' action caches.
    pub fn new(
        store: Arc<dyn JobStore>,
        instances: Instances,
        settings: ExecSettings,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let news = store.news();
        let scheduler = Arc::new(Scheduler {
            store,
            instances,
            settings,
            metrics: ExecMetrics::register(metrics),
            watchers: Mutex::new(HashMap::new()),
            leased: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(4 * 3600))
                .build(),
            idle: idle::IdleTakers::default(),
            stopping: AtomicBool::new(false),
            platforms: Mutex::new(std::collections::BTreeMap::new()),
            demand_now: Mutex::new(std::collections::BTreeMap::new()),
            workers: moka::sync::Cache::builder()
                .max_capacity(workers::MAX_WORKERS)
                .time_to_live(workers::SEEN_FOR)
                .build(),
            tasks: Mutex::new(Vec::new()),
        });
        if let Some(news) = news {
            let hearing = tokio::spawn(hearing::hear(Arc::downgrade(&scheduler), news));
            scheduler.adopt(hearing);
        }
        scheduler
    }

    /// The settings in force.
    pub fn settings(&self) -> &ExecSettings {
        &self.settings
    }

    fn count(&self, event: &'static str) {
        self.metrics
            .jobs
            .get_or_create(&vec![("event", event)])
            .inc();
    }

    fn watcher(&self, id: &str) -> watch::Receiver<Option<Job>> {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Records `job` as this pod last saw it, for watchers that come later
    /// (a watcher starting on a job just queued here reads no database).
    fn seed(&self, job: &Job) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = w
            .entry(job.id.clone())
            .or_insert_with(|| watch::channel(None).0);
        newer(tx, job);
    }

    /// Tells this pod's watchers of `job` (if any) about its new state.
    fn changed(&self, job: &Job) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = w.get(&job.id) {
            newer(tx, job);
        }
    }

    /// Queues an action whose inputs were checked, or joins the identical
    /// unfinished one. Returns the job to watch.
    pub async fn submit(
        &self,
        instance: &str,
        digest: Digest,
        mut action: Action,
        command: &Command,
        priority: i32,
        from: Submitter,
    ) -> Result<Job> {
        let mut props: Vec<(String, String)> = Vec::new();
        for p in [&action.platform, &command.platform].into_iter().flatten() {
            props.extend(
                p.properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone())),
            );
        }
        // Workers get the Action with its timeout already capped.
        let asked = action
            .timeout
            .as_ref()
            .and_then(|t| Duration::try_from(*t).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(self.settings.default_action_timeout);
        let timeout = asked.min(self.settings.max_action_timeout);
        action.timeout = prost_types::Duration::try_from(timeout).ok();
        let now = now_ms();
        let job = Job {
            id: uuid::Uuid::new_v4().to_string(),
            instance: instance.to_string(),
            action_digest: digest,
            do_not_cache: action.do_not_cache,
            merge_key: (!action.do_not_cache)
                .then(|| format!("{instance}\n{}:{digest}", digest.function.name())),
            action: Bytes::from(action.encode_to_vec()),
            platform: Platform::new(props),
            priority,
            stage: Stage::Queued,
            bot: None,
            lease_expires: 0,
            attempts: 0,
            cancelled: false,
            queued_at: now,
            ready_at: now,
            started_at: 0,
            completed_at: 0,
            response: None,
            trace: from.traceparent,
            version: 1,
            invocation_id: from.invocation_id,
            target: from.target,
            mnemonic: from.mnemonic,
        };
        let (job, merged) = self.store.insert(job).await?;
        self.seed(&job);
        if merged {
            self.count("merged");
        } else {
            self.count("queued");
            self.idle.wake_for(&job);
        }
        Ok(job)
    }

    /// One job; NOT_FOUND if unknown (or purged).
    pub async fn get(&self, id: &str) -> Result<Job> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no operation {id}")))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.store.list(filter).await
    }

    /// Returns the job once its version passes `seen`, or as it is after
    /// `timeout` (callers use that as a keep-alive).
    pub async fn wait(&self, id: &str, seen: i64, timeout: Duration) -> Result<Job> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before reading, so no local change is missed between.
        let mut news = self.watcher(id);
        let result = async {
            // What this pod knows is as fresh as the database for its own
            // changes; other pods' changes arrive by polling below.
            let local = news.borrow_and_update().clone();
            let mut job = match local {
                Some(job) => job,
                None => self.get(id).await?,
            };
            loop {
                if job.version > seen || job.stage == Stage::Completed {
                    return Ok(job);
                }
                tokio::select! {
                    changed = news.changed() => {
                        if changed.is_ok()
                            && let Some(fresh) = news.borrow_and_update().clone()
                            && fresh.version > job.version
                        {
                            job = fresh;
                        }
                    }
                    // Other pods' changes are only in the database.
                    _ = tokio::time::sleep(self.poll_every()) => job = self.get(id).await?,
                    _ = tokio::time::sleep_until(deadline) => return Ok(job),
                }
            }
        }
        .await;
        drop(news);
        self.forget_idle_watchers();
        result
    }

    fn forget_idle_watchers(&self) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() > 64 {
            w.retain(|_, tx| tx.receiver_count() > 0);
        }
    }

    /// Cancels a job: a queued one never runs, a running one's worker is
    /// told to stop at its next update. Returns the job as it ends up.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let response = failure(
            tonic::Code::Cancelled,
            "cancelled by CancelOperation".into(),
        );
        match self
            .store
            .finish(id, None, response, true, now_ms())
            .await?
        {
            Some(job) => {
                self.count("cancelled");
                self.changed(&job);
                Ok(job)
            }
            None => self.get(id).await,
        }
    }

    /// Ends long waits so that a graceful stop is not held up by idle workers.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.idle.wake_all();
    }

    fn adopt(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Ends the background tasks and waits until they are gone: a round in
    /// progress holds the scheduler (and through it the stores), and a
    /// stopped server must release its data directory.
    pub async fn end_tasks(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
