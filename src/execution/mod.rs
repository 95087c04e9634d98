//! Remote execution: the scheduler and its durable job store. Execute,
//! Operations and Bots ([`crate::service`]) are thin shells over
//! [`scheduler::Scheduler`]; `kiln worker` ([`crate::client::worker`]) is a bot.
//!
//! Stateless pods: jobs, leases and results live in the [`store::JobStore`]
//! (SQL for real use), so any pod accepts, hands out or reports on any job,
//! and a pod or worker that dies loses nothing.

pub mod bots;
pub mod execute;
pub mod inputs;
pub mod job;
pub mod memory;
mod news;
pub mod scheduler;
mod shown;
pub mod sql;
mod sql_group;
pub mod store;
pub mod usage;
pub mod validate;

use std::path::Path;
use std::sync::Arc;

use crate::config::ExecutionConfig;
use crate::error::Result;
use crate::instance::Instances;
use crate::metrics::Metrics;
use scheduler::Scheduler;

/// Opens the configured job store and starts a scheduler (with its
/// housekeeping task) over it.
pub async fn open(
    config: &ExecutionConfig,
    data_dir: &Path,
    instances: Instances,
    metrics: Arc<Metrics>,
) -> Result<Arc<Scheduler>> {
    let store: Arc<dyn store::JobStore> = if config.database == "memory" {
        Arc::new(memory::MemoryJobStore::new())
    } else {
        let url = crate::sql::database_url(
            &config.database,
            config.database_env.as_deref(),
            "execution.database_env",
            data_dir,
        )?;
        Arc::new(sql::SqlJobStore::connect_with(&url, config.notifications).await?)
    };
    let scheduler = Scheduler::new(store, instances, config.into(), &metrics);
    scheduler.start_housekeeping();
    Ok(scheduler)
}
