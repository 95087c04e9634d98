//! The stop sequence, in the order load balancers need it: report
//! NOT_SERVING (gRPC health and `/healthz`) and stop handing out work,
//! wait `grpc.shutdown_delay` so they take the pod out, then stop accepting
//! calls; in-flight calls then have `grace_period` to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::execution::scheduler::Scheduler;

/// What the stop sequence acts on.
pub(super) struct Stop {
    /// Turns true when [`super::RunningServer::stop`] is called.
    pub requested: watch::Receiver<bool>,
    /// What `/healthz` reports.
    pub serving: Arc<AtomicBool>,
    /// Stops handing out leases.
    pub scheduler: Option<Arc<Scheduler>>,
    /// gRPC health.
    pub reporter: HealthReporter,
    /// The services it reports on (those the server routes).
    pub routed: Vec<&'static str>,
    /// How long to report NOT_SERVING before refusing calls.
    pub delay: Duration,
    /// Tells the gRPC and HTTP servers to stop accepting.
    pub stop_grpc: watch::Sender<bool>,
}

/// Waits (in a task) for a stop request, then runs the sequence.
pub(super) fn sequence(mut stop: Stop) {
    tokio::spawn(async move {
        let _ = stop.requested.wait_for(|s| *s).await;
        stop.serving.store(false, Ordering::SeqCst);
        if let Some(scheduler) = &stop.scheduler {
            scheduler.stop();
        }
        super::set_health(&stop.reporter, &stop.routed, ServingStatus::NotServing).await;
        let delay = stop.delay;
        tracing::info!(?delay, "shutting down: reporting NOT_SERVING");
        tokio::time::sleep(delay).await;
        let _ = stop.stop_grpc.send(true);
    });
}
