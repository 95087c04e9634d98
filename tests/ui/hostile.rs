//! Values from builds are text, never markup: a target label and a test
//! log holding `<script>` render escaped on every page that shows them,
//! and the browser's DOM has no script element at all.

use kiln::proto::bep::{self, build_event::Payload, build_event_id::Id};

use super::common::bes::{bazel_events, publish, requests, stream_id};
use super::common::{Kiln, MEMORY, sha, upload_request};
use super::{dom, wait_finished};

const EVIL: &str = "<script>alert(1)</script>";

fn id(id: Id) -> Option<bep::BuildEventId> {
    Some(bep::BuildEventId { id: Some(id) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_logs_with_markup_render_as_text() {
    let kiln = Kiln::start(MEMORY).await;
    // The test log, in the CAS as Bazel would have uploaded it.
    let log = format!("before {EVIL} after \u{1b}[31m{EVIL}\u{1b}[0m\n");
    let digest = sha(log.as_bytes());
    let mut cas = kiln.cas().await;
    cas.batch_update_blobs(upload_request(&[log.clone().into()]))
        .await
        .unwrap();
    let uri = format!(
        "bytestream://{}/blobs/{}/{}",
        kiln.url.trim_start_matches("http://"),
        digest.hash_hex(),
        digest.size
    );
    let label = format!("//evil:{EVIL}");
    let mut events = bazel_events(false);
    let finish = events.pop().expect("BuildFinished last");
    events.push(bep::BuildEvent {
        id: id(Id::TestResult(bep::build_event_id::TestResultId {
            label: label.clone(),
            run: 1,
            shard: 1,
            attempt: 1,
            ..Default::default()
        })),
        payload: Some(Payload::TestResult(bep::TestResult {
            status: bep::TestStatus::Failed as i32,
            test_action_output: vec![bep::File {
                name: "test.log".into(),
                file: Some(bep::file::File::Uri(uri)),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    });
    events.push(bep::BuildEvent {
        id: id(Id::Progress(bep::build_event_id::ProgressId {
            opaque_count: 9,
        })),
        payload: Some(Payload::Progress(bep::Progress {
            stdout: String::new(),
            stderr: format!("ERROR: {EVIL}\n"),
        })),
        ..Default::default()
    });
    events.push(finish);
    let inv = "evil-invocation";
    let (_, status) = publish(
        &kiln,
        requests(&stream_id("evil-build", inv), &events, true),
    )
    .await;
    assert!(status.is_none(), "{status:?}");
    wait_finished(&kiln, inv).await;

    let encoded: String = url::form_urlencoded::byte_serialize(label.as_bytes()).collect();
    for path in [
        format!("/invocation/{inv}"),
        "/".to_string(),
        format!("/tests/{encoded}"),
        "/tests".to_string(),
    ] {
        let page = dom(&kiln, &path).await;
        assert!(
            !page.to_ascii_lowercase().contains("<script"),
            "{path}: no script element was injected:\n{page}"
        );
        if path.starts_with("/invocation") {
            assert!(
                page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{path}: the markup is shown as text:\n{page}"
            );
            assert!(page.contains("before "), "{path}: the log is inline");
        }
    }
}
