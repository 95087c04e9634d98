//! What must hold after the chaos, read from the database, the bucket and
//! the actions' own marker files rather than from anything kiln reports
//! about itself.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use sqlx::Row;

use super::workspace::Workspace;
use crate::common::s3::{BUCKET, SeaweedFs};
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{Action, ActionResult, BatchReadBlobsRequest, Command, ExecuteResponse};

/// Waits until the build has queued its first job.
pub async fn wait_for_jobs(db: &sqlx::PgPool, instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n: i64 = sqlx::query("SELECT count(*) FROM exec_jobs WHERE instance = $1")
            .bind(instance)
            .fetch_one(db)
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the build queued no job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A channel to the balancer (the pods are all up again by now).
pub async fn connect(url: &str) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tonic::transport::Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot reach {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job of the build finished with a successful result, and every
/// genrule ran to completion at least once and no more often than its
/// jobs were leased out (a second run only after a re-queue).
pub async fn actions_ran_once_or_were_requeued(
    db: &sqlx::PgPool,
    ch: &tonic::transport::Channel,
    instance: &str,
    ws: &Workspace,
    marks: &Path,
) {
    let rows = sqlx::query(
        "SELECT id, attempts, stage, action, response FROM exec_jobs WHERE instance = $1",
    )
    .bind(instance)
    .fetch_all(db)
    .await
    .unwrap();
    let mut leases: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let marker = format!("{}/", marks.display());
    for row in &rows {
        let id: String = row.get(0);
        let attempts: i64 = row.get(1);
        let stage: i64 = row.get(2);
        assert_eq!(stage, 4, "job {id} did not complete");
        let response: Vec<u8> = row.get::<Option<Vec<u8>>, _>(4).expect("a response");
        let response = ExecuteResponse::decode(&response[..]).unwrap();
        assert_eq!(
            response.status.as_ref().map_or(0, |s| s.code),
            0,
            "job {id}: {response:?}"
        );
        assert_eq!(response.result.as_ref().unwrap().exit_code, 0, "job {id}");
        let action = Action::decode(&row.get::<Vec<u8>, _>(3)[..]).unwrap();
        let got = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: instance.to_string(),
                digests: vec![action.command_digest.unwrap()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let command = Command::decode(&got.responses[0].data[..]).unwrap();
        let script = command.arguments.join(" ");
        let name = script
            .split(&marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("job {id} is not one of the build's genrules: {script}"))
            .trim_end_matches(['"', '\''])
            .to_string();
        let entry = leases.entry(name).or_default();
        entry.0 += 1;
        entry.1 += attempts;
    }
    for target in &ws.targets {
        let runs = std::fs::read_to_string(marks.join(target))
            .unwrap_or_default()
            .lines()
            .count() as i64;
        let (jobs, attempts) = leases.get(target).copied().unwrap_or_default();
        assert!(jobs >= 1, "{target} never ran remotely: {leases:?}");
        assert!(runs >= 1, "{target} never ran to completion");
        assert!(
            runs <= attempts,
            "{target} ran to completion {runs} times but was leased {attempts} times in {jobs} jobs"
        );
    }
}

/// The invocation's build-event streams hold every sequence number once,
/// with no gap, and are finished; Bazel's tool stream holds each of the
/// events Bazel wrote to its local JSON file exactly once.
pub async fn events_stored_once(db: &sqlx::PgPool, invocation: &str, json_file: &Path) {
    let streams = sqlx::query(
        "SELECT build_id, component, last_sequence, finished FROM bes_streams WHERE invocation_id = $1",
    )
    .bind(invocation)
    .fetch_all(db)
    .await
    .unwrap();
    assert!(!streams.is_empty(), "no build-event stream stored");
    let mut tool_events = None;
    for s in &streams {
        let (build, component): (String, i64) = (s.get(0), s.get(1));
        let last: i64 = s.get(2);
        // Lifecycle events (component 1) come one call each, with no end
        // marker; the tool's stream (component 3) must have been finished.
        if component == 3 {
            assert_eq!(
                s.get::<i64, _>(3),
                1,
                "stream {build}/{component} is not finished"
            );
        }
        let rows = sqlx::query(
            "SELECT sequence, payload FROM bes_events \
             WHERE invocation_id = $1 AND build_id = $2 AND component = $3 ORDER BY sequence",
        )
        .bind(invocation)
        .bind(&build)
        .bind(component)
        .fetch_all(db)
        .await
        .unwrap();
        let sequences: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            sequences,
            (1..=last).collect::<Vec<_>>(),
            "stream {build}/{component} holds each sequence number once"
        );
        // Component 3 is the tool (Bazel's own BEP events).
        if component == 3 {
            let mut ids = HashSet::new();
            for r in &rows {
                let event =
                    kiln::proto::bes_v1::BuildEvent::decode(&r.get::<Vec<u8>, _>(1)[..]).unwrap();
                if let Some(kiln::proto::bes_v1::build_event::Event::BazelEvent(any)) = event.event
                {
                    let bep = kiln::proto::bep::BuildEvent::decode(&any.value[..]).unwrap();
                    let id = bep.id.as_ref().expect("an event id").encode_to_vec();
                    assert!(ids.insert(id), "a BEP event is stored twice: {:?}", bep.id);
                }
            }
            tool_events = Some(ids.len());
        }
    }
    let written = std::fs::read_to_string(json_file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(
        tool_events,
        Some(written),
        "the tool stream holds every event Bazel wrote locally"
    );
    let status: String = sqlx::query("SELECT status FROM invocations WHERE invocation_id = $1")
        .bind(invocation)
        .fetch_one(db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "SUCCEEDED");
}

/// Every CAS object's bytes hash to its key, every action-cache entry is a
/// whole ActionResult, and no object is a whole `output_size` output: the
/// pods store large blobs as chunks.
pub async fn blobs_are_intact(s3: &SeaweedFs, output_size: usize) {
    let client = s3.client().await;
    let (mut cas, mut ac, mut whole) = (0, 0, 0);
    for prefix in ["chaos/cas/", "chaos/ac/"] {
        let mut pages = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for object in page.unwrap().contents() {
                let key = object.key().unwrap();
                let body = client
                    .get_object()
                    .bucket(BUCKET)
                    .key(key)
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap()
                    .into_bytes();
                let name = key.rsplit('/').next().unwrap();
                let (hash, size) = name.rsplit_once('-').unwrap();
                if prefix.ends_with("cas/") {
                    assert_eq!(body.len().to_string(), size, "{key} has the wrong size");
                    assert_eq!(
                        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body)),
                        hash,
                        "{key} does not hash to its name"
                    );
                    cas += 1;
                    whole += usize::from(body.len() == output_size);
                } else {
                    ActionResult::decode(&body[..])
                        .unwrap_or_else(|e| panic!("{key} is not an ActionResult: {e}"));
                    ac += 1;
                }
            }
        }
    }
    assert!(
        cas > 25 && ac > 0,
        "the build stored blobs ({cas} CAS, {ac} AC)"
    );
    assert_eq!(
        whole, 0,
        "{whole} outputs of {output_size} bytes were stored whole, not as chunks"
    );
}
