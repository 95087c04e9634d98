//! Capabilities, FindMissingBlobs, the batch calls and GetTree.

use bytes::Bytes;
use kiln::proto::reapi::{
    self, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode, FileNode,
    FindMissingBlobsRequest, GetCapabilitiesRequest, GetTreeRequest, batch_update_blobs_request,
};
use prost::Message;
use tonic::Code;

use crate::common::{Kiln, MEMORY, blob, sha};

fn upload(digest: &kiln::digest::Digest, data: Bytes) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest.to_proto()),
        data,
        compressor: 0,
    }
}

#[tokio::test]
async fn capabilities_advertise_what_bazel_4_needs() {
    let kiln = Kiln::start(MEMORY).await;
    let caps = kiln
        .capabilities()
        .await
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let low = caps.low_api_version.unwrap();
    let high = caps.high_api_version.unwrap();
    assert_eq!((low.major, low.minor), (2, 0));
    assert_eq!((high.major, high.minor), (2, 12));
    let cache = caps.cache_capabilities.unwrap();
    assert!(
        cache
            .digest_functions
            .contains(&(reapi::digest_function::Value::Sha256 as i32))
    );
    assert!(
        cache
            .supported_compressors
            .contains(&(reapi::compressor::Value::Zstd as i32))
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    let exec = caps
        .execution_capabilities
        .expect("execution is on by default");
    assert!(exec.exec_enabled);
    assert_eq!(
        exec.digest_function,
        reapi::digest_function::Value::Sha256 as i32
    );
    let disabled = Kiln::start(&format!("execution: {{ enabled: false }}\n{MEMORY}")).await;
    let caps = disabled.server_capabilities().await;
    assert!(
        caps.execution_capabilities.is_none(),
        "with execution disabled, Capabilities says so"
    );

    let err = kiln
        .capabilities()
        .await
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nope"), "{}", err.message());
}

#[tokio::test]
async fn batch_round_trip_and_find_missing() {
    let kiln = Kiln::start(MEMORY).await;
    let mut cas = kiln.cas().await;
    let blobs: Vec<Bytes> = (0..20).map(|i| blob(i, 1000 + i as usize)).collect();
    let digests: Vec<_> = blobs.iter().map(|b| sha(b)).collect();
    let empty = sha(b"");

    let mut wanted: Vec<reapi::Digest> = digests.iter().map(|d| d.to_proto()).collect();
    wanted.push(empty.to_proto());
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: wanted.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing.len(), 20, "all but the empty blob are missing");

    let requests = blobs
        .iter()
        .zip(&digests)
        .map(|(b, d)| upload(d, b.clone()))
        .collect();
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        resp.responses
            .iter()
            .all(|r| r.status.as_ref().unwrap().code == 0)
    );

    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: wanted,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty());

    let absent = sha(b"absent");
    let mut read: Vec<reapi::Digest> = digests.iter().map(|d| d.to_proto()).collect();
    read.push(absent.to_proto());
    let resp = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: read,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (i, r) in resp.responses.iter().take(20).enumerate() {
        assert_eq!(r.status.as_ref().unwrap().code, 0);
        assert_eq!(r.data, blobs[i]);
    }
    assert_eq!(
        resp.responses[20].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );
}

#[tokio::test]
async fn batch_update_rejects_wrong_hash_and_size_per_blob() {
    let kiln = Kiln::start(MEMORY).await;
    let mut cas = kiln.cas().await;
    let good = blob(1, 500);
    let wrong_hash = blob(2, 500);
    let d_good = sha(&good);
    let d_claimed = sha(&blob(3, 500));
    let short = good.slice(..499);
    let resp = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![
                upload(&d_good, good.clone()),
                upload(&d_claimed, wrong_hash),
                upload(&d_good, short),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status: Vec<_> = resp
        .responses
        .iter()
        .map(|r| r.status.clone().unwrap())
        .collect();
    assert_eq!(status[0].code, 0);
    assert_eq!(status[1].code, Code::InvalidArgument as i32);
    assert!(
        status[1].message.contains("expected") && status[1].message.contains("actual"),
        "{}",
        status[1].message
    );
    assert_eq!(status[2].code, Code::InvalidArgument as i32);
    assert!(
        status[2].message.contains("expected 500 bytes, got 499"),
        "{}",
        status[2].message
    );
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![d_claimed.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(
        missing.len(),
        1,
        "a blob that failed verification is not stored"
    );
}

#[tokio::test]
async fn oversized_batches_and_bad_digests_are_invalid_argument() {
    let kiln = Kiln::start(MEMORY).await;
    let mut cas = kiln.cas().await;
    let big = blob(5, 3 << 20);
    let requests = vec![
        upload(&sha(&big), big.clone()),
        upload(&sha(&big), big.clone()),
    ];
    let err = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_total_size"),
        "{}",
        err.message()
    );

    let huge = kiln::digest::Digest {
        size: 5 << 20,
        ..sha(b"x")
    };
    let err = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![huge.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let bad = reapi::Digest {
        hash: "xyz".into(),
        size_bytes: 3,
    };
    let err = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![bad],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Uploads `dir` and returns its digest.
async fn put_dir(kiln: &Kiln, dir: &Directory) -> kiln::digest::Digest {
    let data = Bytes::from(dir.encode_to_vec());
    let d = sha(&data);
    let resp = kiln
        .cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload(&d, data)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    d
}

#[tokio::test]
async fn get_tree_pages_through_the_whole_tree() {
    let kiln = Kiln::start(MEMORY).await;
    // root -> 30 subdirectories, each with one file and one shared leaf.
    let leaf = put_dir(
        &kiln,
        &Directory {
            files: vec![FileNode {
                name: "leaf".into(),
                digest: Some(sha(b"l").to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let mut children = Vec::new();
    for i in 0..30 {
        let dir = Directory {
            files: vec![FileNode {
                name: format!("f{i}"),
                digest: Some(sha(&[i]).to_proto()),
                ..Default::default()
            }],
            directories: vec![DirectoryNode {
                name: "leaf".into(),
                digest: Some(leaf.to_proto()),
            }],
            ..Default::default()
        };
        let d = put_dir(&kiln, &dir).await;
        children.push(DirectoryNode {
            name: format!("d{i:02}"),
            digest: Some(d.to_proto()),
        });
    }
    let root = put_dir(
        &kiln,
        &Directory {
            directories: children,
            ..Default::default()
        },
    )
    .await;

    let mut cas = kiln.cas().await;
    let mut token = String::new();
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let mut stream = cas
            .get_tree(GetTreeRequest {
                root_digest: Some(root.to_proto()),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Take one page per call, as a client resuming page by page would.
        let page = stream.message().await.unwrap().unwrap();
        assert!(page.directories.len() <= 7);
        seen.extend(page.directories);
        calls += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 32, "root, 30 children, one shared leaf");
    assert_eq!(calls, 5);
    let root_dir = Directory::decode(seen[0].clone()).unwrap();
    assert_eq!(root_dir.directories.len(), 30, "the root comes first");
    for raw in &seen {
        let dir = Directory::decode(raw.clone()).unwrap();
        assert_eq!(
            Bytes::from(dir.encode_to_vec()),
            *raw,
            "directories come back byte for byte"
        );
    }

    // One call streams every page.
    let mut stream = cas
        .get_tree(GetTreeRequest {
            root_digest: Some(root.to_proto()),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut pages = 0;
    let mut total = 0;
    while let Some(page) = stream.message().await.unwrap() {
        pages += 1;
        total += page.directories.len();
    }
    assert_eq!((pages, total), (4, 32));

    let err = cas
        .get_tree(GetTreeRequest {
            root_digest: Some(sha(b"no such dir").to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = cas
        .get_tree(GetTreeRequest {
            root_digest: Some(root.to_proto()),
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// REAPI 2.12's GITSHA1: blobs named by their git blob ids, through the
/// batch calls, ByteStream (the `gitsha1` resource segment) and SplitBlob,
/// on the embedded default (fs, chunked above 2 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitsha1_blobs_are_named_as_git_names_them() {
    use kiln::digest::DigestFunction;
    let kiln = Kiln::start(&crate::common::disk()).await;
    let f = DigestFunction::GitSha1;
    let caps = kiln.server_capabilities().await.cache_capabilities.unwrap();
    assert!(
        caps.digest_functions
            .contains(&(reapi::digest_function::Value::Gitsha1 as i32))
    );
    let hello = f.digest_of(b"hello\n");
    assert_eq!(hello.hash_hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
    let mut cas = kiln.cas().await;
    let r = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload(&hello, Bytes::from_static(b"hello\n"))],
            digest_function: reapi::digest_function::Value::Gitsha1 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().unwrap().code, 0);
    // The same bytes under a wrong git id are refused.
    let wrong = f.digest_of(b"hello!");
    let r = cas
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![upload(
                &kiln::digest::Digest { size: 6, ..wrong },
                Bytes::from_static(b"hello\n"),
            )],
            digest_function: reapi::digest_function::Value::Gitsha1 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.responses[0].status.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    // A large one through ByteStream, read back, split into git-named chunks.
    let big = blob(71, 5 << 20);
    let d = f.digest_of(&big);
    let name = format!("uploads/{}/blobs/gitsha1/{d}", uuid::Uuid::new_v4());
    let msgs: Vec<_> = (0..5)
        .map(|i| kiln::proto::bytestream::WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i as i64) << 20,
            finish_write: i == 4,
            data: big.slice(i << 20..(i + 1) << 20),
        })
        .collect();
    kiln.bytestream()
        .await
        .write(tokio_stream::iter(msgs))
        .await
        .unwrap();
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![hello.to_proto(), d.to_proto()],
            digest_function: reapi::digest_function::Value::Gitsha1 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty(), "{missing:?}");
    let mut stream = kiln
        .bytestream()
        .await
        .read(kiln::proto::bytestream::ReadRequest {
            resource_name: format!("blobs/gitsha1/{d}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.extend_from_slice(&m.data);
    }
    assert!(got == big[..]);
    let chunks = cas
        .split_blob(reapi::SplitBlobRequest {
            blob_digest: Some(d.to_proto()),
            digest_function: reapi::digest_function::Value::Gitsha1 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .chunk_digests;
    assert!(chunks.len() > 1);
    let mut at = 0usize;
    for c in &chunks {
        let n = c.size_bytes as usize;
        assert_eq!(c.hash, f.digest_of(&big[at..at + n]).hash_hex());
        at += n;
    }
    assert_eq!(at, big.len());
}
