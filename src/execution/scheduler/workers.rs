//! The workers this pod has heard from lately (for the operations page):
//! each bot session's last update, what it offers and whether it holds a
//! lease. Pods keep their own: a worker polls one pod at a time, so a page
//! served by another pod lists the workers connected there.

use std::time::Duration;

use serde::Serialize;

use super::Scheduler;
use crate::execution::job::Offers;

/// A worker counts as connected this long after its last update.
pub(super) const SEEN_FOR: Duration = Duration::from_secs(120);
/// Workers remembered at most.
pub(super) const MAX_WORKERS: u64 = 10_000;

/// One connected worker.
#[derive(Debug, Clone, Serialize)]
pub struct SeenWorker {
    /// Its bot session name.
    pub bot: String,
    /// The id it gives itself (`kiln worker --bot-id`, often the host).
    pub bot_id: String,
    /// The instance it serves.
    pub instance: String,
    /// What it offers, `name=value` pairs.
    pub offers: Vec<String>,
    /// Its last update (ms since the epoch).
    pub last_seen_ms: i64,
    /// Whether it reported a lease it is running.
    pub busy: bool,
    /// How it confines actions, as it says (kiln's worker: `bwrap` or
    /// `none`); None for bots that do not say.
    pub sandbox: Option<String>,
}

impl Scheduler {
    /// Notes an update from `bot`.
    pub fn saw_worker(&self, bot: &str, bot_id: &str, instance: &str, offers: &Offers, busy: bool) {
        let sandbox = offers
            .get(crate::execution::bots::SANDBOX_PROPERTY)
            .and_then(|values| values.iter().next())
            .map(|v| v.chars().take(64).collect());
        let offers = offers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
            .take(64)
            .collect();
        self.workers.insert(
            bot.to_string(),
            SeenWorker {
                bot: bot.to_string(),
                bot_id: bot_id.chars().take(256).collect(),
                instance: instance.to_string(),
                offers,
                last_seen_ms: crate::time::now_ms(),
                busy,
                sandbox,
            },
        );
    }

    /// The workers heard from in the last two minutes, by name.
    pub fn workers(&self) -> Vec<SeenWorker> {
        let mut all: Vec<SeenWorker> = self.workers.iter().map(|(_, w)| w).collect();
        all.sort_by(|a, b| a.bot.cmp(&b.bot));
        all
    }
}
