//! A job as people read it: its ExecuteResponse decoded once into what
//! went wrong or its exit code, the worker that ran it, how long it ran and
//! what it used. Pages and the CLI show this; they never decode responses.

use prost::Message;

use super::job::Job;
use crate::proto::kiln_v1::ResourceUsage;
use crate::proto::reapi::ExecuteResponse;

/// A job, ready to show.
#[derive(Debug, Clone)]
pub struct Shown {
    /// `exit N`, the error's message, or empty while unfinished.
    pub outcome: String,
    /// The worker that ran it (its result's metadata, else its lease).
    pub worker: String,
    /// How long its last run took, once finished.
    pub run_ms: Option<i64>,
    /// What the run used, when its worker measured it.
    pub usage: Option<ResourceUsage>,
}

impl Shown {
    /// CPU time of the run (user and system), when measured.
    pub fn cpu_ms(&self) -> Option<i64> {
        self.usage
            .as_ref()
            .map(|u| (super::usage::cpu_seconds(u) * 1000.0) as i64)
    }

    /// Peak memory of the run, when measured.
    pub fn peak_rss(&self) -> Option<u64> {
        self.usage
            .as_ref()
            .map(|u| super::usage::bytes(u.max_rss_bytes))
    }
}

impl Job {
    /// The result its last run produced, once finished with one.
    pub fn result(&self) -> Option<crate::proto::reapi::ActionResult> {
        self.response()?.result
    }

    fn response(&self) -> Option<ExecuteResponse> {
        ExecuteResponse::decode(&self.response.as_ref()?[..]).ok()
    }

    /// This job, ready to show.
    pub fn shown(&self) -> Shown {
        let run_ms = (self.completed_at > self.started_at && self.started_at > 0)
            .then(|| self.completed_at - self.started_at);
        let mut shown = Shown {
            outcome: String::new(),
            worker: self.bot.clone().unwrap_or_default(),
            run_ms,
            usage: None,
        };
        let Some(r) = self.response() else {
            return shown;
        };
        let error = r
            .status
            .as_ref()
            .filter(|s| s.code != 0)
            .map(|s| s.message.clone());
        match r.result {
            Some(res) => {
                shown.outcome = error.unwrap_or_else(|| format!("exit {}", res.exit_code));
                shown.worker = res
                    .execution_metadata
                    .as_ref()
                    .map(|m| m.worker.clone())
                    .unwrap_or_default();
                shown.usage = super::usage::of(&res);
            }
            None => {
                shown.outcome = error.unwrap_or_default();
                shown.worker.clear();
            }
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{ActionResult, ExecutedActionMetadata};

    fn job(response: Option<ExecuteResponse>) -> Job {
        Job {
            bot: Some("bot-1".into()),
            started_at: 1_000,
            completed_at: 1_250,
            response: response.map(|r| r.encode_to_vec().into()),
            ..crate::execution::store::tests::job("j", None, &[], 0)
        }
    }

    #[test]
    fn a_finished_job_shows_its_exit_its_worker_and_run_time() {
        let j = job(Some(ExecuteResponse {
            result: Some(ActionResult {
                exit_code: 3,
                execution_metadata: Some(ExecutedActionMetadata {
                    worker: "w7".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let s = j.shown();
        assert_eq!((s.outcome.as_str(), s.worker.as_str()), ("exit 3", "w7"));
        assert_eq!(s.run_ms, Some(250));
        assert!(s.usage.is_none() && s.cpu_ms().is_none());
    }

    #[test]
    fn an_error_is_shown_before_the_exit_code_and_an_unfinished_job_shows_its_lease() {
        let j = job(Some(ExecuteResponse {
            status: Some(tonic_types::pb::Status {
                code: 4,
                message: "deadline".into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert_eq!(j.shown().outcome, "deadline");
        assert_eq!(j.shown().worker, "");
        let unfinished = job(None);
        assert_eq!(unfinished.shown().worker, "bot-1");
        assert_eq!(unfinished.shown().outcome, "");
    }
}
