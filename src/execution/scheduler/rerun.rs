//! The scheduler's side of re-execution sampling (`insights::reexecute`):
//! an action served from the cache is queued once more at the lowest
//! priority with its result not cached, and the fresh result is handed
//! back when a worker finished it. The wait holds the scheduler only
//! weakly between polls, so a stopping server is not kept alive by it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Scheduler, Submitter};
use crate::digest::Digest;
use crate::execution::job::Stage;
use crate::insights::reexecute::{INVOCATION, Rerun};
use crate::proto::reapi::ActionResult;

/// Longest a re-execution is waited for (queue and run): it runs only
/// when workers have nothing better to do.
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// One wait on the job, after which the scheduler is let go and taken
/// again.
const POLL: Duration = Duration::from_secs(2);

impl Rerun for Scheduler {
    fn rerun(
        self: Arc<Self>,
        instance: String,
        action: Digest,
    ) -> futures::future::BoxFuture<'static, Option<ActionResult>> {
        let weak = Arc::downgrade(&self);
        drop(self);
        Box::pin(rerun(weak, instance, action))
    }
}

async fn rerun(
    scheduler: Weak<Scheduler>,
    instance: String,
    action: Digest,
) -> Option<ActionResult> {
    let job = {
        let s = scheduler.upgrade()?;
        let inst = s.instances.get(&instance).ok()?;
        // The action's inputs may be gone since its result was cached:
        // then there is nothing to run.
        let mut checked = crate::execution::inputs::check(&inst, action).await.ok()?;
        checked.action.do_not_cache = true;
        s.submit(
            &instance,
            action,
            checked.action,
            &checked.command,
            i32::MAX,
            Submitter {
                invocation_id: INVOCATION.into(),
                ..Default::default()
            },
        )
        .await
        .ok()?
    };
    let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
    let mut seen = job.version;
    while tokio::time::Instant::now() < deadline {
        let s = scheduler.upgrade()?;
        if s.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let now = s.wait(&job.id, seen, POLL).await.ok()?;
        drop(s);
        if now.stage == Stage::Completed {
            return now.result();
        }
        seen = now.version;
    }
    None
}
