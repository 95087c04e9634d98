//! Demand per platform, for autoscalers: `kiln_exec_queued{platform}`,
//! `kiln_exec_executing{platform}` and the age of the oldest queued job.
//! The label is a short stable hash of the platform's canonical form
//! (`p` + 12 hex digits, `none` for no properties); at most
//! [`MAX_PLATFORMS`] distinct labels exist, later platforms count as
//! `other`, so clients cannot grow `/metrics` without bound. The mapping
//! from label to properties is served at `/api/v1/platforms`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Scheduler;
use crate::error::Result;
use crate::execution::job::{Platform, label_of};
use crate::time::now_ms;

/// Distinct platform labels at most.
pub(crate) const MAX_PLATFORMS: usize = 64;

/// One platform's demand, as `/api/v1/platforms` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlatformDemand {
    /// Its metric label.
    pub label: String,
    /// The required properties.
    pub properties: Vec<(String, String)>,
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs running.
    pub executing: u64,
}

impl Scheduler {
    /// Refreshes the demand metrics from the job store (every pod's jobs).
    pub(super) async fn refresh_demand(&self) -> Result<()> {
        let demand = self.store.demand().await?;
        let mut known = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
        // Platforms no longer seen read 0, not their last value.
        for label in known.keys() {
            self.metrics
                .queued_by
                .get_or_create(&label_set(label))
                .set(0);
            self.metrics
                .executing_by
                .get_or_create(&label_set(label))
                .set(0);
        }
        let mut oldest = 0i64;
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for d in &demand {
            let mut label = label_of(&d.platform);
            if !known.contains_key(&label) {
                if known.len() < MAX_PLATFORMS {
                    let properties = Platform::decode(&d.platform)
                        .map(|p| p.0)
                        .unwrap_or_default();
                    known.insert(label.clone(), properties);
                } else {
                    label = "other".into();
                }
            }
            let t = totals.entry(label).or_default();
            t.0 += d.queued;
            t.1 += d.executing;
            if d.oldest_queued_at > 0 && (oldest == 0 || d.oldest_queued_at < oldest) {
                oldest = d.oldest_queued_at;
            }
        }
        for (label, (queued, executing)) in &totals {
            self.metrics
                .queued_by
                .get_or_create(&label_set(label))
                .set(*queued as i64);
            self.metrics
                .executing_by
                .get_or_create(&label_set(label))
                .set(*executing as i64);
        }
        let age = if oldest == 0 {
            0
        } else {
            (now_ms() - oldest).max(0) / 1000
        };
        self.metrics.oldest_queued_seconds.set(age);
        *self.demand_now.lock().unwrap_or_else(|p| p.into_inner()) = totals;
        Ok(())
    }

    /// Every platform seen, with its label and current demand.
    pub fn platforms(&self) -> Vec<PlatformDemand> {
        let known = self.platforms.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.demand_now.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .map(|(label, properties)| {
                let (queued, executing) = now.get(label).copied().unwrap_or_default();
                PlatformDemand {
                    label: label.clone(),
                    properties: properties.clone(),
                    queued,
                    executing,
                }
            })
            .collect()
    }
}

fn label_set(label: &str) -> Vec<(&'static str, String)> {
    vec![("platform", label.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::execution::job::Platform;

    #[test]
    fn labels_are_short_stable_hashes() {
        let p = Platform::new(vec![("OSFamily".into(), "linux".into())]).encode();
        assert_eq!(label_of(&p), label_of(&p));
        assert_eq!(label_of(&p).len(), 13);
        assert_eq!(label_of(&Platform::default().encode()), "none");
    }
}
