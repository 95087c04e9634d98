//! The Remote Asset API against what an attacker sends, through a real
//! kiln and a real HTTP origin: archives built to crash or bloat the
//! unpacker, headers that change what the origin answers, a 206 recorded as
//! a URL's content, a push binding a checksum to other bytes, and a
//! cancelled download left on disk.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::push_client::PushClient;
use kiln::proto::asset::{FetchBlobRequest, FetchDirectoryRequest, PushBlobRequest, Qualifier};
use tonic::Code;

use crate::common::origin::Origin;
use crate::common::{self, Kiln, sha};

fn q(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

fn sri(data: &[u8]) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

async fn start(origin: &Origin) -> Kiln {
    Kiln::start(&format!(
        "remote_asset:\n  allow: [\"{}\"]\n{}",
        origin.url("/"),
        common::disk()
    ))
    .await
}

fn gzip(data: &[u8]) -> Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    Bytes::from(e.finish().unwrap())
}

/// A GNU long-name record declaring `declared` bytes holding `name`, then
/// the file it names (written raw: the tar builder refuses such names).
fn long_named(name: &[u8], declared: u64) -> Vec<u8> {
    let header = |path: &str, kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    };
    let pad = |n: usize| vec![0u8; (512 - n % 512) % 512];
    let mut out = Vec::new();
    out.extend_from_slice(
        header("././@LongLink", tar::EntryType::GNULongName, declared).as_bytes(),
    );
    out.extend_from_slice(name);
    out.extend(pad(name.len()));
    out.extend_from_slice(header("short", tar::EntryType::Regular, 1).as_bytes());
    out.extend_from_slice(b"x");
    out.extend(pad(1));
    out.extend(vec![0u8; 1024]);
    out
}

async fn fetch_directory(kiln: &Kiln, uri: &str) -> Result<(), tonic::Status> {
    FetchClient::new(kiln.channel().await)
        .fetch_directory(FetchDirectoryRequest {
            uris: vec![uri.to_string()],
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_built_to_crash_or_bloat_the_unpacker_are_refused() {
    let deep = "a/".repeat(10_000) + "f";
    let small_deep = gzip(&long_named(deep.as_bytes(), deep.len() as u64));
    assert!(small_deep.len() < 1024, "{} bytes", small_deep.len());
    // A long-name record that claims 200 MiB: 200 MiB of zeros, gzipped.
    let mut huge = Vec::with_capacity(201 << 20);
    huge.extend_from_slice(&long_named(b"", 200 << 20)[..512]);
    huge.resize(512 + (200 << 20), 0);
    let huge_name = gzip(&huge);
    let files = HashMap::from([
        ("/deep.tar.gz".to_string(), small_deep),
        ("/long.tar.gz".to_string(), huge_name),
    ]);
    let origin = Origin::start(files).await;
    let kiln = start(&origin).await;
    let err = fetch_directory(&kiln, &origin.url("/deep.tar.gz"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = fetch_directory(&kiln, &origin.url("/long.tar.gz"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("long name"), "{}", err.message());
    // Still serving.
    common::missing(&mut kiln.cas().await, &[sha(b"anything")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_whole_200_answer_is_recorded() {
    let origin = Origin::start(HashMap::new()).await;
    let kiln = start(&origin).await;
    let mut fetch = FetchClient::new(kiln.channel().await);
    // A header that would ask the origin for a part is refused outright.
    let err = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/partial")],
            qualifiers: vec![q("http_header:Range", "bytes=0-3")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(origin.hits(), 0, "nothing was sent");
    // An origin that answers 206 anyway is not recorded.
    for round in 1..=2 {
        let err = fetch
            .fetch_blob(FetchBlobRequest {
                uris: vec![origin.url("/partial")],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().contains("206"), "{}", err.message());
        assert_eq!(origin.hits(), round, "asked again: nothing was recorded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cannot_bind_a_checksum_to_other_bytes() {
    let origin = Origin::start(HashMap::new()).await;
    let kiln = start(&origin).await;
    let real = Bytes::from_static(b"the real release tarball");
    let evil = Bytes::from_static(b"something else entirely");
    kiln.cas()
        .await
        .batch_update_blobs(common::upload_request(std::slice::from_ref(&evil)))
        .await
        .unwrap();
    let uri = "https://example.com/release.tar.gz".to_string();
    let err = PushClient::new(kiln.channel().await)
        .push_blob(PushBlobRequest {
            uris: vec![uri.clone()],
            qualifiers: vec![q("checksum.sri", &sri(&real))],
            blob_digest: Some(sha(&evil).to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    // Whoever asks for the real checksum never gets the other bytes.
    let r = FetchClient::new(kiln.channel().await)
        .fetch_blob(FetchBlobRequest {
            uris: vec![uri],
            qualifiers: vec![q("checksum.sri", &sri(&real))],
            ..Default::default()
        })
        .await;
    match r {
        Ok(r) => assert_ne!(r.into_inner().blob_digest, Some(sha(&evil).to_proto())),
        Err(s) => assert_ne!(s.code(), Code::Ok),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_leaves_no_spool_file() {
    let origin = Origin::start(HashMap::new()).await;
    let kiln = start(&origin).await;
    let spool = kiln.data_dir.join("asset-spool");
    let spooled = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&spool)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let channel = kiln.channel().await;
    let url = origin.url("/trickle");
    let call = tokio::spawn(async move {
        FetchClient::new(channel)
            .fetch_blob(FetchBlobRequest {
                uris: vec![url],
                ..Default::default()
            })
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while spooled().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the download never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away mid-download.
    call.abort();
    let _ = call.await;
    while !spooled().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool file outlived its request: {:?}",
            spooled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_larger_than_a_client_could_read_is_refused() {
    // 17,000 files with 200-byte names in one directory: a Directory
    // message of ~4.5 MB, over the 4 MiB this server allows a message.
    let mut tar = tar::Builder::new(Vec::new());
    let stem = "n".repeat(193);
    for i in 0..17_000 {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        tar.append_data(&mut h, format!("dir/{stem}{i:06}"), &b"x"[..])
            .unwrap();
    }
    let files = HashMap::from([("/wide.tar.gz".to_string(), gzip(&tar.into_inner().unwrap()))]);
    let origin = Origin::start(files).await;
    let kiln = Kiln::start(&format!(
        "max_message_size: 4MiB\nbuild_events: {{ max_event_size: 1MiB }}\nremote_asset:\n  allow: [\"{}\"]\n  max_archive_entries: 20000\ninstances:\n  - name: \"\"\n    cas: {{ memory: {{ max_size: 256MiB }} }}\n    action_cache: {{ memory: {{ max_size: 16MiB }} }}\n    max_batch_total_size: 2MiB\n",
        origin.url("/")
    ))
    .await;
    let err = fetch_directory(&kiln, &origin.url("/wide.tar.gz"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("max_message_size"),
        "{}",
        err.message()
    );
}
