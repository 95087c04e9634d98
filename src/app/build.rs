//! Step one of a start: everything the services need, built from config
//! (stores, instances, the scheduler, build-event storage, upload spools,
//! authentication), before any listener serves a call.

use std::path::Path;
use std::sync::Arc;

use super::services::Parts;
use crate::auth::Authenticator;
use crate::config::{Config, HttpAuth};
use crate::error::{Error, Result};
use crate::instance::Instances;
use crate::metrics::Metrics;
use crate::upload::Uploads;

/// What [`build`] made.
pub(super) struct Built {
    /// What the gRPC services share.
    pub parts: Parts,
    /// Present when authentication is on.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Who may read the HTTP listener's guarded routes.
    pub http_access: crate::http::HttpAccess,
    /// Bazel's HTTP cache protocol, when enabled.
    pub http_cache: Option<crate::http_cache::CacheState>,
    /// Per-identity rate limits and the in-flight cap, shared by the gRPC
    /// edge and the HTTP listener (none when nothing is limited).
    pub limits: Option<Arc<crate::edge::limits::Limits>>,
}

/// Builds every component from a validated `config`, fs paths under
/// `data_dir`.
pub(super) async fn build(config: &Config, data_dir: &Path) -> Result<Built> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
    let metrics = Metrics::new();
    let (authenticator, policy) = crate::auth::from_config(&config.auth).await?;
    let events = crate::bes::open(&config.build_events, data_dir).await?;
    let webhooks = crate::bes::webhook::Webhooks::start(
        config.build_events.webhooks.clone(),
        &metrics,
        config.build_events.webhook_backoff.0,
    );
    let on = &config.insights;
    let insights = (on.nondeterminism || on.misses || on.scorecards || on.reexecute_one_in > 0)
        .then(|| {
            crate::insights::Insights::new(events.clone(), webhooks.clone(), &metrics, on.clone())
        });
    let instances = Instances::build(
        config,
        data_dir.to_path_buf(),
        metrics.clone(),
        policy.clone(),
        insights.clone(),
    )
    .await?;
    let scheduler = if config.execution.enabled {
        let scheduler = crate::execution::open(
            &config.execution,
            data_dir,
            instances.clone(),
            metrics.clone(),
        )
        .await?;
        if let Some(i) = &insights {
            let weak = Arc::downgrade(&scheduler);
            i.set_rerun(weak);
        }
        Some(scheduler)
    } else {
        None
    };
    let limits = crate::edge::limits::Limits::from_config(&config.limits);
    let http_access = crate::http::HttpAccess {
        limits: limits.clone(),
        guard: crate::edge::http_auth::HttpGuard {
            authenticator: authenticator.clone(),
            policy: policy.clone(),
            instance: config.auth.build_events_instance.clone(),
        },
        build_events: config.auth.http_auth == HttpAuth::Required,
        metrics: config.auth.metrics_auth == HttpAuth::Required,
    };
    let http_cache = config
        .http_cache
        .enabled
        .then(|| crate::http_cache::CacheState {
            instances: instances.clone(),
            max_upload: config.http_cache.max_upload.0,
        });
    let parts = Parts {
        scheduler,
        instances,
        bes_access: crate::bes::service::Access {
            policy,
            instance: config.auth.build_events_instance.clone(),
        },
        uploads: Arc::new(Uploads::new(
            data_dir.join("uploads"),
            config.uploads.clone(),
        )?),
        events,
        webhooks,
        assets: if config.remote_asset.enabled {
            Some(Arc::new(crate::asset::Assets::new(
                &config.remote_asset,
                &data_dir.join("asset-spool"),
            )?))
        } else {
            None
        },
        metrics,
    };
    Ok(Built {
        parts,
        authenticator,
        http_access,
        http_cache,
        limits,
    })
}
