//! Build events: the Build Event Service Bazel publishes to (`--bes_backend`),
//! their durable storage, invocation summaries, queries (gRPC and HTTP) and
//! webhooks. Pods keep no stream state another pod would need: everything a
//! reconnecting client resumes from is in the database.

pub(crate) mod http;
pub(crate) mod query;
pub(crate) mod service;
pub mod sql;
mod sql_insights;
mod sql_miss_chunk;
mod sql_misses;
mod sql_pages;
mod sql_scorecards;
mod sql_writer;
pub mod store;
pub(crate) mod summary;
pub(crate) mod webhook;

use std::path::Path;
use std::sync::Arc;

use crate::config::BuildEventsConfig;
use crate::error::Result;
use store::EventStore;

/// Limits on what one invocation may publish.
#[derive(Debug, Clone, Copy)]
pub struct BesLimits {
    /// Events per invocation.
    pub max_events_per_invocation: u64,
    /// Bytes per event.
    pub max_event_size: u64,
}

impl From<&BuildEventsConfig> for BesLimits {
    fn from(c: &BuildEventsConfig) -> Self {
        BesLimits {
            max_events_per_invocation: c.max_events_per_invocation,
            max_event_size: c.max_event_size.0,
        }
    }
}

/// The database URL `config` names: from its environment variable if one is
/// set, with a relative SQLite path placed under `data_dir`.
pub fn database_url(config: &BuildEventsConfig, data_dir: &Path) -> Result<String> {
    crate::sql::database_url(
        &config.database,
        config.database_env.as_deref(),
        "build_events.database_env",
        data_dir,
    )
}

/// Opens the configured event store.
pub async fn open(config: &BuildEventsConfig, data_dir: &Path) -> Result<Arc<dyn EventStore>> {
    let url = database_url(config, data_dir)?;
    let store: Arc<dyn EventStore> = Arc::new(sql::SqlEventStore::connect(&url).await?);
    retention(Arc::downgrade(&store), config.retention.0);
    Ok(store)
}

/// Invocations deleted per batch: small enough that no transaction holds
/// the database for long.
const PURGE_BATCH: i64 = 100;

/// Deletes build events older than `keep`, now and then every ten minutes,
/// until the store is dropped (with the server that owns it).
fn retention(store: std::sync::Weak<dyn EventStore>, keep: std::time::Duration) {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else { return };
            let before = crate::time::now_ms().saturating_sub(keep_ms);
            let mut deleted = 0;
            loop {
                match store.purge(before, PURGE_BATCH).await {
                    Ok(0) => break,
                    Ok(n) => deleted += n,
                    Err(e) => {
                        tracing::warn!(error = %e, "build-event retention failed; retrying later");
                        break;
                    }
                }
            }
            if deleted > 0 {
                tracing::info!(deleted, "deleted invocations past build_events.retention");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let mut c: BuildEventsConfig = serde_saphyr::from_str("{}").unwrap();
        let dir = Path::new("/data");
        assert_eq!(
            database_url(&c, dir).unwrap(),
            "sqlite:///data/build-events.db?mode=rwc"
        );
        c.database = "sqlite:///abs/x.db".into();
        assert_eq!(
            database_url(&c, dir).unwrap(),
            "sqlite:///abs/x.db?mode=rwc"
        );
        c.database = "postgres://u:p@h/db".into();
        assert_eq!(database_url(&c, dir).unwrap(), "postgres://u:p@h/db");
        c.database_env = Some("KILN_TEST_SURELY_UNSET_VAR".into());
        assert!(database_url(&c, dir).is_err());
    }
}
