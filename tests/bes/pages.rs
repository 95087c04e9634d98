//! The queries behind the web pages, on each database: the invocation
//! list's filters, one test's history, and flakiness over a window (a
//! retry that passed, or the same inputs both passing and failing).

use kiln::proto::bep::{self, build_event::Payload, build_event_id::Id};

use crate::common::Kiln;
use crate::common::bes::{bazel_events, publish, requests, stream_id};

fn id(id: Id) -> Option<bep::BuildEventId> {
    Some(bep::BuildEventId { id: Some(id) })
}

/// A `bazel test` whose test `label` had `attempts` (statuses in order),
/// built into outputs with hash `output`.
fn invocation(label: &str, output: &str, attempts: &[bep::TestStatus]) -> Vec<bep::BuildEvent> {
    let mut events = bazel_events(true);
    // Started now, so inside the /tests window.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for e in &mut events {
        match &mut e.payload {
            Some(Payload::Started(s)) => s.start_time_millis = now,
            Some(Payload::Finished(f)) => f.finish_time_millis = now + 4500,
            _ => {}
        }
    }
    let finish = events.pop().expect("BuildFinished is last");
    assert!(matches!(finish.payload, Some(Payload::Finished(_))));
    events.push(bep::BuildEvent {
        id: id(Id::TargetCompleted(
            bep::build_event_id::TargetCompletedId {
                label: label.into(),
                ..Default::default()
            },
        )),
        payload: Some(Payload::Completed(bep::TargetComplete {
            success: true,
            important_output: vec![bep::File {
                name: "t/test".into(),
                file: Some(bep::file::File::Uri(format!(
                    "bytestream://localhost/blobs/{output}/10"
                ))),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    });
    for (n, status) in attempts.iter().enumerate() {
        events.push(bep::BuildEvent {
            id: id(Id::TestResult(bep::build_event_id::TestResultId {
                label: label.into(),
                run: 1,
                shard: 1,
                attempt: n as i32 + 1,
                ..Default::default()
            })),
            payload: Some(Payload::TestResult(bep::TestResult {
                status: *status as i32,
                test_attempt_duration_millis: 50,
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    events.push(finish);
    events
}

async fn get(kiln: &Kiln, path: &str) -> String {
    let r = reqwest::get(format!("http://{}{path}", kiln.server.http_addr))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text().await.unwrap()
}

fn encoded(label: &str) -> String {
    url::form_urlencoded::byte_serialize(label.as_bytes()).collect()
}

pub async fn history_and_flakiness(kiln: &Kiln) {
    use bep::TestStatus::{Failed, NoStatus, Passed};
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mixed = format!("//t{run}:mixed");
    let retried = format!("//t{run}:retried");
    let steady = format!("//t{run}:steady");
    let unrun = format!("//t{run}:unrun");
    let same = "a".repeat(64);
    let cases = [
        ("a", invocation(&mixed, &same, &[Failed])),
        ("b", invocation(&mixed, &same, &[Passed])),
        (
            "c",
            invocation(&retried, &"b".repeat(64), &[Failed, Passed]),
        ),
        ("d", invocation(&steady, &"c".repeat(64), &[Passed])),
        ("e", invocation(&steady, &"d".repeat(64), &[Failed])),
        ("f", invocation(&unrun, &"e".repeat(64), &[NoStatus])),
    ];
    for (name, events) in &cases {
        let inv = format!("{run}-{name}");
        let (_, status) = publish(kiln, requests(&stream_id(&inv, &inv), events, true)).await;
        assert!(status.is_none(), "{status:?}");
    }

    let history = get(kiln, &format!("/tests/{}", encoded(&mixed))).await;
    assert_eq!(
        history.matches("data-flaky=\"true\"").count(),
        2,
        "both runs on the same inputs are flaky:\n{history}"
    );
    let history = get(kiln, &format!("/tests/{}", encoded(&retried))).await;
    assert_eq!(
        history.matches("data-flaky=\"true\"").count(),
        1,
        "{history}"
    );
    let history = get(kiln, &format!("/tests/{}", encoded(&steady))).await;
    assert_eq!(
        history.matches("data-flaky=\"true\"").count(),
        0,
        "a pass and a failure on different inputs are not flaky:\n{history}"
    );
    assert_eq!(history.matches("data-flaky=\"false\"").count(), 2);

    let tests = get(kiln, "/tests?days=1").await;
    let flakiest_at = tests
        .find("class=\"flakiest\"")
        .unwrap_or_else(|| panic!("a flakiest table:\n{tests}"));
    let flakiest =
        &tests[flakiest_at..tests[flakiest_at..].find("</table>").unwrap() + flakiest_at];
    assert!(flakiest.contains(&mixed), "{flakiest}");
    assert!(flakiest.contains(&retried), "{flakiest}");
    assert!(!flakiest.contains(&steady), "{flakiest}");
    // A test that did not run is no failure (the one rule of the pages and
    // the stored counts; /tests counted every run that did not pass).
    let row_of = |label: &str| -> String {
        let at = tests
            .find(&format!("data-label=\"{label}\""))
            .unwrap_or_else(|| panic!("no row of {label}:\n{tests}"));
        let start = tests[..at].rfind("<tr").unwrap();
        tests[start..at].to_string()
    };
    assert!(!row_of(&unrun).contains("bad"), "{}", row_of(&unrun));
    assert!(row_of(&steady).contains("bad"), "{}", row_of(&steady));

    // The trends sum them per day (on SQLite and PostgreSQL alike): the
    // retried test is flaky there (failed, then passed in one invocation;
    // the mixed one is flaky only across invocations, which /tests shows).
    let trends = get(kiln, "/trends?days=2&command=test").await;
    assert!(trends.contains("<tr data-day="), "{trends}");
    let flaky_cells: u64 = trends
        .split("<tr data-day=")
        .skip(1)
        .filter_map(|row| {
            let cells: Vec<&str> = row.split("<td class=\"num\">").skip(1).collect();
            cells.last()?.split('<').next()?.trim().parse::<u64>().ok()
        })
        .sum();
    assert!(flaky_cells >= 1, "the retried test: {trends}");

    // The list's filters: these invocations are all `test` of //app:all.
    let list = get(
        kiln,
        &format!("/?command=test&pattern={}", encoded("app:all")),
    )
    .await;
    assert!(list.contains(&format!("{run}-a")), "{list}");
    let list = get(kiln, "/?command=build").await;
    assert!(!list.contains(&run), "the command filter excludes them");
    let list = get(kiln, &format!("/?pattern={}", encoded("100%_"))).await;
    assert!(
        !list.contains(&run),
        "LIKE wildcards in a pattern are literal"
    );
    let r = reqwest::get(format!("http://{}/?from=yesterday", kiln.server.http_addr))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a bad date is refused");
}

/// A build whose output is longer than the page shows: the page has its
/// end (read newest first), says earlier output is left out, and /log has
/// all of it in order.
pub async fn long_output_is_tailed(kiln: &Kiln) {
    let mut events = bazel_events(true);
    let finish = events.pop().expect("BuildFinished is last");
    let line = "x".repeat(1000);
    for n in 0..400 {
        events.push(bep::BuildEvent {
            id: id(Id::Progress(bep::build_event_id::ProgressId {
                opaque_count: n,
            })),
            payload: Some(Payload::Progress(bep::Progress {
                stdout: String::new(),
                stderr: format!("line-{n:03} {line}\n"),
            })),
            ..Default::default()
        });
    }
    events.push(finish);
    let inv = format!("long-{}", uuid::Uuid::new_v4().simple());
    let (_, status) = publish(kiln, requests(&stream_id(&inv, &inv), &events, true)).await;
    assert!(status.is_none(), "{status:?}");
    let page = get(kiln, &format!("/invocation/{inv}")).await;
    assert!(page.contains("line-399 "), "the end is shown");
    assert!(!page.contains("line-000 "), "the start is not");
    assert!(page.contains("Earlier output is not shown"));
    let log = get(kiln, &format!("/invocation/{inv}/log")).await;
    let (first, last) = (
        log.find("line-000 ").unwrap(),
        log.find("line-399 ").unwrap(),
    );
    assert!(first < last, "in order");
    assert_eq!(log.matches("line-").count(), 400);
}
