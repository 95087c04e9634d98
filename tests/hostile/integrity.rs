//! Damaged storage and absurd values: a truncated blob file is never served
//! as OK, made-up method names do not grow `/metrics`, and timestamps or
//! timeouts at the edge of their types do not crash kiln.

use futures::StreamExt;
use kiln::proto::bytestream::ReadRequest;
use kiln::proto::reapi::FindMissingBlobsRequest;
use tonic::Code;

use crate::common::{Kiln, blob, metric_sum, missing, read_one, scrape, sha, upload_request};

/// The CAS straight on disk (no memory tier in front to hide the file),
/// every blob a file of its own.
const FS_ONLY: &str = r#"
instances:
  - name: ""
    cas: { fs: { path: cas, segments: false } }
    action_cache: { fs: { path: ac } }
"#;

/// The same, with small blobs in segment files (the default).
const FS_SEGMENTS: &str = r#"
instances:
  - name: ""
    cas: { fs: { path: cas } }
    action_cache: { fs: { path: ac } }
"#;

/// A small blob whose record in a segment file was damaged on disk (one
/// byte flipped) is never served: the read is NOT_FOUND, FindMissingBlobs
/// then reports it missing, and the client's upload stores it again.
#[tokio::test]
async fn a_damaged_segment_record_is_not_found_and_stored_again() {
    let kiln = Kiln::start(FS_SEGMENTS).await;
    let mut cas = kiln.cas().await;
    let small = blob(5, 3000);
    let d = sha(&small);
    cas.batch_update_blobs(upload_request(std::slice::from_ref(&small)))
        .await
        .unwrap();
    assert!(!blob_file(&kiln, &d).exists(), "a small blob has no file");
    let segments = kiln.data_dir.join("cas/segments");
    let mut flipped = false;
    for entry in std::fs::read_dir(&segments).unwrap().flatten() {
        let mut bytes = std::fs::read(entry.path()).unwrap();
        if let Some(at) = bytes.windows(small.len()).position(|w| w == &small[..]) {
            bytes[at + 100] ^= 0xff;
            std::fs::write(entry.path(), bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "the blob's record is in a segment");
    let r = read_one(&mut cas, &d).await;
    let status = r.status.as_ref().unwrap();
    assert_eq!(status.code, Code::NotFound as i32, "{}", status.message);
    assert!(r.data.is_empty());
    assert_eq!(
        missing(&mut cas, &[d]).await.len(),
        1,
        "clients re-upload it"
    );
    cas.batch_update_blobs(upload_request(std::slice::from_ref(&small)))
        .await
        .unwrap();
    let r = read_one(&mut cas, &d).await;
    assert_eq!(r.status.unwrap().code, 0);
    assert_eq!(r.data, small);
}

/// Where the fs store keeps a blob.
fn blob_file(kiln: &Kiln, d: &kiln::digest::Digest) -> std::path::PathBuf {
    let hash = d.hash_hex();
    kiln.data_dir
        .join("cas/sha256")
        .join(&hash[..2])
        .join(format!("{hash}-{}", d.size))
}

#[tokio::test]
async fn a_truncated_blob_file_is_not_found_and_removed() {
    let kiln = Kiln::start(FS_ONLY).await;
    let mut cas = kiln.cas().await;
    let small = blob(3, 1000);
    let large = blob(4, 600 << 10);
    cas.batch_update_blobs(upload_request(&[small.clone(), large.clone()]))
        .await
        .unwrap();
    for data in [&small, &large] {
        let d = sha(data);
        let path = blob_file(&kiln, &d);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(d.size / 2).unwrap();
        drop(file);

        let r = read_one(&mut cas, &d).await;
        let status = r.status.as_ref().unwrap();
        assert_eq!(status.code, Code::NotFound as i32, "{}", status.message);
        assert!(r.data.is_empty());
        assert!(!path.exists(), "the damaged file is removed");
        assert_eq!(
            missing(&mut cas, &[d]).await.len(),
            1,
            "clients re-upload it"
        );
    }
    // Streamed reads check the length too.
    cas.batch_update_blobs(upload_request(std::slice::from_ref(&large)))
        .await
        .unwrap();
    let d = sha(&large);
    std::fs::write(blob_file(&kiln, &d), &large[..1000]).unwrap();
    let mut bs = kiln.bytestream().await;
    let result = bs
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash_hex(), d.size),
            ..Default::default()
        })
        .await;
    let code = match result {
        Err(s) => s.code(),
        Ok(r) => {
            let mut stream = r.into_inner();
            let mut got = 0;
            let mut code = Code::Ok;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) => got += chunk.data.len(),
                    Err(s) => {
                        code = s.code();
                        break;
                    }
                }
            }
            assert!(
                code != Code::Ok || got == large.len(),
                "short read served as OK"
            );
            code
        }
    };
    assert_eq!(code, Code::NotFound);
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let kiln = Kiln::start(crate::common::MEMORY).await;
    let channel = kiln.channel().await;
    for i in 0..300 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = format!("/evil.Service{i}/Method{i}").parse().unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let err = grpc
            .unary(tonic::Request::new(()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    }
    let text = scrape(kiln.server.http_addr).await;
    assert!(!text.contains("evil."), "made-up paths became labels");
    let unknown = metric_sum(&text, "kiln_grpc_calls_total", &[("method", "unknown")]);
    assert_eq!(unknown, 300.0);
}

#[tokio::test]
async fn absurd_timestamps_in_build_events_are_stored_without_a_crash() {
    use kiln::proto::bep;
    let kiln = Kiln::start(crate::common::MEMORY).await;
    let at = |seconds| {
        Some(prost_types::Timestamp {
            seconds,
            nanos: i32::MAX,
        })
    };
    let started = bep::BuildEvent {
        payload: Some(bep::build_event::Payload::Started(bep::BuildStarted {
            uuid: "absurd".into(),
            start_time: at(i64::MAX),
            command: "build".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let finished = bep::BuildEvent {
        payload: Some(bep::build_event::Payload::Finished(bep::BuildFinished {
            overall_success: true,
            finish_time: at(i64::MIN),
            ..Default::default()
        })),
        ..Default::default()
    };
    let sid = crate::common::bes::stream_id("absurd-build", "absurd");
    let mut reqs = crate::common::bes::requests(&sid, &[started, finished], true);
    for r in &mut reqs {
        if let Some(ev) = r
            .ordered_build_event
            .as_mut()
            .and_then(|o| o.event.as_mut())
        {
            ev.event_time = at(i64::MAX);
        }
    }
    let (acks, status) = crate::common::bes::publish(&kiln, reqs).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(acks, vec![1, 2, 3]);
    let r = reqwest::get(format!(
        "http://{}/api/v1/invocations/absurd",
        kiln.server.http_addr
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn wait_operation_with_an_absurd_timeout_answers() {
    use kiln::proto::longrunning::WaitOperationRequest;
    use kiln::proto::longrunning::operations_client::OperationsClient;
    let kiln = Kiln::start(crate::common::MEMORY).await;
    let channel = kiln.channel().await;
    // An action whose result is cached completes at once.
    let spec = crate::common::exec::Spec {
        argv: vec!["true"],
        ..Default::default()
    };
    let digest = crate::common::exec::upload(&channel, "", &spec).await;
    let mut ac = kiln.ac().await;
    ac.update_action_result(kiln::proto::reapi::UpdateActionResultRequest {
        action_digest: Some(digest.to_proto()),
        action_result: Some(Default::default()),
        ..Default::default()
    })
    .await
    .unwrap();
    let ops = crate::common::exec::execute(&channel, "", digest, false, 0)
        .await
        .unwrap();
    let name = ops.last().unwrap().name.clone();
    let result = OperationsClient::new(channel.clone())
        .wait_operation(WaitOperationRequest {
            name,
            timeout: Some(prost_types::Duration {
                seconds: i64::MAX,
                nanos: 999_999_999,
            }),
        })
        .await;
    // Whatever the answer for a cache hit's operation, the server lives.
    if let Err(s) = &result {
        assert!(
            matches!(s.code(), Code::NotFound | Code::InvalidArgument),
            "{s:?}"
        );
    }
    let mut cas = kiln.cas().await;
    cas.find_missing_blobs(FindMissingBlobsRequest::default())
        .await
        .expect("still serving");
}
