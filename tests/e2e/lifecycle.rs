//! The bounded disk store, end to end: a mixed workload past `max_size`
//! keeps disk usage at the limit (plus one blob) and never evicts the hot
//! set; leased blobs go only past the hard limit, and the metrics say so;
//! a restart rebuilds the same index from the files.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::common::{
    Kiln, blob, metric_sum, missing, read_one, scrape, sha, upload_request, wait_metrics,
};

const BLOB: usize = 100 << 10;

fn config(max: &str, retention: &str, margin: &str) -> String {
    format!(
        r#"
instances:
  - name: ""
    cas: {{ fs: {{ path: cas, max_size: {max}, min_retention: {retention}, lease_margin: {margin} }} }}
    action_cache: {{ memory: {{ max_size: 8MiB }} }}
"#
    )
}

/// What a blob stored in a segment costs beside its bytes (its record's
/// header), and what each segment file adds (its magic).
const RECORD_HEADER: u64 = 52;
const SEGMENT_MAGIC: u64 = 8;

/// Bytes of blob files and segment files under the store (its temp dir
/// excluded), and the number of segments.
fn disk_usage(root: &std::path::Path) -> (u64, u64) {
    let (mut total, mut segments) = (0, 0);
    for dir in std::fs::read_dir(root).unwrap().flatten() {
        let name = dir.file_name();
        if name == "tmp" {
            continue;
        }
        if name == "segments" {
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                if file.file_name().to_string_lossy().ends_with(".seg") {
                    total += file.metadata().unwrap().len();
                    segments += 1;
                }
            }
            continue;
        }
        for shard in std::fs::read_dir(dir.path()).unwrap().flatten() {
            for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
                total += file.metadata().unwrap().len();
            }
        }
    }
    (total, segments)
}

fn stored_bytes(text: &str) -> f64 {
    metric_sum(text, "kiln_store_bytes", &[("node", "instances[0].cas")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_keeps_to_max_size_and_keeps_the_hot_set() {
    let max = 2u64 << 20;
    let kiln = Kiln::start(&config("2MiB", "0s", "0")).await;
    let mut cas = kiln.cas().await;
    let hot: Vec<Bytes> = (0..3).map(|i| blob(500 + i, BLOB)).collect();
    cas.batch_update_blobs(upload_request(&hot)).await.unwrap();
    for i in 0..60 {
        let new = blob(i, BLOB);
        let r = cas
            .batch_update_blobs(upload_request(&[new]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
        for h in &hot {
            let got = read_one(&mut cas, &sha(h)).await;
            assert_eq!(
                got.status.unwrap().code,
                0,
                "hot blob evicted after upload {i}"
            );
        }
    }
    let text = wait_metrics(&kiln, "the store settles under max_size", |t| {
        stored_bytes(t) <= max as f64
    })
    .await;
    assert!(metric_sum(&text, "kiln_store_evictions_total", &[("reason", "lru")]) > 0.0);
    assert_eq!(
        metric_sum(&text, "kiln_store_evictions_total", &[("reason", "forced")]),
        0.0
    );
    // Past the limit by at most one blob, plus a segment still being
    // rewritten (a sixteenth of the limit) and records' headers.
    let (usage, _) = disk_usage(&kiln.data_dir.join("cas"));
    let slack = BLOB as u64 + max / 16 + 64 * RECORD_HEADER;
    assert!(usage <= max + slack, "disk usage {usage} over the limit");
    let hot_digests: Vec<_> = hot.iter().map(|h| sha(h)).collect();
    assert!(missing(&mut cas, &hot_digests).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_blobs_go_only_past_the_hard_limit_and_restarts_keep_the_index() {
    // Everything here is leased (min_retention 1h): nothing goes until the
    // store passes max_size + lease_margin = 2 MiB.
    let yaml = config("1MiB", "1h", "1MiB");
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::start_in(&yaml, dir.path()).await;
    let mut cas = kiln.cas().await;
    let blobs: Vec<Bytes> = (0..15).map(|i| blob(100 + i, BLOB)).collect();
    for b in &blobs {
        cas.batch_update_blobs(upload_request(std::slice::from_ref(b)))
            .await
            .unwrap();
    }
    let all: Vec<_> = blobs.iter().map(|b| sha(b)).collect();
    assert!(
        missing(&mut cas, &all).await.is_empty(),
        "1.5 MiB: over max_size, all leased, all kept"
    );
    let mut later = Vec::new();
    for i in 0..10 {
        let b = blob(200 + i, BLOB);
        later.push(sha(&b));
        cas.batch_update_blobs(upload_request(&[b])).await.unwrap();
    }
    let hard = 2u64 << 20;
    let text = wait_metrics(
        &kiln,
        "forced evictions bring it under the hard limit",
        |t| {
            stored_bytes(t) <= hard as f64
                && metric_sum(t, "kiln_store_evictions_total", &[("reason", "forced")]) > 0.0
        },
    )
    .await;
    assert!(
        stored_bytes(&text) > (1u64 << 20) as f64,
        "leased blobs above max_size stay"
    );
    let gone = missing(&mut cas, &all).await;
    assert!(
        !gone.is_empty(),
        "past the hard limit the oldest leased blobs went"
    );
    // Oldest first: the first fifteen (last confirmed together) go before
    // any of the ten stored after them.
    assert!(
        missing(&mut cas, &later).await.is_empty(),
        "newer blobs went first"
    );

    // A restart rebuilds the index from the files: the same blobs, bytes.
    let before = stored_bytes(&text);
    let data_dir = kiln.data_dir.clone();
    let kept: Vec<_> = all
        .iter()
        .filter(|d| !gone.contains(&d.to_proto()))
        .copied()
        .collect();
    drop(cas);
    kiln.server.stop().await.unwrap();
    let kiln = Kiln::start_in(&yaml, &data_dir).await;
    let text = scrape(kiln.server.http_addr).await;
    assert_eq!(
        stored_bytes(&text),
        before,
        "the rebuilt index counts the same bytes"
    );
    let (usage, segments) = disk_usage(&data_dir.join("cas"));
    let blobs = before as u64 / BLOB as u64;
    assert_eq!(
        usage,
        before as u64 + blobs * RECORD_HEADER + segments * SEGMENT_MAGIC,
        "nothing on disk outside the index"
    );
    let mut cas = kiln.cas().await;
    assert!(missing(&mut cas, &kept).await.is_empty());
}

/// Resumable-upload spools reserve their blob's size: past the per-identity
/// (or total) cap a new resumable upload is RESOURCE_EXHAUSTED, and
/// finishing an upload gives its space back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_spools_are_capped() {
    use kiln::proto::bytestream::WriteRequest;
    let yaml = format!(
        "uploads: {{ max_spool: 8MiB, max_spool_per_identity: 2MiB }}\n{}",
        crate::common::MEMORY
    );
    let kiln = Kiln::start(&yaml).await;
    let (a, b) = (blob(1, 3 << 19), blob(2, 3 << 19)); // 1.5 MiB each
    let name = |data: &Bytes, upload: &str| {
        let d = sha(data);
        format!("uploads/{upload}/blobs/{}/{}", d.hash_hex(), d.size)
    };
    // Upload `a` half-way and leave it open: its spool holds its reservation.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut bs = kiln.bytestream().await;
    let open = tokio::spawn(async move {
        bs.write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(WriteRequest {
        resource_name: name(&a, "ua"),
        write_offset: 0,
        finish_write: false,
        data: a.slice(..1 << 20),
    })
    .await
    .unwrap();
    // Seen by QueryWriteStatus: the session exists.
    let mut q = kiln.bytestream().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while q
        .query_write_status(kiln::proto::bytestream::QueryWriteStatusRequest {
            resource_name: name(&a, "ua"),
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the first upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let whole = |data: Bytes, upload: &'static str| {
        let req = WriteRequest {
            resource_name: name(&data, upload),
            write_offset: 0,
            finish_write: true,
            data,
        };
        let kiln_url = kiln.url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(kiln_url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            kiln::proto::bytestream::byte_stream_client::ByteStreamClient::new(channel)
                .write(tokio_stream::iter([req]))
                .await
        }
    };
    let err = whole(b.clone(), "ub").await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        err.message()
    );
    // Finishing `a` releases its reservation; then `b` fits.
    tx.send(WriteRequest {
        resource_name: String::new(),
        write_offset: 1 << 20,
        finish_write: true,
        data: a.slice(1 << 20..),
    })
    .await
    .unwrap();
    drop(tx);
    open.await.unwrap().expect("the first upload completes");
    whole(b.clone(), "ub2").await.expect("space was given back");
    assert!(
        missing(&mut kiln.cas().await, &[sha(&a), sha(&b)])
            .await
            .is_empty()
    );
}

/// After a kill -9 and a restart: every blob of `sent` the store reports
/// present reads back whole, and the files on disk are exactly those blobs
/// (each `blob_len` bytes). Returns the ones reported missing.
async fn restarted_store_is_consistent(
    cas: &mut kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient<
        tonic::transport::Channel,
    >,
    sent: &[kiln::digest::Digest],
    root: &std::path::Path,
    blob_len: usize,
) -> Vec<kiln::proto::reapi::Digest> {
    let mut absent = Vec::new();
    for chunk in sent.chunks(1000) {
        absent.extend(missing(cas, chunk).await);
    }
    let present: Vec<_> = sent
        .iter()
        .filter(|d| !absent.contains(&d.to_proto()))
        .collect();
    for d in &present {
        let r = read_one(cas, d).await;
        assert_eq!(r.status.unwrap().code, 0, "{d} is listed but unreadable");
        assert_eq!(sha(&r.data), **d, "{d} reads back whole");
    }
    let (usage, segments) = disk_usage(root);
    assert_eq!(
        usage,
        present.len() as u64 * (blob_len as u64 + RECORD_HEADER) + segments * SEGMENT_MAGIC,
        "nothing on disk outside the index"
    );
    absent
}

/// kill -9 while puts and evictions run: the restarted store's index is
/// rebuilt from the files, so what it counts is exactly what is on disk and
/// every blob it reports present reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_eviction_leaves_a_consistent_store() {
    use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config("1MiB", "0s", "0");
    let (mut child, _url, channel) = crate::common::spawn_kiln(&yaml, dir.path()).await;
    let mut cas = ContentAddressableStorageClient::new(channel);
    let mut sent = Vec::new();
    // Keep uploading (each put past the limit starts an eviction) and kill
    // the server in the middle of it.
    for i in 0..40 {
        let b = blob(9000 + i, BLOB);
        sent.push(sha(&b));
        let _ = cas.batch_update_blobs(upload_request(&[b])).await;
        if i == 30 {
            child.kill().unwrap();
        }
    }
    child.wait().unwrap();
    let (mut child, _url, channel) = crate::common::spawn_kiln(&yaml, dir.path()).await;
    let mut cas = ContentAddressableStorageClient::new(channel);
    restarted_store_is_consistent(&mut cas, &sent, &dir.path().join("cas"), BLOB).await;
    let _ = child.kill();
    let _ = child.wait();
}

/// kill -9 while several clients' batches are in flight (their puts share
/// the fs store's durability rounds): after a restart every blob of a batch
/// that was acknowledged is there and whole, every blob reported present
/// reads back whole, and no temp file was promoted half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_with_batches_in_flight_keeps_every_acknowledged_blob() {
    use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
instances:
  - name: ""
    cas: { fs: { path: cas } }
    action_cache: { memory: { max_size: 8MiB } }
"#;
    let (mut child, _url, channel) = crate::common::spawn_kiln(yaml, dir.path()).await;
    let acked_batches = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let (acked_batches, acked, sent) = (acked_batches.clone(), acked.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            for round in 0..10_000u64 {
                let blobs: Vec<Bytes> = (0..20)
                    .map(|i| blob(1_000_000 * (c + 1) + round * 20 + i, 8 << 10))
                    .collect();
                let digests: Vec<_> = blobs.iter().map(|b| sha(b)).collect();
                sent.lock().unwrap().extend(digests.iter().copied());
                match cas.batch_update_blobs(upload_request(&blobs)).await {
                    Ok(r) => {
                        for (d, r) in digests.iter().zip(&r.into_inner().responses) {
                            if r.status.as_ref().unwrap().code == 0 {
                                acked.lock().unwrap().push(*d);
                            }
                        }
                        acked_batches.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number of batches are acknowledged (so rounds are
    // running and more are in flight), whatever the machine's speed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_batches.load(Ordering::SeqCst) < 40 {
        assert!(Instant::now() < deadline, "batches are acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let (acked, sent) = (acked.lock().unwrap().clone(), sent.lock().unwrap().clone());
    assert!(acked.len() >= 40 * 20);

    let (mut child, _url, channel) = crate::common::spawn_kiln(yaml, dir.path()).await;
    let mut cas = ContentAddressableStorageClient::new(channel);
    let absent =
        restarted_store_is_consistent(&mut cas, &sent, &dir.path().join("cas"), 8 << 10).await;
    for d in &acked {
        assert!(
            !absent.contains(&d.to_proto()),
            "acknowledged blob {d} was lost"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
