//! ByteStream: streamed reads and writes, verification, resumption, zstd.

use bytes::Bytes;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::{Kiln, MEMORY, blob, sha};

fn messages(
    name: &str,
    data: &Bytes,
    start: usize,
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut out = Vec::new();
    let mut offset = start;
    while offset < data.len() || out.is_empty() {
        let end = (offset + chunk).min(data.len());
        out.push(WriteRequest {
            resource_name: if out.is_empty() {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write: finish && end == data.len(),
            data: data.slice(offset..end),
        });
        offset = end;
    }
    out
}

async fn write(
    bs: &mut ByteStreamClient<Channel>,
    msgs: Vec<WriteRequest>,
) -> Result<WriteResponse, Status> {
    bs.write(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

async fn read(
    bs: &mut ByteStreamClient<Channel>,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<(Bytes, usize), Status> {
    let mut stream = bs
        .read(ReadRequest {
            resource_name: name.into(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut biggest = 0;
    while let Some(msg) = stream.message().await? {
        biggest = biggest.max(msg.data.len());
        out.extend_from_slice(&msg.data);
    }
    Ok((out.into(), biggest))
}

fn upload_name(d: &kiln::digest::Digest) -> String {
    format!("uploads/{}/blobs/{d}", uuid::Uuid::new_v4())
}

/// In memory, the disk default, and both with large blobs stored as chunks.
fn stores() -> [String; 4] {
    use crate::common::chunking::chunked;
    [
        MEMORY.to_string(),
        crate::common::disk(),
        chunked(MEMORY),
        chunked(&crate::common::disk()),
    ]
}

#[tokio::test]
async fn large_blob_round_trip_streamed_and_ranged() {
    // In memory (the upload streams into the store), on the disk default
    // (the spool is hashed and adopted by the fs store), and on both with
    // large blobs stored as chunks.
    for config in stores() {
        let kiln = Kiln::start(&config).await;
        let mut bs = kiln.bytestream().await;
        let data = blob(1, 9 << 20);
        let d = sha(&data);
        let resp = write(
            &mut bs,
            messages(&upload_name(&d), &data, 0, 64 << 10, true),
        )
        .await
        .unwrap();
        assert_eq!(resp.committed_size, data.len() as i64);

        let name = format!("blobs/{d}");
        let (all, biggest) = read(&mut bs, &name, 0, 0).await.unwrap();
        assert_eq!(all, data);
        assert!(
            biggest <= 1 << 20,
            "reads are chunked at 1 MiB, saw {biggest}"
        );
        let (part, _) = read(&mut bs, &name, 5_000_000, 123_456).await.unwrap();
        assert_eq!(part, data.slice(5_000_000..5_123_456));
        let (tail, _) = read(&mut bs, &name, data.len() as i64, 0).await.unwrap();
        assert!(tail.is_empty(), "offset == size is an empty read");

        let err = read(&mut bs, &name, data.len() as i64 + 1, 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        let err = read(&mut bs, &name, -1, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = read(&mut bs, &name, 0, -5).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = read(&mut bs, &format!("blobs/{}", sha(b"missing")), 0, 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn writes_with_wrong_content_are_refused_and_leave_nothing() {
    // In memory (the upload streams into the store), on the disk default
    // (the spool is hashed and adopted by the fs store), and on both with
    // large blobs stored as chunks.
    for config in stores() {
        let kiln = Kiln::start(&config).await;
        let mut bs = kiln.bytestream().await;
        let data = blob(2, 3 << 20);
        let d = sha(&data);

        // Wrong hash: the content of another blob under this digest.
        let other = blob(3, 3 << 20);
        let err = write(
            &mut bs,
            messages(&upload_name(&d), &other, 0, 1 << 20, true),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("expected") && err.message().contains("actual"),
            "{}",
            err.message()
        );

        // Too few bytes, then finish_write.
        let short = data.slice(..(3 << 20) - 10);
        let err = write(
            &mut bs,
            messages(&upload_name(&d), &short, 0, 1 << 20, true),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // More bytes than declared.
        let long: Bytes = [data.clone(), Bytes::from_static(b"extra")].concat().into();
        let err = write(&mut bs, messages(&upload_name(&d), &long, 0, 1 << 20, true))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // A small blob with a wrong hash, too.
        let small = blob(4, 100);
        let err = write(
            &mut bs,
            messages(&upload_name(&sha(b"other")), &small, 0, 1000, true),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let err = read(&mut bs, &format!("blobs/{d}"), 0, 0)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::NotFound,
            "nothing visible after failed writes"
        );
    }
}

#[tokio::test]
async fn malformed_resource_names_are_invalid_argument() {
    let kiln = Kiln::start(MEMORY).await;
    let mut bs = kiln.bytestream().await;
    let d = sha(b"abc");
    for name in [
        "",
        "blobs/abc/3",
        "nonsense",
        &format!("blobs/{}/x", d.hash_hex()),
        &format!("compressed-blobs/lz4/{d}"),
    ] {
        let err = read(&mut bs, name, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "read {name:?}");
    }
    let data = Bytes::from_static(b"abc");
    for name in [
        format!("blobs/{d}"),
        format!("uploads/u/blobs/{}/3", &d.hash_hex()[1..]),
        format!("uploads//blobs/{d}"),
    ] {
        let err = write(&mut bs, messages(&name, &data, 0, 10, true))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "write {name:?}");
    }
    let err = read(&mut bs, &format!("other-instance/blobs/{d}"), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "unknown instance");
}

#[tokio::test]
async fn an_interrupted_upload_resumes_where_it_stopped() {
    // In memory (the upload streams into the store), on the disk default
    // (the spool is hashed and adopted by the fs store), and on both with
    // large blobs stored as chunks (the chunks stored are the kept state).
    use crate::common::chunking::fastcdc_chunks;
    for config in stores() {
        let kiln = Kiln::start(&config).await;
        let mut bs = kiln.bytestream().await;
        let data = blob(5, 5 << 20);
        let d = sha(&data);
        let name = upload_name(&d);

        // The client sends 3 MiB and goes away without finish_write.
        let first_part = data.slice(..3 << 20);
        let err = write(&mut bs, messages(&name, &first_part, 0, 256 << 10, false))
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);

        let status = crate::common::write_status(kiln.channel().await, &name).await;
        assert_eq!(status.unwrap(), (3 << 20, false));
        // A store in memory keeps the arrived chunks themselves: no spool
        // file is written (it would cost a copy of every byte); the disk
        // default keeps the spool file it will adopt. A chunked store keeps
        // what it stored as chunks, and the session the bytes after them.
        let spooled = std::fs::read_dir(kiln.data_dir.join("uploads"))
            .unwrap()
            .count();
        let spools = config == crate::common::disk();
        assert_eq!(spooled, usize::from(spools), "spool files kept");
        if config.contains("store: true") {
            let first = sha(&fastcdc_chunks(&data, 512 << 10, 0)[0]);
            assert!(
                crate::common::missing(&mut kiln.cas().await, &[first])
                    .await
                    .is_empty(),
                "the first chunk is stored before the upload finished"
            );
        }

        // Resuming anywhere else is refused.
        let err = write(&mut bs, messages(&name, &data, 1 << 20, 1 << 20, true))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let resp = write(&mut bs, messages(&name, &data, 3 << 20, 512 << 10, true))
            .await
            .unwrap();
        assert_eq!(resp.committed_size, data.len() as i64);
        assert_eq!(
            read(&mut bs, &format!("blobs/{d}"), 0, 0).await.unwrap().0,
            data
        );

        let status = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(status.complete);
        let err = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: upload_name(&sha(b"never")),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

/// A chunked store keeps an interrupted upload as the chunks it stored:
/// if they are evicted before the client resumes, the resume is refused as
/// UNAVAILABLE (the bytes kept no longer reach the offset), the session is
/// gone, and the upload starts again from zero.
#[tokio::test]
async fn a_resume_whose_stored_chunks_were_evicted_starts_over() {
    let config = crate::common::chunking::chunked(&MEMORY.replace("512MiB", "8MiB"));
    let kiln = Kiln::start(&config).await;
    let mut bs = kiln.bytestream().await;
    let data = blob(21, 5 << 20);
    let d = sha(&data);
    let name = upload_name(&d);
    let first_part = data.slice(..3 << 20);
    write(&mut bs, messages(&name, &first_part, 0, 256 << 10, false))
        .await
        .unwrap_err();
    let status = crate::common::write_status(kiln.channel().await, &name).await;
    assert_eq!(status.unwrap().0, 3 << 20);
    // Other blobs push the stored chunks out of the 8 MiB store (its
    // eviction runs in the background: written until the first is gone).
    let first = sha(&crate::common::chunking::fastcdc_chunks(&data, 512 << 10, 0)[0]);
    let mut cas = kiln.cas().await;
    let mut seed = 100;
    while crate::common::missing(&mut cas, &[first]).await.is_empty() {
        assert!(seed < 200, "the stored chunks were never evicted");
        let other = blob(seed, 1 << 20);
        let od = sha(&other);
        write(
            &mut bs,
            messages(&upload_name(&od), &other, 0, 256 << 10, true),
        )
        .await
        .unwrap();
        seed += 1;
    }
    let err = write(&mut bs, messages(&name, &data, 3 << 20, 256 << 10, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("offset 0"), "{err:?}");
    let status = crate::common::write_status(kiln.channel().await, &name).await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound);
    let resp = write(&mut bs, messages(&name, &data, 0, 256 << 10, true))
        .await
        .unwrap();
    assert_eq!(resp.committed_size, data.len() as i64);
    assert_eq!(
        read(&mut bs, &format!("blobs/{d}"), 0, 0).await.unwrap().0,
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_writers_of_one_blob() {
    let kiln = Kiln::start(&crate::common::disk()).await;
    let data = blob(6, 4 << 20);
    let d = sha(&data);
    let channel = kiln.channel().await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut bs = ByteStreamClient::new(channel.clone());
            let data = data.clone();
            tokio::spawn(async move {
                write(
                    &mut bs,
                    messages(&upload_name(&d), &data, 0, 128 << 10, true),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().committed_size, data.len() as i64);
    }
    let mut bs = kiln.bytestream().await;
    assert_eq!(
        read(&mut bs, &format!("blobs/{d}"), 0, 0).await.unwrap().0,
        data
    );
}

#[tokio::test]
async fn existing_blobs_return_early() {
    let kiln = Kiln::start(MEMORY).await;
    let mut bs = kiln.bytestream().await;
    let data = blob(7, 2 << 20);
    let d = sha(&data);
    write(&mut bs, messages(&upload_name(&d), &data, 0, 1 << 20, true))
        .await
        .unwrap();
    // Only the first chunk is sent; the server already has the blob.
    let first: Vec<_> = messages(&upload_name(&d), &data, 0, 1 << 20, true)
        .into_iter()
        .take(1)
        .collect();
    let resp = write(&mut bs, first).await.unwrap();
    assert_eq!(resp.committed_size, data.len() as i64);
}

#[tokio::test]
async fn zstd_compressed_round_trip() {
    let kiln = Kiln::start(MEMORY).await;
    let mut bs = kiln.bytestream().await;
    let data: Bytes = [blob(8, 1 << 20), Bytes::from(vec![b'z'; 3 << 20])]
        .concat()
        .into();
    let d = sha(&data);
    let compressed = Bytes::from(zstd::encode_all(&data[..], 3).unwrap());
    let name = format!("uploads/{}/compressed-blobs/zstd/{d}", uuid::Uuid::new_v4());
    let resp = write(&mut bs, messages(&name, &compressed, 0, 100_000, true))
        .await
        .unwrap();
    assert_eq!(resp.committed_size, compressed.len() as i64);

    let (plain, _) = read(&mut bs, &format!("blobs/{d}"), 0, 0).await.unwrap();
    assert_eq!(plain, data);
    let (zipped, _) = read(&mut bs, &format!("compressed-blobs/zstd/{d}"), 0, 0)
        .await
        .unwrap();
    assert_eq!(zstd::decode_all(&zipped[..]).unwrap(), data);
    let (tail, _) = read(&mut bs, &format!("compressed-blobs/zstd/{d}"), 4 << 20, 0)
        .await
        .unwrap();
    assert_eq!(zstd::decode_all(&tail[..]).unwrap(), data.slice(4 << 20..));
    let err = read(&mut bs, &format!("compressed-blobs/zstd/{d}"), 0, 10)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "read_limit must be 0 for compressed reads"
    );

    // Compressed content that does not match is refused.
    let wrong = Bytes::from(zstd::encode_all(&blob(9, 1000)[..], 3).unwrap());
    let name = format!(
        "uploads/{}/compressed-blobs/zstd/{}",
        uuid::Uuid::new_v4(),
        sha(b"claimed")
    );
    let err = write(&mut bs, messages(&name, &wrong, 0, 100, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// `max_cas_blob_size` is advertised and refused on every upload path with
/// INVALID_ARGUMENT naming the limit, before a byte of a large upload is
/// received or spooled; blobs within it are stored as usual.
#[tokio::test]
async fn blobs_above_max_cas_blob_size_are_refused_on_every_upload_path() {
    let config = crate::common::disk().replace(
        "  - name: \"\"\n",
        "  - name: \"\"\n    max_cas_blob_size: 1MiB\n",
    );
    assert!(config.contains("max_cas_blob_size"), "{config}");
    let kiln = Kiln::start(&config).await;
    let caps = kiln.server_capabilities().await;
    assert_eq!(
        caps.cache_capabilities.unwrap().max_cas_blob_size_bytes,
        1 << 20
    );

    let (small, big) = (blob(11, 1000), blob(12, (1 << 20) + 1));
    let resp = kiln
        .cas()
        .await
        .batch_update_blobs(crate::common::upload_request(&[small.clone(), big.clone()]))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = resp
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, Code::InvalidArgument as i32]);
    assert!(
        resp.responses[1]
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("at most 1048576"),
        "{:?}",
        resp.responses[1]
    );

    // ByteStream: refused on the first message; nothing is spooled.
    let mut bs = kiln.bytestream().await;
    let huge = sha(b"x");
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        huge.hash_hex(),
        8u64 << 30
    );
    let err = write(&mut bs, messages(&name, &big, 0, 64 << 10, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max_cas_blob_size_bytes"), "{err:?}");
    let spooled = std::fs::read_dir(kiln.data_dir.join("uploads"))
        .unwrap()
        .count();
    assert_eq!(spooled, 0, "nothing spooled for a refused upload");
    let err = write(
        &mut bs,
        messages(&upload_name(&sha(&big)), &big, 0, 64 << 10, true),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    write(
        &mut bs,
        messages(&upload_name(&sha(&small)), &small, 0, 256, true),
    )
    .await
    .unwrap();

    // Bazel's HTTP cache protocol: a client error, nothing stored.
    let url = format!(
        "http://{}/cas/{}",
        kiln.server.http_addr,
        sha(&big).hash_hex()
    );
    let r = reqwest::Client::new()
        .put(&url)
        .body(big.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "{:?}", r.text().await);
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status().as_u16(), 404);
}

/// REAPI's optional routing header (`build.bazel.remote.execution.v2.resource-name`,
/// the call's resource name, for load balancers) is accepted on writes and
/// reads alike.
#[tokio::test]
async fn the_routing_header_is_accepted() {
    let kiln = Kiln::start(MEMORY).await;
    let mut bs = kiln.bytestream().await;
    let data = blob(7, 100_000);
    let d = sha(&data);
    let name = upload_name(&d);
    let header = "build.bazel.remote.execution.v2.resource-name";
    let mut request = tonic::Request::new(tokio_stream::iter(messages(
        &name,
        &data,
        0,
        16 << 10,
        true,
    )));
    request.metadata_mut().insert(header, name.parse().unwrap());
    let written = bs.write(request).await.unwrap().into_inner();
    assert_eq!(written.committed_size, data.len() as i64);
    let read_name = format!("blobs/{d}");
    let mut request = tonic::Request::new(ReadRequest {
        resource_name: read_name.clone(),
        read_offset: 0,
        read_limit: 0,
    });
    request
        .metadata_mut()
        .insert(header, read_name.parse().unwrap());
    let mut stream = bs.read(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        got.extend_from_slice(&msg.data);
    }
    assert_eq!(got, data);
}
