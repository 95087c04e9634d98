//! What actions cost: the kiln.v1.ResourceUsage `kiln worker` puts in each
//! result's `auxiliary_metadata`, read back for the scheduler's metrics and
//! summed per invocation (jobs carry the invocation id of Bazel's
//! RequestMetadata). A worker's numbers are its own word: negative or
//! absurd values are clamped, never trusted to size anything.

use std::time::Duration;

use prost::Message;

use crate::proto::kiln_v1::ResourceUsage;
use crate::proto::reapi::{ActionResult, ExecuteResponse};

/// The `auxiliary_metadata` type URL of kiln.v1.ResourceUsage.
pub const TYPE_URL: &str = "type.googleapis.com/kiln.v1.ResourceUsage";

/// The usage a result reports, if its worker measured it.
pub fn of(result: &ActionResult) -> Option<ResourceUsage> {
    result
        .execution_metadata
        .as_ref()?
        .auxiliary_metadata
        .iter()
        .find(|a| a.type_url == TYPE_URL)
        .and_then(|a| ResourceUsage::decode(&a.value[..]).ok())
}

/// A duration field in seconds (0 for an unset or negative one).
pub fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    d.and_then(|d| Duration::try_from(d).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// User plus system CPU, in seconds.
pub fn cpu_seconds(u: &ResourceUsage) -> f64 {
    seconds(&u.user_cpu) + seconds(&u.system_cpu)
}

/// A reported byte count, clamped at 0.
pub fn bytes(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One invocation's remote executions, summed.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Totals {
    /// Jobs the invocation queued that finished with a result.
    pub actions: u64,
    /// Of those, the ones whose worker reported usage.
    pub measured: u64,
    /// User-mode CPU over all of them.
    pub user_cpu_seconds: f64,
    /// Kernel CPU over all of them.
    pub system_cpu_seconds: f64,
    /// The largest single action's peak memory.
    pub peak_rss_bytes: u64,
    /// Block-device bytes read.
    pub read_bytes: u64,
    /// Block-device bytes written.
    pub written_bytes: u64,
    /// Time workers spent building input roots.
    pub input_fetch_seconds: f64,
    /// Time workers spent uploading outputs.
    pub output_upload_seconds: f64,
    /// True when the invocation queued more jobs than are summed
    /// ([`MOST_SUMMED`]): the sums cover the newest of them.
    pub partial: bool,
}

/// Jobs summed per invocation at most, so one page view reads a bounded
/// number of rows however large the build.
pub const MOST_SUMMED: u64 = 20_000;

/// Jobs read per query while summing.
const PAGE: u64 = 1_000;

/// Sums the finished jobs `invocation_id` queued on instances `may_read`
/// allows (jobs are kept for `execution.retention`, so older invocations
/// sum to less, then to nothing).
pub async fn of_invocation(
    scheduler: &crate::execution::scheduler::Scheduler,
    invocation_id: &str,
    may_read: impl Fn(&str) -> bool,
) -> crate::error::Result<Totals> {
    let mut totals = Totals::default();
    let mut offset = 0;
    while offset < MOST_SUMMED {
        let page = scheduler
            .list(&crate::execution::job::JobFilter {
                invocation_id: Some(invocation_id.to_string()),
                offset,
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        totals.add_jobs(page.iter().filter(|j| may_read(&j.instance)));
        if (page.len() as u64) < PAGE {
            return Ok(totals);
        }
        offset += PAGE;
    }
    totals.partial = true;
    Ok(totals)
}

impl Totals {
    /// Adds the finished ones of `jobs`.
    pub fn add_jobs<'a>(&mut self, jobs: impl IntoIterator<Item = &'a crate::execution::job::Job>) {
        for response in jobs.into_iter().filter_map(|j| j.response.as_ref()) {
            self.add(response);
        }
    }

    /// Adds one finished job's response (an encoded ExecuteResponse).
    pub fn add(&mut self, response: &[u8]) {
        let Some(result) = ExecuteResponse::decode(response)
            .ok()
            .and_then(|r| r.result)
        else {
            return;
        };
        self.actions += 1;
        let Some(u) = of(&result) else { return };
        self.measured += 1;
        self.user_cpu_seconds += seconds(&u.user_cpu);
        self.system_cpu_seconds += seconds(&u.system_cpu);
        self.peak_rss_bytes = self.peak_rss_bytes.max(bytes(u.max_rss_bytes));
        self.read_bytes = self.read_bytes.saturating_add(bytes(u.read_bytes));
        self.written_bytes = self.written_bytes.saturating_add(bytes(u.written_bytes));
        self.input_fetch_seconds += seconds(&u.input_fetch);
        self.output_upload_seconds += seconds(&u.output_upload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::ExecutedActionMetadata;

    fn response(usage: Option<ResourceUsage>) -> Vec<u8> {
        let meta = ExecutedActionMetadata {
            auxiliary_metadata: usage
                .into_iter()
                .map(|u| prost_types::Any {
                    type_url: TYPE_URL.into(),
                    value: u.encode_to_vec(),
                })
                .collect(),
            ..Default::default()
        };
        ExecuteResponse {
            result: Some(ActionResult {
                execution_metadata: Some(meta),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn secs(s: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    }

    #[test]
    fn totals_sum_cpu_and_io_and_keep_the_peak() {
        let mut t = Totals::default();
        for (cpu, rss) in [(2, 100), (3, 700)] {
            t.add(&response(Some(ResourceUsage {
                user_cpu: secs(cpu),
                system_cpu: secs(1),
                max_rss_bytes: rss,
                read_bytes: 10,
                written_bytes: 20,
                input_fetch: secs(1),
                output_upload: secs(2),
            })));
        }
        t.add(&response(None));
        t.add(b"\xff not a response");
        assert_eq!(t.actions, 3);
        assert_eq!(t.measured, 2);
        assert_eq!(t.user_cpu_seconds, 5.0);
        assert_eq!(t.system_cpu_seconds, 2.0);
        assert_eq!(t.peak_rss_bytes, 700);
        assert_eq!((t.read_bytes, t.written_bytes), (20, 40));
        assert_eq!((t.input_fetch_seconds, t.output_upload_seconds), (2.0, 4.0));
    }

    #[test]
    fn a_workers_negative_numbers_count_as_nothing() {
        let mut t = Totals::default();
        t.add(&response(Some(ResourceUsage {
            user_cpu: secs(-5),
            max_rss_bytes: -1,
            read_bytes: i64::MIN,
            ..Default::default()
        })));
        assert_eq!(t.measured, 1);
        assert_eq!(t.user_cpu_seconds, 0.0);
        assert_eq!((t.peak_rss_bytes, t.read_bytes), (0, 0));
    }
}
