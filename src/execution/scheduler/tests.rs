//! Table tests of the scheduler's worker side on the in-memory job store,
//! through the Bots session logic (`execution::bots::update`) as a bot
//! would drive it. Tokio's clock is paused: every wait (an idle bot's,
//! a held renewal) resolves the moment nothing else can happen, so the
//! tests decide by state, never by time.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::{ExecSettings, Outcome, Scheduler, Submitter};
use crate::digest::{Digest, DigestFunction};
use crate::execution::bots::{self, RENEWAL_WAITS};
use crate::execution::job::{Job, Stage};
use crate::execution::memory::MemoryJobStore;
use crate::execution::store::JobStore;
use crate::proto::reapi::{Action, ActionResult, Command};
use crate::proto::remoteworkers::{BotSession, BotStatus, Lease, LeaseState, Worker, worker};

const CONFIG: &str = r#"
instances:
  - name: ""
    cas: { memory: { max_size: 16MiB } }
    action_cache: { memory: { max_size: 16MiB } }
"#;

struct Harness {
    scheduler: Arc<Scheduler>,
    store: Arc<MemoryJobStore>,
    instances: crate::instance::Instances,
    _dir: tempfile::TempDir,
}

fn settings() -> ExecSettings {
    ExecSettings {
        queue_timeout: Duration::from_secs(3600),
        default_action_timeout: Duration::from_secs(60),
        max_action_timeout: Duration::from_secs(600),
        lease_timeout: Duration::from_secs(30),
        max_attempts: 3,
        poll_interval: Duration::from_millis(250),
        notified_poll_interval: Duration::from_secs(5),
        bot_wait: Duration::from_secs(10),
        retention: Duration::from_secs(3600),
    }
}

async fn harness(settings: ExecSettings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::Config::parse(CONFIG).unwrap();
    let metrics = crate::metrics::Metrics::new();
    let (_, policy) = crate::auth::from_config(&config.auth).await.unwrap();
    let instances = crate::instance::Instances::build(
        &config,
        dir.path().to_path_buf(),
        metrics.clone(),
        policy,
        None,
    )
    .await
    .unwrap();
    let store = Arc::new(MemoryJobStore::new());
    let scheduler = Scheduler::new(store.clone(), instances.clone(), settings, &metrics);
    Harness {
        scheduler,
        store,
        instances,
        _dir: dir,
    }
}

impl Harness {
    /// Queues a distinct action; returns its job.
    async fn queue(&self, salt: &str) -> Job {
        let action = Action {
            salt: bytes::Bytes::copy_from_slice(salt.as_bytes()),
            ..Default::default()
        };
        let digest = DigestFunction::Sha256.digest_of(&action.encode_to_vec());
        self.scheduler
            .submit(
                "",
                digest,
                action,
                &Command::default(),
                0,
                Submitter::default(),
            )
            .await
            .unwrap()
    }

    async fn job(&self, id: &str) -> Job {
        self.store.get(id).await.unwrap().unwrap()
    }

    /// One update from bot session `bot` reporting `leases`.
    async fn update(&self, bot: &str, leases: Vec<Lease>, waits: bool) -> BotSession {
        self.update_as(bot, leases, waits, BotStatus::Ok).await
    }

    /// The same, with the bot's status.
    async fn update_as(
        &self,
        bot: &str,
        leases: Vec<Lease>,
        waits: bool,
        status: BotStatus,
    ) -> BotSession {
        let session = BotSession {
            name: format!("botSessions/{bot}"),
            bot_id: bot.into(),
            status: status as i32,
            leases,
            worker: Some(Worker {
                configs: if waits {
                    vec![worker::Config {
                        key: RENEWAL_WAITS.0.into(),
                        value: RENEWAL_WAITS.1.into(),
                    }]
                } else {
                    Vec::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let wait = self.scheduler.settings().bot_wait;
        bots::update(&self.scheduler, "", session, wait)
            .await
            .unwrap()
            .0
    }

    async fn cached(&self, digest: &Digest) -> bool {
        let instance = self.instances.get("").unwrap();
        crate::store::get_bytes(instance.action_cache.as_ref(), digest)
            .await
            .is_ok()
    }
}

fn bot(name: &str) -> String {
    format!("botSessions/{name}")
}

fn lease(id: &str, state: LeaseState) -> Lease {
    Lease {
        id: id.into(),
        state: state as i32,
        ..Default::default()
    }
}

fn completed(id: &str, exit_code: i32) -> Lease {
    let result = ActionResult {
        exit_code,
        ..Default::default()
    };
    Lease {
        id: id.into(),
        state: LeaseState::Completed as i32,
        result: Some(prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
            value: result.encode_to_vec(),
        }),
        status: Some(crate::error::ok_rpc_status()),
        ..Default::default()
    }
}

fn states(session: &BotSession) -> Vec<(String, i32)> {
    session
        .leases
        .iter()
        .map(|l| (l.id.clone(), l.state))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_idle_bot_waits_and_gets_nothing_when_nothing_is_queued() {
    let h = harness(settings()).await;
    let answer = h.update("a", Vec::new(), false).await;
    assert!(answer.leases.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_idle_bot_takes_a_queued_job() {
    let h = harness(settings()).await;
    let job = h.queue("one").await;
    let answer = h.update("a", Vec::new(), false).await;
    assert_eq!(
        states(&answer),
        vec![(job.id.clone(), LeaseState::Pending as i32)]
    );
    assert!(answer.leases[0].payload.is_some(), "the Action travels");
    let held = h.job(&job.id).await;
    assert_eq!(
        (held.stage, held.bot, held.attempts),
        (Stage::Executing, Some(bot("a")), 1)
    );
}

/// Each row: what the bot reports about a job it was leased, and what the
/// job and the answer look like afterwards.
#[tokio::test(start_paused = true)]
async fn reports_on_a_held_lease() {
    struct Row {
        what: &'static str,
        /// Cancel the job before the report.
        cancel_first: bool,
        report: fn(&str) -> Vec<Lease>,
        stage: Stage,
        attempts: u32,
        /// The answer's state for the job's lease, if it has one.
        answer: Option<LeaseState>,
        /// Whether another queued job is handed out in the same answer.
        gets_new_work: bool,
        cached: bool,
        /// The bot reports BOT_TERMINATING (so it takes no new work, and a
        /// re-queued job stays queued to be seen).
        terminating: bool,
    }
    let rows = [
        Row {
            what: "renewal",
            cancel_first: false,
            report: |id| vec![lease(id, LeaseState::Active)],
            stage: Stage::Executing,
            attempts: 1,
            answer: Some(LeaseState::Active),
            gets_new_work: false,
            cached: false,
            terminating: false,
        },
        Row {
            what: "renewal of a cancelled lease: told at once, no new work",
            cancel_first: true,
            report: |id| vec![lease(id, LeaseState::Active)],
            stage: Stage::Completed,
            attempts: 1,
            answer: Some(LeaseState::Cancelled),
            gets_new_work: false,
            cached: false,
            terminating: false,
        },
        Row {
            what: "completion",
            cancel_first: false,
            report: |id| vec![completed(id, 0)],
            stage: Stage::Completed,
            attempts: 1,
            answer: None,
            gets_new_work: true,
            cached: true,
            terminating: false,
        },
        Row {
            what: "failed command: completed, not cached",
            cancel_first: false,
            report: |id| vec![completed(id, 1)],
            stage: Stage::Completed,
            attempts: 1,
            answer: None,
            gets_new_work: true,
            cached: false,
            terminating: false,
        },
        Row {
            what: "completion of a cancelled job is dropped",
            cancel_first: true,
            report: |id| vec![completed(id, 0)],
            stage: Stage::Completed,
            attempts: 1,
            answer: None,
            gets_new_work: true,
            cached: false,
            terminating: false,
        },
        Row {
            what: "give-back refunds the attempt",
            cancel_first: false,
            report: |id| vec![lease(id, LeaseState::Cancelled)],
            stage: Stage::Queued,
            attempts: 0,
            answer: None,
            gets_new_work: false,
            cached: false,
            terminating: true,
        },
        Row {
            what: "an unreported lease is re-queued, refunded",
            cancel_first: false,
            report: |_| Vec::new(),
            stage: Stage::Queued,
            attempts: 0,
            answer: None,
            gets_new_work: false,
            cached: false,
            terminating: true,
        },
    ];
    for row in rows {
        let h = harness(settings()).await;
        let job = h.queue("held").await;
        let first = h.update("a", Vec::new(), false).await;
        assert_eq!(first.leases[0].id, job.id, "{}", row.what);
        let other = h.queue("other").await;
        if row.cancel_first {
            h.scheduler.cancel(&job.id).await.unwrap();
        }
        let status = if row.terminating {
            BotStatus::BotTerminating
        } else {
            BotStatus::Ok
        };
        let answer = h.update_as("a", (row.report)(&job.id), false, status).await;
        let after = h.job(&job.id).await;
        assert_eq!(after.stage, row.stage, "{}", row.what);
        assert_eq!(after.attempts, row.attempts, "{}", row.what);
        let ours = answer.leases.iter().find(|l| l.id == job.id);
        assert_eq!(
            ours.map(|l| l.state),
            row.answer.map(|s| s as i32),
            "{}",
            row.what
        );
        let new_work = answer.leases.iter().any(|l| l.id == other.id);
        // A re-queued job may be the one handed out again instead.
        let any_new = answer
            .leases
            .iter()
            .any(|l| l.state == LeaseState::Pending as i32);
        assert_eq!(new_work || any_new, row.gets_new_work, "{}", row.what);
        assert_eq!(
            h.cached(&job.action_digest).await,
            row.cached,
            "{}",
            row.what
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_renewal_answers_the_moment_its_lease_is_cancelled() {
    let h = Arc::new(harness(settings()).await);
    let job = h.queue("long").await;
    h.update("a", Vec::new(), true).await;
    let renewal = {
        let (h, id) = (h.clone(), job.id.clone());
        tokio::spawn(async move {
            h.update("a", vec![lease(&id, LeaseState::Active)], true)
                .await
        })
    };
    // The renewal is held: nothing has happened to the lease yet.
    tokio::task::yield_now().await;
    assert!(!renewal.is_finished());
    let before = tokio::time::Instant::now();
    h.scheduler.cancel(&job.id).await.unwrap();
    let answer = renewal.await.unwrap();
    assert_eq!(
        states(&answer),
        vec![(job.id.clone(), LeaseState::Cancelled as i32)]
    );
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "answered without any clock time passing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_renewal_without_news_answers_within_a_third_of_the_lease() {
    let h = harness(settings()).await;
    let job = h.queue("long").await;
    h.update("a", Vec::new(), true).await;
    let before = tokio::time::Instant::now();
    let answer = h
        .update("a", vec![lease(&job.id, LeaseState::Active)], true)
        .await;
    assert_eq!(
        states(&answer),
        vec![(job.id.clone(), LeaseState::Active as i32)]
    );
    let held = tokio::time::Instant::now() - before;
    assert!(held <= settings().lease_timeout / 3, "{held:?}");
    assert!(held >= settings().bot_wait.min(settings().lease_timeout / 3));
}

#[tokio::test(start_paused = true)]
async fn a_bot_that_does_not_ask_is_never_held() {
    let h = harness(settings()).await;
    let job = h.queue("long").await;
    h.update("a", Vec::new(), false).await;
    let before = tokio::time::Instant::now();
    h.update("a", vec![lease(&job.id, LeaseState::Active)], false)
        .await;
    assert_eq!(tokio::time::Instant::now(), before);
}

#[tokio::test(start_paused = true)]
async fn another_bots_report_changes_nothing() {
    let h = harness(settings()).await;
    let job = h.queue("mine").await;
    h.update("a", Vec::new(), false).await;
    let answer = h.update("b", vec![completed(&job.id, 0)], false).await;
    assert!(answer.leases.is_empty());
    let after = h.job(&job.id).await;
    assert_eq!((after.stage, after.bot), (Stage::Executing, Some(bot("a"))));
    assert!(!h.cached(&job.action_digest).await);
    // Nor can it give the lease back or renew it into its own.
    h.update("b", vec![lease(&job.id, LeaseState::Cancelled)], false)
        .await;
    assert_eq!(h.job(&job.id).await.stage, Stage::Executing);
}

#[tokio::test]
async fn an_expired_lease_counts_its_attempt_and_the_last_one_fails_the_job() {
    let mut s = settings();
    s.lease_timeout = Duration::ZERO;
    s.max_attempts = 2;
    let h = harness(s).await;
    let job = h.queue("flaky-worker").await;
    for attempt in 1..=2 {
        let taken = h.update("a", Vec::new(), false).await;
        assert_eq!(taken.leases.len(), 1, "attempt {attempt}");
        // The lease expired the moment it was made; housekeeping sees it
        // once the clock has moved a millisecond past it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            h.scheduler.housekeep().await.unwrap();
            let j = h.job(&job.id).await;
            if j.stage != Stage::Executing {
                assert_eq!(j.attempts, attempt);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never expired");
            tokio::task::yield_now().await;
        }
    }
    let failed = h.job(&job.id).await;
    assert_eq!(failed.stage, Stage::Completed);
    let response = crate::proto::reapi::ExecuteResponse::decode(failed.response.unwrap()).unwrap();
    assert_eq!(
        response.status.unwrap().code,
        tonic::Code::Unavailable as i32
    );
}

#[tokio::test(start_paused = true)]
async fn completion_reaches_the_cache_only_for_the_holder_on_its_instance() {
    let h = harness(settings()).await;
    let job = h.queue("done").await;
    h.update("a", Vec::new(), false).await;
    let outcome = || Outcome {
        result: Some(ActionResult::default()),
        status: crate::error::ok_rpc_status(),
    };
    let wrong_instance = h
        .scheduler
        .complete(&bot("a"), "elsewhere", &job.id, outcome())
        .await;
    assert!(matches!(
        wrong_instance,
        Err(crate::error::Error::PermissionDenied(_))
    ));
    assert!(!h.cached(&job.action_digest).await);
    h.scheduler
        .complete(&bot("a"), "", &job.id, outcome())
        .await
        .unwrap();
    assert!(h.cached(&job.action_digest).await);
    assert_eq!(h.job(&job.id).await.stage, Stage::Completed);
}
