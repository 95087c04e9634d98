//! The behaviour suite, run once per database.

use std::time::Duration;

use kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient;
use kiln::proto::kiln_v1::build_event_query_client::BuildEventQueryClient;
use kiln::proto::kiln_v1::{ListStreamsRequest, QueryEventsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::common::Kiln;
use crate::common::bes::{bazel_events, requests, stream_id};

/// A kiln config whose build events go to `database`.
pub fn config(database: &str, extra: &str) -> String {
    format!(
        "build_events:\n  database: \"{database}\"\n{extra}instances:\n  - name: \"\"\n    cas: {{ memory: {{ max_size: 64MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n"
    )
}

pub use crate::common::bes::publish;

pub async fn http_json(kiln: &Kiln, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}{path}", kiln.server.http_addr))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(serde_json::Value::Null),
    )
}

/// The invocation ids of a `/api/v1/invocations` answer, in order.
fn listed_ids(list: &serde_json::Value) -> Vec<&str> {
    list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["invocation_id"].as_str().unwrap())
        .collect()
}

pub async fn run(database: &str) {
    stream_storage(database).await;
    miss_storage(database).await;
    publishes_and_queries(database).await;
    reconnects_resume_without_duplicates(database).await;
    gaps_and_limits(database).await;
    let kiln = Kiln::start(&config(database, "")).await;
    crate::pages::history_and_flakiness(&kiln).await;
    crate::pages::long_output_is_tailed(&kiln).await;
}

/// The storage seam itself: create-if-absent streams and regex listing.
async fn stream_storage(database: &str) {
    use kiln::bes::store::{EventStore, StreamKey};
    let url = if database.starts_with("sqlite://") {
        format!("{database}?mode=rwc")
    } else {
        database.to_string()
    };
    let store = kiln::bes::sql::SqlEventStore::connect(&url).await.unwrap();
    if database.starts_with("sqlite://") {
        // An invocation's events are found through the one index that
        // begins with invocation_id (migration 0009 dropped the other),
        // never by scanning the table.
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for sql in [
            "EXPLAIN QUERY PLAN SELECT payload FROM bes_events WHERE invocation_id = 'i' AND sequence > 0",
            "EXPLAIN QUERY PLAN DELETE FROM bes_events WHERE invocation_id = 'i'",
        ] {
            let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| sqlx::Row::get::<String, _>(r, 3))
                .collect();
            assert!(
                plan.iter()
                    .any(|d| d.starts_with("SEARCH") && d.contains("bes_events_by_kind_in_order")),
                "{sql}: {plan:?}"
            );
        }
    }
    let key = StreamKey {
        build_id: "b".into(),
        invocation_id: uuid::Uuid::new_v4().to_string(),
        component: 3,
    };
    store.create_stream(&key).await.unwrap();
    let again = store.create_stream(&key).await.unwrap_err();
    assert!(
        matches!(again, kiln::error::Error::AlreadyExists(_)),
        "{again:?}"
    );
    let info = store.stream(&key).await.unwrap().unwrap();
    assert_eq!((info.last_sequence, info.finished), (0, false));
    let found = store
        .streams(&regex::Regex::new(&format!("^b/{}/3$", key.invocation_id)).unwrap())
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}

/// Fingerprint rounds and misses (insights): rounds read back newest
/// first by other pods, misses are listed per invocation, and retention
/// removes both.
async fn miss_storage(database: &str) {
    use kiln::bes::store::EventStore;
    use kiln::insights::misses::{Fingerprint, FingerprintRound, MissKind, Recorded};
    let url = if database.starts_with("sqlite://") {
        format!("{database}?mode=rwc")
    } else {
        database.to_string()
    };
    let store = kiln::bes::sql::SqlEventStore::connect(&url).await.unwrap();
    let id = uuid::Uuid::new_v4();
    let identity = id.to_string();
    let invocation = uuid::Uuid::new_v4().to_string();
    let pod = uuid::Uuid::new_v4().to_string();
    // This test's rounds, as another pod reads them (the database is
    // shared with other tests).
    let ours = |store: kiln::bes::sql::SqlEventStore, pod: String| async move {
        let ids: Vec<String> = store
            .fingerprint_round_ids(0, "another pod", 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id.starts_with(&pod))
            .collect();
        let mut rounds = store.fingerprint_rounds(&ids).await.unwrap();
        rounds.sort_by_key(|r| std::cmp::Reverse(r.seen_at));
        rounds
    };
    assert!(ours(store.clone(), pod.clone()).await.is_empty());
    // Seen in 1970, so the purge below removes only these rows of a
    // database other tests share.
    let now = 1000;
    let mut rounds = Vec::new();
    for (n, digest) in ["a/1", "b/2"].into_iter().enumerate() {
        let round = FingerprintRound {
            round: format!("{pod}/{n}"),
            pod: pod.clone(),
            seen_at: now + n as i64,
            fingerprints: vec![Fingerprint {
                identity: *id.as_bytes(),
                action: kiln::digest::DigestFunction::Blake3.digest_of(digest.as_bytes()),
                invocation: invocation.as_str().into(),
                seen_at: now + n as i64,
            }],
        };
        // As the recorder keeps it: a new action, stored in the compact
        // form whose kind stands for its cause.
        let miss = Recorded {
            instance: String::new(),
            action: round.fingerprints[0].action,
            writer: kiln::insights::Writer {
                invocation: invocation.as_str().into(),
                target: "//t:t".into(),
                mnemonic: "Genrule".into(),
            },
            kind: MissKind::New,
            previous: None,
            seen_at: now + n as i64,
        };
        store.record_misses(Some(&round), &[miss]).await.unwrap();
        rounds.insert(0, round);
        // Read back newest first, as written; never by the pod itself.
        assert_eq!(ours(store.clone(), pod.clone()).await, rounds);
        let own = store
            .fingerprint_round_ids(0, &pod, 1_000_000)
            .await
            .unwrap();
        assert!(!own.iter().any(|(id, _)| id.starts_with(&pod)));
    }
    // A nondeterminism record beside them (its cap is checked inside its
    // INSERT, on both databases).
    let row = kiln::insights::NondeterministicOutput {
        action_digest: format!("{identity}/1"),
        output_path: "out".into(),
        before: "x/1".into(),
        after: "y/1".into(),
        after_invocation: invocation.clone(),
        seen_at: now,
        ..Default::default()
    };
    store
        .record_nondeterminism(std::slice::from_ref(&row))
        .await
        .unwrap();
    store
        .record_nondeterminism(std::slice::from_ref(&row))
        .await
        .unwrap();
    assert_eq!(
        store
            .nondeterminism(Some(&invocation), 0, 10)
            .await
            .unwrap(),
        vec![row]
    );
    // A cache scorecard, written twice (the second replaces the first) by
    // one pod and once by another: a read sums the pods' cards.
    let mut card = kiln::insights::scorecard::Scorecard::default();
    card.totals.hits = 3;
    card.totals.misses = 1;
    card.bytes_down = 10;
    let rows = |id: &str, c: &kiln::insights::scorecard::Scorecard| {
        vec![(invocation.clone(), id.to_string(), c.clone())]
    };
    store
        .record_scorecards(&rows("pod-a", &Default::default()))
        .await
        .unwrap();
    store
        .record_scorecards(&rows("pod-a", &card))
        .await
        .unwrap();
    store
        .record_scorecards(&rows("pod-b", &card))
        .await
        .unwrap();
    let sum = store.scorecard(&invocation).await.unwrap().unwrap();
    assert_eq!(
        (sum.totals.hits, sum.totals.misses, sum.bytes_down),
        (6, 2, 20)
    );
    assert_eq!(store.scorecard("no-such-invocation").await.unwrap(), None);
    // The trends' SQL runs on this database (no invocation summaries were
    // stored here, so no days).
    let filter = kiln::bes::store::InvocationFilter {
        user: Some("nobody".into()),
        since_ms: Some(0),
        ..Default::default()
    };
    assert!(store.trends(&filter).await.unwrap().is_empty());
    let listed = store.misses(&invocation, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].causes[0].text, "new action");
    assert_eq!(listed[0].digest_function, "blake3");
    // A chunk replaced in place (its misses compared when first read).
    let mut chunks = store.miss_chunks(&invocation).await.unwrap();
    assert_eq!(chunks.len(), 2, "one chunk per recording");
    let (chunk, misses) = &mut chunks[0];
    misses[0].causes[0].text = "argv[1]: -O2 → -O3".into();
    store
        .replace_miss_chunk(&invocation, chunk, misses)
        .await
        .unwrap();
    let listed = store.misses(&invocation, 10).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|m| m.causes[0].text == "argv[1]: -O2 → -O3"),
        "{listed:?}"
    );
    store.purge(now + 10, 100).await.unwrap();
    assert!(store.misses(&invocation, 10).await.unwrap().is_empty());
    assert!(ours(store.clone(), pod.clone()).await.is_empty());
}

async fn publishes_and_queries(database: &str) {
    let kiln = Kiln::start(&config(database, "")).await;
    let inv = uuid::Uuid::new_v4().to_string();
    let sid = stream_id("build-1", &inv);
    let reqs = requests(&sid, &bazel_events(true), true);
    let n = reqs.len() as i64;
    let (acks, err) = publish(&kiln, reqs).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        acks,
        (1..=n).collect::<Vec<_>>(),
        "every event acknowledged, in order"
    );

    let (code, s) = http_json(&kiln, &format!("/api/v1/invocations/{inv}")).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["status"], "SUCCEEDED");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["command"], "test");
    assert_eq!(s["patterns"][0], "//app:all");
    assert_eq!(s["user"], "alice");
    assert_eq!(s["host"], "box1");
    assert_eq!(s["event_count"], 10);
    assert_eq!(s["cache_hits"], 7);
    assert_eq!(s["duration_ms"], 4500);
    assert_eq!(s["targets"][0]["label"], "//app:hello");
    assert_eq!(s["targets"][0]["outcome"], "SUCCESS");
    assert_eq!(s["tests"][0]["status"], "PASSED");
    assert_eq!(s["links"][0]["uri"], "bytestream://localhost/blobs/abc/1");

    // A failing test: FAILED with Bazel's exit code 3. Its build was
    // given --build_metadata pairs.
    let failing = uuid::Uuid::new_v4().to_string();
    let mut events = bazel_events(false);
    events.insert(
        3,
        crate::common::bes::metadata_event(&[
            ("REPO_URL", "https://git.example/kiln.git"),
            ("BRANCH_NAME", "main"),
            ("TEAM", "build infra"),
        ]),
    );
    let (_, err) = publish(
        &kiln,
        requests(&stream_id("build-2", &failing), &events, true),
    )
    .await;
    assert!(err.is_none());
    let (_, f) = http_json(&kiln, &format!("/api/v1/invocations/{failing}")).await;
    assert_eq!(
        (f["status"].as_str(), f["exit_code"].as_i64()),
        (Some("FAILED"), Some(3))
    );
    assert_eq!(f["tests"][0]["status"], "FAILED");

    assert_eq!(f["repository"], "https://git.example/kiln.git");
    assert_eq!(f["branch"], "main");
    assert_eq!(f["metadata"]["TEAM"], "build infra");

    // Filters by where the sources came from and by metadata, in the API
    // and on the list page; a filter without '=' is refused.
    for query in [
        "repository=https%3A%2F%2Fgit.example%2Fkiln.git",
        "branch=main",
        "metadata=TEAM%3Dbuild+infra",
    ] {
        let (code, list) = http_json(&kiln, &format!("/api/v1/invocations?{query}")).await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(listed_ids(&list), [failing.as_str()], "{query}");
        let page = reqwest::get(format!("http://{}/?{query}", kiln.server.http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            page.contains(&failing) && !page.contains(&inv),
            "{query}: {page}"
        );
        assert!(
            page.contains("href=\"/?branch=main\""),
            "the row names its branch: {page}"
        );
    }
    let (code, _) = http_json(&kiln, "/api/v1/invocations?metadata=TEAM").await;
    assert_eq!(code, 400);
    let (_, none) = http_json(&kiln, "/api/v1/invocations?metadata=TEAM%3Dother").await;
    assert_eq!(none["invocations"].as_array().map(Vec::len), Some(0));

    // Lists, filters and the HTML page.
    let (_, list) = http_json(&kiln, "/api/v1/invocations?status=FAILED&limit=10").await;
    let ids = listed_ids(&list);
    assert!(
        ids.contains(&failing.as_str()) && !ids.contains(&inv.as_str()),
        "{ids:?}"
    );
    let (_, ev) = http_json(
        &kiln,
        &format!("/api/v1/invocations/{inv}/events?kind=test_result,test_summary"),
    )
    .await;
    assert_eq!(ev["events"].as_array().unwrap().len(), 2);
    let (_, ev) = http_json(&kiln, &format!("/api/v1/invocations/{inv}/events?after=9")).await;
    assert_eq!(
        ev["events"].as_array().unwrap().len(),
        2,
        "events 10 and 11"
    );
    let page = reqwest::get(format!("http://{}/invocation/{inv}", kiln.server.http_addr))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("//app:hello_test"));
    let (code, _) = http_json(&kiln, "/api/v1/invocations/nope").await;
    assert_eq!(code, 404);

    // The CLI against the running server.
    let server = format!("http://{}", kiln.server.http_addr);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&[
        "invocations",
        "list",
        "--server",
        &server,
        "--status",
        "FAILED",
    ]);
    assert!(
        listed.contains(&failing) && !listed.contains(&inv),
        "{listed}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&cli(&["invocations", "show", &inv, "--server", &server])).unwrap();
    assert_eq!(shown["tests"][0]["label"], "//app:hello_test");

    // The gRPC query service filters for real.
    let mut q = BuildEventQueryClient::new(kiln.channel().await);
    let r = q
        .query_events(QueryEventsRequest {
            invocation_id: inv.clone(),
            label_regex: "hello_test$".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.events.len(),
        3,
        "completed, result and summary of the test"
    );
    assert!(r.events.iter().all(|e| e.label == "//app:hello_test"));
    let r = q
        .query_events(QueryEventsRequest {
            invocation_id: inv.clone(),
            from_sequence: 2,
            to_sequence: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let streams = q
        .list_streams(ListStreamsRequest {
            stream_key_regex: format!("^build-1/{inv}/"),
        })
        .await
        .unwrap()
        .into_inner()
        .streams;
    assert_eq!(streams.len(), 1);
    assert!(streams[0].finished);
    assert_eq!(streams[0].last_sequence, n);
    let err = q
        .list_streams(ListStreamsRequest {
            stream_key_regex: "(".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn reconnects_resume_without_duplicates(database: &str) {
    let kiln = Kiln::start(&config(database, "")).await;
    let inv = uuid::Uuid::new_v4().to_string();
    let sid = stream_id("build-r", &inv);
    let all = requests(&sid, &bazel_events(true), true);
    let n = all.len() as i64;

    // The client sends 6 events, sees 6 acks, and drops the connection.
    let mut client = PublishBuildEventClient::new(kiln.channel().await);
    let (tx, rx) = mpsc::channel(16);
    let mut acks = client
        .publish_build_tool_event_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for r in all.iter().take(6) {
        tx.send(r.clone()).await.unwrap();
    }
    for expected in 1..=6 {
        assert_eq!(
            acks.message().await.unwrap().unwrap().sequence_number,
            expected
        );
    }
    drop(tx);
    assert!(acks.message().await.unwrap().is_none());
    // Recorded once the server sees the stream end: poll for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, s) = http_json(&kiln, &format!("/api/v1/invocations/{inv}")).await;
        if s["status"] == "DISCONNECTED" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a stream without component_stream_finished is DISCONNECTED: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // It reconnects (to a second server on the same database: any pod) and
    // resends from event 4, as if acks 4-6 had been lost.
    let other = Kiln::start(&config(database, "")).await;
    let (acks, err) = publish(&other, all[3..].to_vec()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks, (4..=n).collect::<Vec<_>>());
    let (_, s) = http_json(&other, &format!("/api/v1/invocations/{inv}")).await;
    assert_eq!(s["status"], "SUCCEEDED");
    assert_eq!(s["event_count"], 10, "no event counted twice");
    let (_, ev) = http_json(
        &kiln,
        &format!("/api/v1/invocations/{inv}/events?limit=100"),
    )
    .await;
    let seqs: Vec<i64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every event stored exactly once"
    );
}

async fn gaps_and_limits(database: &str) {
    let kiln = Kiln::start(&config(database, "  max_event_size: 2KiB\n")).await;
    let inv = uuid::Uuid::new_v4().to_string();
    let sid = stream_id("build-g", &inv);
    let mut reqs = requests(&sid, &bazel_events(true), true);
    reqs.remove(4); // sequence 5 never sent
    let (acks, err) = publish(&kiln, reqs).await;
    assert_eq!(
        acks,
        vec![1, 2, 3, 4],
        "what came before the gap is acknowledged"
    );
    let err = err.expect("a gap ends the stream with an error");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("expected 5, got 6"),
        "{}",
        err.message()
    );
    let (_, ev) = http_json(&kiln, &format!("/api/v1/invocations/{inv}/events")).await;
    assert_eq!(
        ev["events"].as_array().unwrap().len(),
        4,
        "acknowledged events stay"
    );

    // An oversized event is refused clearly; earlier ones stay.
    let inv2 = uuid::Uuid::new_v4().to_string();
    let sid2 = stream_id("build-big", &inv2);
    let events = vec![
        bazel_events(true)[0].clone(),
        crate::common::bes::progress(1, 4096),
    ];
    let (acks, err) = publish(&kiln, requests(&sid2, &events, false)).await;
    assert_eq!(acks, vec![1]);
    assert_eq!(err.unwrap().code(), Code::ResourceExhausted);

    // An undecodable Bazel payload is stored raw and counted, not fatal.
    let inv3 = uuid::Uuid::new_v4().to_string();
    let sid3 = stream_id("build-u", &inv3);
    let mut reqs = requests(&sid3, &bazel_events(true)[..1], true);
    let mut bad = reqs[0].clone();
    let ev = bad.ordered_build_event.as_mut().unwrap();
    ev.sequence_number = 2;
    if let Some(kiln::proto::bes_v1::build_event::Event::BazelEvent(any)) =
        ev.event.as_mut().unwrap().event.as_mut()
    {
        any.value = crate::common::bes::undecodable().to_vec();
    }
    reqs.insert(1, bad);
    reqs[2]
        .ordered_build_event
        .as_mut()
        .unwrap()
        .sequence_number = 3;
    let (acks, err) = publish(&kiln, reqs).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(acks, vec![1, 2, 3]);
    let (_, s) = http_json(&kiln, &format!("/api/v1/invocations/{inv3}")).await;
    assert_eq!(s["undecodable_events"], 1);
    assert_eq!(s["event_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run(&format!("sqlite://{}/bes.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_postgresql() {
    let url = std::env::var("KILN_TEST_POSTGRES_URL")
        .expect("KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests");
    run(&url).await;
}

/// Retention: invocations past `build_events.retention` go (summary,
/// events, streams), in bounded batches, and queries stop finding them.
async fn retention(database: &str) {
    use kiln::bes::store::EventStore;
    let kiln = Kiln::start(&config(database, "")).await;
    let inv = uuid::Uuid::new_v4().to_string();
    let (_, err) = publish(
        &kiln,
        requests(&stream_id("old-build", &inv), &bazel_events(true), true),
    )
    .await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        http_json(&kiln, &format!("/api/v1/invocations/{inv}"))
            .await
            .0,
        200
    );
    let url = if database.starts_with("sqlite://") {
        format!("{database}?mode=rwc")
    } else {
        database.to_string()
    };
    let store = kiln::bes::sql::SqlEventStore::connect(&url).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        store.purge(now - 3_600_000, 10).await.unwrap(),
        0,
        "nothing is an hour old"
    );
    // Everything updated before a minute from now is "old": one per batch.
    let mut batches = 0;
    while store.purge(now + 60_000, 1).await.unwrap() > 0 {
        batches += 1;
        assert!(batches < 100);
    }
    assert!(batches >= 1);
    assert_eq!(
        http_json(&kiln, &format!("/api/v1/invocations/{inv}"))
            .await
            .0,
        404
    );
    let (status, events) = http_json(&kiln, &format!("/api/v1/invocations/{inv}/events")).await;
    assert!(
        status == 404 || events["events"].as_array().is_some_and(|e| e.is_empty()),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    retention(&format!("sqlite://{}/bes.db", dir.path().display())).await;
}

/// On a database of its own: retention deletes every old invocation, so it
/// must not share one with the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_postgresql() {
    let url = std::env::var("KILN_TEST_POSTGRES_URL")
        .expect("KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests");
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let db = format!("kiln_retention_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    retention(&format!("{base}/{db}")).await;
}
