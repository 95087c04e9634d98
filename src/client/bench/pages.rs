//! The `pages` workload: the web UI under a large invocation. Setup
//! publishes one invocation of `--bes-events` events (default 100,000)
//! with 1,000 targets, 300 of them tests (some failing, some flaky); then
//! each page is fetched over HTTP (`--http-target`) in its own timed phase:
//! the invocation list, the invocation page, its whole build output, the
//! tests overview and one test's history.

use std::time::Duration;

use super::Ctx;
use super::bes::{bazel, publish, wrap};
use super::runner::{Done, Stats, drive};
use crate::error::{Error, Result};
use crate::proto::bep::{self, build_event::Payload, build_event_id::Id};
use crate::proto::bes_v1::{PublishBuildToolEventStreamRequest, StreamId, build_event::Event};

/// Targets in the invocation, and how many of them are tests.
const TARGETS: usize = 1000;
const TESTS: usize = 300;

fn id(id: Id) -> Option<bep::BuildEventId> {
    Some(bep::BuildEventId { id: Some(id) })
}

/// One big invocation's requests: start, 1,000 targets (configured,
/// completed, tests with results and summaries), progress output filling
/// up to `total` events, finish.
fn big_stream(invocation: &str, total: u64) -> Vec<PublishBuildToolEventStreamRequest> {
    let sid = StreamId {
        build_id: format!("bench-{invocation}"),
        invocation_id: invocation.into(),
        component: 3,
    };
    let mut events = vec![bep::BuildEvent {
        id: id(Id::Started(Default::default())),
        payload: Some(Payload::Started(bep::BuildStarted {
            command: "test".into(),
            start_time_millis: crate::time::now_ms(),
            ..Default::default()
        })),
        ..Default::default()
    }];
    for t in 0..TARGETS {
        let label = format!("//pkg{}:target{t}", t % 37);
        events.push(bep::BuildEvent {
            id: id(Id::TargetConfigured(
                bep::build_event_id::TargetConfiguredId {
                    label: label.clone(),
                    ..Default::default()
                },
            )),
            payload: Some(Payload::Configured(bep::TargetConfigured {
                target_kind: if t < TESTS {
                    "sh_test rule"
                } else {
                    "cc_library rule"
                }
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        events.push(bep::BuildEvent {
            id: id(Id::TargetCompleted(
                bep::build_event_id::TargetCompletedId {
                    label: label.clone(),
                    ..Default::default()
                },
            )),
            payload: Some(Payload::Completed(bep::TargetComplete {
                success: true,
                ..Default::default()
            })),
            ..Default::default()
        });
        if t < TESTS {
            // Every tenth test fails once and then passes; every
            // twenty-third fails.
            let attempts = if t % 10 == 0 { 2 } else { 1 };
            for attempt in 1..=attempts {
                let status = if t % 23 == 0 || (attempts == 2 && attempt == 1) {
                    bep::TestStatus::Failed
                } else {
                    bep::TestStatus::Passed
                };
                events.push(bep::BuildEvent {
                    id: id(Id::TestResult(bep::build_event_id::TestResultId {
                        label: label.clone(),
                        run: 1,
                        shard: 1,
                        attempt,
                        ..Default::default()
                    })),
                    payload: Some(Payload::TestResult(bep::TestResult {
                        status: status as i32,
                        test_attempt_duration_millis: 100 + (t as i64 % 50) * 10,
                        ..Default::default()
                    })),
                    ..Default::default()
                });
            }
        }
    }
    let fill = total.saturating_sub(events.len() as u64 + 2);
    for n in 0..fill {
        events.push(bep::BuildEvent {
            id: id(Id::Progress(bep::build_event_id::ProgressId {
                opaque_count: n as i32,
            })),
            payload: Some(Payload::Progress(bep::Progress {
                stdout: String::new(),
                stderr: format!("[{n} / {fill}] Compiling pkg/file_{n}.cc; 0s remote\n"),
            })),
            ..Default::default()
        });
    }
    events.push(bep::BuildEvent {
        id: id(Id::BuildFinished(Default::default())),
        payload: Some(Payload::Finished(bep::BuildFinished {
            exit_code: Some(bep::build_finished::ExitCode {
                name: "TESTS_FAILED".into(),
                code: 3,
            }),
            finish_time_millis: crate::time::now_ms() + 60_000,
            ..Default::default()
        })),
        ..Default::default()
    });
    let mut out: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| wrap(&sid, i as i64 + 1, bazel(e)))
        .collect();
    let last = out.len() as i64 + 1;
    out.push(wrap(
        &sid,
        last,
        Event::ComponentStreamFinished(
            crate::proto::bes_v1::build_event::BuildComponentStreamFinished { r#type: 1 },
        ),
    ));
    out
}

/// Publishes the invocation, waits until kiln has it finished, then times
/// each page.
pub(crate) async fn pages(ctx: &Ctx, http: &str, total: u64) -> Result<Vec<Stats>> {
    let http = http.trim_end_matches('/').to_string();
    let invocation = uuid::Uuid::new_v4().to_string();
    publish(ctx.channel(0), big_stream(&invocation, total)).await?;
    let client = reqwest::Client::new();
    let fail = |e: reqwest::Error| Error::Unavailable(format!("{http}: {e}"));
    // The summary commits with the stream's last events: poll it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .get(format!("{http}/api/v1/invocations/{invocation}"))
            .send()
            .await
            .map_err(fail)?;
        if r.status().is_success() && !r.text().await.map_err(fail)?.contains("IN_PROGRESS") {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::DeadlineExceeded(format!(
                "invocation {invocation} was not finished within a minute"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pages = [
        // The cheapest HTTP round trip: the baseline the pages compare to.
        ("http_healthz", "/healthz".to_string()),
        ("page_list", "/".to_string()),
        ("page_invocation", format!("/invocation/{invocation}")),
        ("page_log", format!("/invocation/{invocation}/log")),
        ("page_tests", "/tests".to_string()),
        ("page_test", "/tests/%2F%2Fpkg0%3Atarget0".to_string()),
    ];
    let mut out = Vec::new();
    for (name, path) in pages {
        let url = format!("{http}{path}");
        let client = client.clone();
        let stats = drive(
            name,
            ctx.concurrency,
            ctx.limit,
            ctx.progress,
            move |_, _| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let r = client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    if !r.status().is_success() {
                        return Err(tonic::Status::unknown(format!(
                            "{url}: HTTP {}",
                            r.status()
                        )));
                    }
                    let body = r
                        .bytes()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    Ok(Done {
                        bytes: body.len() as u64,
                        items: 1,
                    })
                }
            },
        )
        .await;
        out.push(stats);
    }
    Ok(out)
}
