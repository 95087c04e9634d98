//! A synthetic Bazel: builds the build_event_stream events Bazel publishes and
//! wraps them the way it does for a Build Event Service.

use bytes::Bytes;
use kiln::proto::bep::{self, build_event::Payload, build_event_id::Id};
use kiln::proto::bes_v1::{
    self as v1, OrderedBuildEvent, PublishBuildToolEventStreamRequest, StreamId, build_event::Event,
};
use prost::Message;

pub fn stream_id(build: &str, invocation: &str) -> StreamId {
    StreamId {
        build_id: build.into(),
        invocation_id: invocation.into(),
        component: v1::stream_id::BuildComponent::Tool as i32,
    }
}

fn any(ev: &bep::BuildEvent) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/build_event_stream.BuildEvent".into(),
        value: ev.encode_to_vec(),
    }
}

fn id(id: Id) -> Option<bep::BuildEventId> {
    Some(bep::BuildEventId { id: Some(id) })
}

/// The Bazel events of a `bazel test` of one passing or failing test and
/// one binary, in the order Bazel sends them.
/// A BuildMetadata event (`--build_metadata` pairs).
pub fn metadata_event(pairs: &[(&str, &str)]) -> bep::BuildEvent {
    bep::BuildEvent {
        id: id(Id::BuildMetadata(bep::build_event_id::BuildMetadataId {})),
        payload: Some(Payload::BuildMetadata(bep::BuildMetadata {
            metadata: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
        ..Default::default()
    }
}

pub fn bazel_events(test_passes: bool) -> Vec<bep::BuildEvent> {
    use bep::build_event_id as ids;
    let test_status = if test_passes {
        bep::TestStatus::Passed
    } else {
        bep::TestStatus::Failed
    };
    let exit = if test_passes {
        (0, "SUCCESS")
    } else {
        (3, "TESTS_FAILED")
    };
    vec![
        bep::BuildEvent {
            id: id(Id::Started(ids::BuildStartedId {})),
            payload: Some(Payload::Started(bep::BuildStarted {
                command: "test".into(),
                start_time_millis: 1_700_000_000_000,
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::Pattern(ids::PatternExpandedId {
                pattern: vec!["//app:all".into()],
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::WorkspaceStatus(ids::WorkspaceStatusId {})),
            payload: Some(Payload::WorkspaceStatus(bep::WorkspaceStatus {
                item: vec![
                    bep::workspace_status::Item {
                        key: "BUILD_USER".into(),
                        value: "alice".into(),
                    },
                    bep::workspace_status::Item {
                        key: "BUILD_HOST".into(),
                        value: "box1".into(),
                    },
                ],
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::TargetConfigured(ids::TargetConfiguredId {
                label: "//app:hello".into(),
                aspect: String::new(),
            })),
            payload: Some(Payload::Configured(bep::TargetConfigured {
                target_kind: "cc_binary rule".into(),
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::TargetCompleted(ids::TargetCompletedId {
                label: "//app:hello".into(),
                ..Default::default()
            })),
            payload: Some(Payload::Completed(bep::TargetComplete {
                success: true,
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::TargetCompleted(ids::TargetCompletedId {
                label: "//app:hello_test".into(),
                ..Default::default()
            })),
            payload: Some(Payload::Completed(bep::TargetComplete {
                success: true,
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::TestResult(ids::TestResultId {
                label: "//app:hello_test".into(),
                run: 1,
                shard: 1,
                attempt: 1,
                ..Default::default()
            })),
            payload: Some(Payload::TestResult(bep::TestResult {
                status: test_status as i32,
                test_attempt_duration_millis: 120,
                test_action_output: vec![bep::File {
                    name: "test.log".into(),
                    file: Some(bep::file::File::Uri(
                        "bytestream://localhost/blobs/abc/1".into(),
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::TestSummary(ids::TestSummaryId {
                label: "//app:hello_test".into(),
                ..Default::default()
            })),
            payload: Some(Payload::TestSummary(bep::TestSummary {
                overall_status: test_status as i32,
                total_run_count: 1,
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::BuildMetrics(ids::BuildMetricsId {})),
            payload: Some(Payload::BuildMetrics(bep::BuildMetrics {
                action_summary: Some(bep::build_metrics::ActionSummary {
                    actions_executed: 10,
                    actions_created: 12,
                    runner_count: vec![
                        bep::build_metrics::action_summary::RunnerCount {
                            name: "remote cache hit".into(),
                            count: 7,
                            ..Default::default()
                        },
                        bep::build_metrics::action_summary::RunnerCount {
                            name: "internal".into(),
                            count: 3,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        },
        bep::BuildEvent {
            id: id(Id::BuildFinished(ids::BuildFinishedId {})),
            payload: Some(Payload::Finished(bep::BuildFinished {
                exit_code: Some(bep::build_finished::ExitCode {
                    name: exit.1.into(),
                    code: exit.0,
                }),
                finish_time_millis: 1_700_000_004_500,
                ..Default::default()
            })),
            ..Default::default()
        },
    ]
}

/// The PublishBuildToolEventStream requests for `events`, numbered from 1,
/// ending with component_stream_finished when `finish`.
pub fn requests(
    sid: &StreamId,
    events: &[bep::BuildEvent],
    finish: bool,
) -> Vec<PublishBuildToolEventStreamRequest> {
    let mut out: Vec<v1::BuildEvent> = events
        .iter()
        .map(|e| v1::BuildEvent {
            event: Some(Event::BazelEvent(any(e))),
            ..Default::default()
        })
        .collect();
    if finish {
        out.push(v1::BuildEvent {
            event: Some(Event::ComponentStreamFinished(
                v1::build_event::BuildComponentStreamFinished { r#type: 1 },
            )),
            ..Default::default()
        });
    }
    out.into_iter()
        .enumerate()
        .map(|(i, event)| PublishBuildToolEventStreamRequest {
            ordered_build_event: Some(OrderedBuildEvent {
                stream_id: Some(sid.clone()),
                sequence_number: i as i64 + 1,
                event: Some(event),
            }),
            notification_keywords: vec!["command_name=test".into(), "protocol_name=BEP".into()],
            ..Default::default()
        })
        .collect()
}

/// A progress event of about `size` bytes, for load.
pub fn progress(n: i32, size: usize) -> bep::BuildEvent {
    bep::BuildEvent {
        id: id(Id::Progress(bep::build_event_id::ProgressId {
            opaque_count: n,
        })),
        payload: Some(Payload::Progress(bep::Progress {
            stdout: "x".repeat(size),
            stderr: String::new(),
        })),
        ..Default::default()
    }
}

pub fn undecodable() -> Bytes {
    Bytes::from_static(b"\xff\xff\xff not a proto")
}

/// Sends `reqs` on one stream and collects the acknowledgements (and the
/// final status, if the server ended the stream with an error).
pub async fn publish(
    kiln: &super::Kiln,
    reqs: Vec<PublishBuildToolEventStreamRequest>,
) -> (Vec<i64>, Option<tonic::Status>) {
    let mut client = kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient::new(
        kiln.channel().await,
    );
    let mut acks = Vec::new();
    let resp = client
        .publish_build_tool_event_stream(tokio_stream::iter(reqs))
        .await;
    let mut stream = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return (acks, Some(s)),
    };
    loop {
        match stream.message().await {
            Ok(Some(v1::PublishBuildToolEventStreamResponse {
                sequence_number, ..
            })) => acks.push(sequence_number),
            Ok(None) => return (acks, None),
            Err(s) => return (acks, Some(s)),
        }
    }
}
