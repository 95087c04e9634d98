//! The scheduler's data-store seam (BuildGrid's "data store interface"): the
//! few atomic steps a job goes through. Every step that two pods might race
//! on is conditional, so whichever pod wins, a job is run, finished or
//! re-queued exactly once. [`super::memory`] serves one process;
//! [`super::sql`] many pods and restarts.

use async_trait::async_trait;
use bytes::Bytes;

use super::job::{Job, JobFilter, Offers};
use crate::error::Result;

/// Durable job state.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Stores a new queued job; when an unfinished job already has its
    /// `merge_key`, stores nothing and returns that job with `true`.
    async fn insert(&self, job: Job) -> Result<(Job, bool)>;

    /// One job by id.
    async fn get(&self, id: &str) -> Result<Option<Job>>;

    /// Jobs matching `filter`, newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// Gives `bot` the most urgent queued job of `instance` whose platform
    /// `offers` satisfy (lowest priority value, then longest waiting): it
    /// becomes EXECUTING with a lease until `lease_expires`.
    async fn claim(
        &self,
        instance: &str,
        bot: &str,
        offers: &Offers,
        now: i64,
        lease_expires: i64,
    ) -> Result<Option<Job>>;

    /// Extends every lease `bot` holds that runs out before `renew_before`
    /// to `lease_expires` (so a busy bot writes only now and then).
    async fn renew(&self, bot: &str, renew_before: i64, lease_expires: i64) -> Result<()>;

    /// The ids of the unfinished jobs `bot` holds.
    async fn held(&self, bot: &str) -> Result<Vec<String>>;

    /// Finishes an unfinished job with `response`; with `holder`, only while
    /// that bot holds it. Returns the finished job, or None when the
    /// condition did not hold (already finished, or taken away).
    async fn finish(
        &self,
        id: &str,
        holder: Option<&str>,
        response: Bytes,
        cancelled: bool,
        now: i64,
    ) -> Result<Option<Job>>;

    /// Puts a job `bot` holds back in the queue. `refund` gives back the
    /// attempt its claim counted: a lease the bot gave back (never received,
    /// cancelled around it, or drained) is not the job's failure; an expired
    /// one (its worker vanished, perhaps because of the action) counts.
    async fn requeue(&self, id: &str, bot: &str, now: i64, refund: bool) -> Result<Option<Job>>;

    /// Executing jobs whose lease ran out before `now`.
    async fn expired_leases(&self, now: i64) -> Result<Vec<Job>>;

    /// Queued jobs that became ready before `before`.
    async fn stale_queued(&self, before: i64) -> Result<Vec<Job>>;

    /// Queued and executing jobs per platform.
    async fn demand(&self) -> Result<Vec<super::job::Demand>>;

    /// Deletes jobs finished before `before`; returns how many.
    async fn purge(&self, before: i64) -> Result<u64>;

    /// Every pod's job changes as they happen, where the database can
    /// announce them (PostgreSQL's LISTEN/NOTIFY); `None` leaves waiters to
    /// poll for other pods' changes.
    fn news(&self) -> Option<tokio::sync::broadcast::Receiver<super::news::JobNews>> {
        None
    }

    /// True while news is being heard, so polling may slow down.
    fn hearing(&self) -> bool {
        false
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::execution::job::{Platform, Stage};

    /// A queued job (`merge`: its merge key, else not cacheable).
    pub(crate) fn job(
        id: &str,
        merge: Option<&str>,
        platform: &[(&str, &str)],
        priority: i32,
    ) -> Job {
        Job {
            invocation_id: String::new(),
            target: String::new(),
            mnemonic: String::new(),
            id: id.into(),
            instance: "i".into(),
            action_digest: DigestFunction::Sha256.digest_of(id.as_bytes()),
            action: Bytes::from_static(b"action"),
            platform: Platform::new(
                platform
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            priority,
            do_not_cache: merge.is_none(),
            merge_key: merge.map(String::from),
            stage: Stage::Queued,
            bot: None,
            lease_expires: 0,
            attempts: 0,
            cancelled: false,
            queued_at: 1000,
            ready_at: 1000,
            started_at: 0,
            completed_at: 0,
            response: None,
            trace: String::new(),
            version: 1,
        }
    }

    fn offers(pairs: &[(&str, &str)]) -> Offers {
        let mut o = Offers::new();
        for (k, v) in pairs {
            o.entry(k.to_string()).or_default().insert(v.to_string());
        }
        o
    }

    /// What every job store must do, step by step.
    async fn contract(store: &dyn JobStore) {
        // Merging: a second job with the same key joins the first.
        let (a, merged) = store.insert(job("a", Some("k"), &[], 5)).await.unwrap();
        assert!(!merged);
        let (joined, merged) = store.insert(job("a2", Some("k"), &[], 5)).await.unwrap();
        assert!(merged);
        assert_eq!(joined.id, a.id);
        store
            .insert(job("b", None, &[("os", "win")], 0))
            .await
            .unwrap();
        store.insert(job("c", None, &[], -1)).await.unwrap();
        let queued: u64 = store.demand().await.unwrap().iter().map(|d| d.queued).sum();
        assert_eq!(queued, 3);

        // Claims: most urgent matching first; platforms must be offered.
        let linux = offers(&[("os", "linux")]);
        let c = store
            .claim("i", "bot1", &linux, 2000, 5000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.id.as_str(), c.stage, c.attempts),
            ("c", Stage::Executing, 1)
        );
        let a = store
            .claim("i", "bot1", &linux, 2000, 5000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.id, "a");
        let mut held = store.held("bot1").await.unwrap();
        held.sort();
        assert_eq!(held, ["a", "c"], "a bot holds what it claimed");
        assert!(store.held("bot9").await.unwrap().is_empty());
        assert!(
            store
                .claim("i", "bot1", &linux, 2000, 5000)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .claim("other", "bot1", &offers(&[("os", "win")]), 2000, 5000)
                .await
                .unwrap()
                .is_none()
        );
        let b = store
            .claim("i", "bot2", &offers(&[("os", "win")]), 2000, 5000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.id, "b");

        // Leases: renewal, expiry, re-queueing only by the holder.
        store.renew("bot1", 6000, 9000).await.unwrap();
        let expired: Vec<String> = store
            .expired_leases(6000)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(
            expired,
            vec!["b".to_string()],
            "bot1's leases were renewed, bot2's not"
        );
        assert!(
            store
                .requeue("b", "bot1", 6000, false)
                .await
                .unwrap()
                .is_none(),
            "not bot1's"
        );
        let attempts = store.get("b").await.unwrap().unwrap().attempts;
        let b = store
            .requeue("b", "bot2", 6000, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.attempts, attempts - 1, "a give-back refunds the attempt");
        assert_eq!(
            (b.stage, b.ready_at, b.bot.clone()),
            (Stage::Queued, 6000, None)
        );
        assert_eq!(store.stale_queued(7000).await.unwrap().len(), 1);

        // Finishing: only the holder, only once; the merge key is freed.
        let resp = Bytes::from_static(b"response");
        assert!(
            store
                .finish("a", Some("bot2"), resp.clone(), false, 7000)
                .await
                .unwrap()
                .is_none()
        );
        let done = store
            .finish("a", Some("bot1"), resp.clone(), false, 7000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (done.stage, done.response.clone()),
            (Stage::Completed, Some(resp.clone()))
        );
        assert!(done.version > a.version);
        assert!(
            store
                .finish("a", None, resp.clone(), true, 7001)
                .await
                .unwrap()
                .is_none()
        );
        let (fresh, merged) = store.insert(job("a3", Some("k"), &[], 5)).await.unwrap();
        assert!(!merged && fresh.id == "a3", "a finished job is not joined");
        let cancelled = store
            .finish("c", None, resp.clone(), true, 8000)
            .await
            .unwrap()
            .unwrap();
        assert!(cancelled.cancelled);

        // Listing and purging.
        let filter = JobFilter {
            instance: Some("i".into()),
            stage: Some(Stage::Completed),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(store.list(&filter).await.unwrap().len(), 2);
        assert_eq!(
            store.purge(7500).await.unwrap(),
            1,
            "only a finished before 7500"
        );
        assert!(store.get("a").await.unwrap().is_none());
        assert!(store.get("c").await.unwrap().is_some());
        assert!(
            store.get("b").await.unwrap().is_some(),
            "queued jobs are never purged"
        );
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        contract(&crate::execution::memory::MemoryJobStore::new()).await;
    }

    #[tokio::test]
    async fn the_sqlite_store_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/jobs.db?mode=rwc", dir.path().display());
        contract(
            &crate::execution::sql::SqlJobStore::connect(&url)
                .await
                .unwrap(),
        )
        .await;
    }
}
