//! Workers' updates waiting for work in this pod, each with what it
//! offers. A job queued here wakes one of them that can run it (the one
//! waiting longest), not every idle slot: with one wake-up for all, each
//! new job had every idle slot of every worker race to claim it, and all
//! but one lost, paying three database queries each for nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::Notify;

use crate::execution::job::{Job, Offers, Platform};

/// The waiting updates, oldest first.
#[derive(Debug, Default)]
pub(super) struct IdleTakers {
    next: AtomicU64,
    waiting: Mutex<VecDeque<Waiting>>,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    instance: String,
    offers: Offers,
    wake: Arc<Wake>,
}

/// A taker's wake-up: a permit, and the platform of the job it was for.
#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    platform: Mutex<Option<Platform>>,
}

impl Wake {
    fn send(&self, platform: Option<&Platform>) {
        *self.platform.lock().unwrap_or_else(|p| p.into_inner()) = platform.cloned();
        self.notify.notify_one();
    }
}

/// One waiting update; leaves the queue when dropped.
pub(super) struct Taker<'a> {
    takers: &'a IdleTakers,
    id: u64,
    instance: String,
    offers: Offers,
    wake: Arc<Wake>,
}

impl IdleTakers {
    /// A taker for `instance` offering `offers`, not yet waiting.
    pub fn taker(&self, instance: &str, offers: &Offers) -> Taker<'_> {
        Taker {
            takers: self,
            id: self.next.fetch_add(1, Ordering::Relaxed),
            instance: instance.to_string(),
            offers: offers.clone(),
            wake: Arc::new(Wake::default()),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the longest-waiting taker that can run `job`, if any; it
    /// leaves the queue until it waits again.
    pub fn wake_for(&self, job: &Job) {
        self.wake_one(&job.instance, &job.platform);
    }

    fn wake_one(&self, instance: &str, platform: &Platform) {
        let mut waiting = self.waiting();
        let found = waiting
            .iter()
            .position(|w| w.instance == instance && platform.satisfied_by(&w.offers));
        if let Some(w) = found.and_then(|i| waiting.remove(i)) {
            w.wake.send(Some(platform));
        }
    }

    /// Wakes every waiting taker (news from another pod that names no
    /// platform, or a stop).
    pub fn wake_all(&self) {
        for w in self.waiting().drain(..) {
            w.wake.send(None);
        }
    }
}

impl Taker<'_> {
    /// Joins the queue (at its end) unless already in it: called before
    /// every claim attempt, so a job queued between a failed claim and the
    /// wait still wakes this taker.
    pub fn wait_in_line(&self) {
        let mut waiting = self.takers.waiting();
        if !waiting.iter().any(|w| w.id == self.id) {
            waiting.push_back(Waiting {
                id: self.id,
                instance: self.instance.clone(),
                offers: self.offers.clone(),
                wake: self.wake.clone(),
            });
        }
    }

    /// Returns once woken (at once if a wake-up came since the last).
    pub async fn woken(&self) {
        self.wake.notify.notified().await;
    }
}

impl Drop for Taker<'_> {
    /// A wake-up that came while the taker was not waiting (it was
    /// claiming, and took another job or gave up) is passed on, so the job
    /// it was for does not wait for a poll.
    fn drop(&mut self) {
        self.takers.waiting().retain(|w| w.id != self.id);
        let unused = self.wake.notify.notified().now_or_never().is_some();
        let platform = self
            .wake
            .platform
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let (true, Some(platform)) = (unused, platform) {
            self.takers.wake_one(&self.instance, &platform);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(os: &str) -> Offers {
        let mut o = Offers::new();
        o.entry("os".into()).or_default().insert(os.into());
        o
    }

    fn wake(takers: &IdleTakers, instance: &str, os: &str) {
        takers.wake_one(instance, &Platform::new(vec![("os".into(), os.into())]));
    }

    /// A permit is kept when the taker is not awaiting yet.
    async fn woken(t: &Taker<'_>) -> bool {
        t.woken().now_or_never().is_some()
    }

    #[tokio::test]
    async fn a_job_wakes_one_taker_that_can_run_it() {
        let takers = IdleTakers::default();
        let (a, b, c) = (
            takers.taker("i", &offers("linux")),
            takers.taker("i", &offers("linux")),
            takers.taker("i", &offers("mac")),
        );
        for t in [&a, &b, &c] {
            t.wait_in_line();
        }
        wake(&takers, "i", "mac");
        assert!(!woken(&a).await && !woken(&b).await && woken(&c).await);
        wake(&takers, "i", "linux");
        assert!(woken(&a).await, "the longest waiting first");
        assert!(!woken(&b).await);
        wake(&takers, "other", "linux");
        assert!(!woken(&b).await, "another instance's job");
        wake(&takers, "i", "linux");
        assert!(woken(&b).await);
        wake(&takers, "i", "linux");
        assert!(
            !woken(&a).await,
            "a woken taker waits again only once it says so"
        );
        a.wait_in_line();
        a.wait_in_line();
        drop(b);
        takers.wake_all();
        assert!(woken(&a).await && !woken(&c).await, "c was woken before");
        assert!(takers.waiting().is_empty());
    }

    #[tokio::test]
    async fn a_wake_up_the_taker_did_not_use_is_passed_on() {
        let takers = IdleTakers::default();
        let (a, b) = (
            takers.taker("i", &offers("linux")),
            takers.taker("i", &offers("linux")),
        );
        a.wait_in_line();
        b.wait_in_line();
        // a was claiming (and took another job) when this job was queued.
        wake(&takers, "i", "linux");
        drop(a);
        assert!(woken(&b).await, "the job's wake-up reached b");
        b.wait_in_line();
        let c = takers.taker("i", &offers("linux"));
        c.wait_in_line();
        wake(&takers, "i", "linux");
        assert!(woken(&b).await);
        drop(b);
        assert!(!woken(&c).await, "a used wake-up is not passed on");
    }
}
