//! The fold over event sequences, and the bounds it keeps.

use super::*;
use bep::build_event::Payload;
use bep::build_event_id::Id;

fn wrap(id: Option<Id>, payload: Payload) -> v1::BuildEvent {
    let event = bep::BuildEvent {
        id: id.map(|id| bep::BuildEventId { id: Some(id) }),
        payload: Some(payload),
        ..Default::default()
    };
    v1::BuildEvent {
        event: Some(v1::build_event::Event::BazelEvent(prost_types::Any {
            type_url: BAZEL_EVENT_TYPE.into(),
            value: event.encode_to_vec(),
        })),
        ..Default::default()
    }
}

fn finished_stream() -> v1::BuildEvent {
    v1::BuildEvent {
        event: Some(v1::build_event::Event::ComponentStreamFinished(
            v1::build_event::BuildComponentStreamFinished { r#type: 1 },
        )),
        ..Default::default()
    }
}

fn started(ms: i64) -> v1::BuildEvent {
    wrap(
        Some(Id::Started(Default::default())),
        Payload::Started(bep::BuildStarted {
            command: "test".into(),
            start_time_millis: ms,
            ..Default::default()
        }),
    )
}

fn finished(ok: bool, ms: i64) -> v1::BuildEvent {
    wrap(
        Some(Id::BuildFinished(Default::default())),
        Payload::Finished(bep::BuildFinished {
            overall_success: ok,
            finish_time_millis: ms,
            ..Default::default()
        }),
    )
}

fn test_result(label: &str, status: bep::TestStatus, ms: i64, cached: bool) -> v1::BuildEvent {
    wrap(
        Some(Id::TestResult(bep::build_event_id::TestResultId {
            label: label.into(),
            ..Default::default()
        })),
        Payload::TestResult(bep::TestResult {
            status: status as i32,
            test_attempt_duration_millis: ms,
            cached_locally: cached,
            ..Default::default()
        }),
    )
}

fn fold(events: &[v1::BuildEvent]) -> Invocation {
    let mut inv = Invocation::new("inv", "build");
    for e in events {
        inv.apply(e);
    }
    inv
}

#[test]
fn the_fold_over_event_sequences() {
    struct Case {
        name: &'static str,
        events: Vec<v1::BuildEvent>,
        status: Status,
        exit_code: Option<i32>,
        duration_ms: Option<i64>,
    }
    let cases = vec![
        Case {
            name: "a passing build",
            events: vec![started(1000), finished(true, 4000), finished_stream()],
            status: Status::Succeeded,
            exit_code: Some(0),
            duration_ms: Some(3000),
        },
        Case {
            name: "a failing build",
            events: vec![started(1000), finished(false, 1500), finished_stream()],
            status: Status::Failed,
            exit_code: Some(1),
            duration_ms: Some(500),
        },
        Case {
            name: "a stream closed before BuildFinished",
            events: vec![started(1000), finished_stream()],
            status: Status::Disconnected,
            exit_code: None,
            duration_ms: None,
        },
        Case {
            name: "still running",
            events: vec![started(1000)],
            status: Status::InProgress,
            exit_code: None,
            duration_ms: None,
        },
        Case {
            name: "a finish before the start is no duration",
            events: vec![started(5000), finished(true, 4000), finished_stream()],
            status: Status::Succeeded,
            exit_code: Some(0),
            duration_ms: None,
        },
    ];
    for c in cases {
        let inv = fold(&c.events);
        assert_eq!(inv.status, c.status, "{}", c.name);
        assert_eq!(inv.exit_code, c.exit_code, "{}", c.name);
        assert_eq!(inv.duration_ms, c.duration_ms, "{}", c.name);
        assert_eq!(
            inv.event_count,
            (c.events.len() - 1).max(1) as u64,
            "{}",
            c.name
        );
    }
}

#[test]
fn tests_sum_their_attempts() {
    use bep::TestStatus::{Failed, Passed};
    let inv = fold(&[
        test_result("//a:t", Failed, 100, false),
        test_result("//a:t", Passed, 200, false),
        test_result("//b:t", Passed, 5, true),
        test_result("//c:t", Passed, i64::MAX, false),
        test_result("//c:t", Passed, i64::MAX, false),
    ]);
    let by = |l: &str| inv.tests.iter().find(|t| t.label == l).unwrap();
    assert_eq!(by("//a:t").attempts, 2);
    assert_eq!(by("//a:t").duration_ms, 300);
    assert_eq!(
        by("//a:t").status,
        TestStatus::Failed,
        "the first real status is kept"
    );
    assert!(by("//b:t").cached);
    assert_eq!(by("//c:t").duration_ms, i64::MAX, "saturates, never wraps");
}

#[test]
fn a_pass_after_a_failure_of_the_same_shard_is_flaky() {
    use bep::TestStatus::{Failed, Passed};
    // Shards 1 and 2: one fails and the other passes (not flaky);
    // shard 1's retry passes (flaky).
    let attempt = |shard, attempt, status| {
        let mut e = test_result("//a:t", status, 10, false);
        if let Some(v1::build_event::Event::BazelEvent(any)) = &mut e.event {
            let mut b = bep::BuildEvent::decode(&any.value[..]).unwrap();
            b.id = Some(bep::BuildEventId {
                id: Some(Id::TestResult(bep::build_event_id::TestResultId {
                    label: "//a:t".into(),
                    run: 1,
                    shard,
                    attempt,
                    ..Default::default()
                })),
            });
            any.value = b.encode_to_vec();
        }
        e
    };
    let mixed_shards = fold(&[attempt(1, 1, Failed), attempt(2, 1, Passed)]);
    assert!(!mixed_shards.tests[0].flaky);
    let retried = fold(&[
        attempt(1, 1, Failed),
        attempt(2, 1, Passed),
        attempt(1, 2, Passed),
    ]);
    let t = &retried.tests[0];
    assert!(t.flaky);
    assert_eq!(t.attempt_list.len(), 3);
    assert_eq!((t.attempt_list[2].shard, t.attempt_list[2].attempt), (1, 2));
    // Bazel's own verdict counts too.
    let summary = wrap(
        Some(Id::TestSummary(bep::build_event_id::TestSummaryId {
            label: "//b:t".into(),
            ..Default::default()
        })),
        Payload::TestSummary(bep::TestSummary {
            overall_status: bep::TestStatus::Flaky as i32,
            shard_count: 4,
            ..Default::default()
        }),
    );
    let inv = fold(&[summary]);
    assert!(inv.tests[0].flaky);
    assert_eq!(inv.tests[0].shards, 4);
}

#[test]
fn a_targets_fingerprint_is_its_output_digests_whatever_the_host() {
    let completed = |host: &str, hash: &str| {
        wrap(
            Some(Id::TargetCompleted(
                bep::build_event_id::TargetCompletedId {
                    label: "//a:t".into(),
                    ..Default::default()
                },
            )),
            Payload::Completed(bep::TargetComplete {
                success: true,
                important_output: vec![bep::File {
                    name: "a/t".into(),
                    file: Some(bep::file::File::Uri(format!(
                        "bytestream://{host}/blobs/{hash}/12"
                    ))),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        )
    };
    let a = fold(&[completed("one:1", &"a".repeat(64))]);
    let b = fold(&[completed("two:2/inst", &"a".repeat(64))]);
    let c = fold(&[completed("one:1", &"b".repeat(64))]);
    assert!(!a.targets[0].fingerprint.is_empty());
    assert_eq!(a.targets[0].fingerprint, b.targets[0].fingerprint);
    assert_ne!(a.targets[0].fingerprint, c.targets[0].fingerprint);
}

#[test]
fn failed_actions_options_and_tool_logs_are_kept_bounded() {
    let failed = wrap(
        Some(Id::ActionCompleted(
            bep::build_event_id::ActionCompletedId {
                label: "//a:b".into(),
                ..Default::default()
            },
        )),
        Payload::Action(bep::ActionExecuted {
            success: false,
            exit_code: 2,
            r#type: "Genrule".into(),
            stderr: Some(bep::File {
                name: "stderr".into(),
                file: Some(bep::file::File::Uri("bytestream://h/blobs/x/1".into())),
                ..Default::default()
            }),
            command_line: vec!["x".repeat(10_000)],
            ..Default::default()
        }),
    );
    let options = wrap(
        Some(Id::OptionsParsed(Default::default())),
        Payload::OptionsParsed(bep::OptionsParsed {
            explicit_cmd_line: (0..5000).map(|i| format!("--o{i}")).collect(),
            ..Default::default()
        }),
    );
    let inv = fold(&[failed, options]);
    let a = &inv.failed_actions[0];
    assert_eq!(
        (a.label.as_str(), a.mnemonic.as_str(), a.exit_code),
        ("//a:b", "Genrule", 2)
    );
    assert_eq!(a.stderr, "bytestream://h/blobs/x/1");
    assert!(
        a.argv[0].len() <= MAX_OPTION_LEN + 4,
        "long arguments are cut"
    );
    assert_eq!(inv.options.len(), MAX_OPTIONS);
}

#[test]
fn undecodable_events_are_counted_not_fatal() {
    let raw = v1::BuildEvent {
        event: Some(v1::build_event::Event::BazelEvent(prost_types::Any {
            type_url: BAZEL_EVENT_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        })),
        ..Default::default()
    };
    let inv = fold(&[raw, started(1)]);
    assert_eq!(inv.undecodable_events, 1);
    assert_eq!(inv.event_count, 2);
    assert_eq!(inv.command, "test");
}

#[test]
fn a_disconnect_only_ends_a_running_invocation() {
    let mut done = fold(&[started(1), finished(true, 2), finished_stream()]);
    done.disconnect();
    assert_eq!(done.status, Status::Succeeded);
    let mut running = fold(&[started(1)]);
    running.disconnect();
    assert_eq!(running.status, Status::Disconnected);
}

#[test]
fn a_flaky_test_is_shown_flaky_unless_it_failed_in_the_end() {
    let test = |status, flaky| Test {
        label: "//t:t".into(),
        status,
        flaky,
        ..Default::default()
    };
    assert_eq!(test(TestStatus::Passed, true).shown(), TestStatus::Flaky);
    assert_eq!(test(TestStatus::Failed, true).shown(), TestStatus::Failed);
    assert_eq!(test(TestStatus::Flaky, false).shown(), TestStatus::Flaky);
    assert_eq!(
        test(TestStatus::NoStatus, false).shown(),
        TestStatus::NoStatus
    );
}

#[test]
fn a_test_targets_row_says_its_tests_status_and_other_targets_their_build() {
    let mut inv = Invocation::new("i", "b");
    for (label, outcome) in [("//t:t", Outcome::Success), ("//b:b", Outcome::Pending)] {
        inv.targets.push(Target {
            label: label.into(),
            outcome,
            ..Default::default()
        });
    }
    inv.tests.push(Test {
        label: "//t:t".into(),
        status: TestStatus::NoStatus,
        ..Default::default()
    });
    let row = |inv: &Invocation, i: usize| inv.target_status(&inv.targets[i]);
    assert_eq!(row(&inv, 0), TargetStatus::Test(TestStatus::NoStatus));
    assert_eq!(
        row(&inv, 0).verdict(),
        Verdict::Neutral,
        "built, never ran: no success"
    );
    assert_eq!(row(&inv, 1).shown(), "PENDING");
    inv.tests[0].status = TestStatus::Unreported;
    assert_eq!(row(&inv, 0), TargetStatus::Built(Outcome::Success));
}

#[test]
fn sources_come_from_build_metadata_before_workspace_status_and_metadata_is_capped() {
    let status = |pairs: &[(&str, &str)]| {
        Payload::WorkspaceStatus(bep::WorkspaceStatus {
            item: pairs
                .iter()
                .map(|(k, v)| bep::workspace_status::Item {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        })
    };
    let mut many: std::collections::HashMap<String, String> = (0..200)
        .map(|i| (format!("K{i:03}"), "v".repeat(5000)))
        .collect();
    many.insert("BRANCH_NAME".into(), "main".into());
    let inv = fold(&[
        wrap(
            None,
            status(&[
                ("GIT_BRANCH", "wip"),
                ("REPO_URL", "git@host:a.git"),
                ("COMMIT_SHA", "abc123"),
            ]),
        ),
        wrap(
            None,
            Payload::BuildMetadata(bep::BuildMetadata { metadata: many }),
        ),
    ]);
    assert_eq!(inv.branch, "main", "--build_metadata wins");
    assert!(inv.metadata_changed, "the writer stores the pairs once");
    assert_eq!(inv.repository, "git@host:a.git");
    assert_eq!(inv.commit, "abc123");
    assert_eq!(inv.metadata.len(), MAX_METADATA);
    assert!(
        inv.metadata
            .values()
            .all(|v| v.len() <= MAX_METADATA_VALUE + 3)
    );
}
