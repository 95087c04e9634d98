//! What REAPI 2.8-2.12 added to execution, end to end with a real worker:
//! output directories stored in the format the Command asks for
//! (`output_directory_format`), Execute's inline hints applied to the
//! result of an action that ran, and large outputs uploaded by chunks
//! (SpliceBlob) when the server splices.

use prost::Message;

use crate::common::exec::{Spec, WorkerProc, executed, upload};
use crate::common::{Kiln, MEMORY, read_one, sha};
use kiln::digest::Digest;
use kiln::proto::reapi::command::OutputDirectoryFormat;
use kiln::proto::reapi::{ActionResult, Directory, ExecuteRequest, GetActionResultRequest, Tree};

async fn kiln_with_worker(name: &str) -> (Kiln, WorkerProc) {
    kiln_with_worker_and(name, "").await
}

/// A kiln whose instance has `extra` settings, with a worker.
async fn kiln_with_worker_and(name: &str, extra: &str) -> (Kiln, WorkerProc) {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}{extra}"
    ))
    .await;
    let worker = WorkerProc::start(&kiln.url, "", name, &[]);
    (kiln, worker)
}

/// Execute (never from the cache) with `hints`; the result.
async fn run(
    ch: &tonic::transport::Channel,
    digest: Digest,
    hints: ExecuteRequest,
) -> ActionResult {
    let request = ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        skip_cache_lookup: true,
        ..hints
    };
    executed(ch, tonic::Request::new(request)).await
}

/// The blob `digest` from the CAS, which must hold it.
async fn blob(kiln: &Kiln, digest: &kiln::proto::reapi::Digest) -> bytes::Bytes {
    let d = Digest::from_proto(kiln::digest::DigestFunction::Sha256, Some(digest), "test").unwrap();
    let r = read_one(&mut kiln.cas().await, &d).await;
    assert_eq!(
        r.status.map(|s| s.code).unwrap_or(0),
        0,
        "{} is in the CAS",
        d
    );
    r.data
}

/// Every file below the Directory `digest`, as paths, read only through
/// Directory blobs in the CAS.
async fn files_below(kiln: &Kiln, digest: &kiln::proto::reapi::Digest) -> Vec<String> {
    let mut files = Vec::new();
    let mut todo = vec![(String::new(), digest.clone())];
    while let Some((prefix, d)) = todo.pop() {
        let dir = Directory::decode(blob(kiln, &d).await).unwrap();
        for f in dir.files {
            blob(kiln, f.digest.as_ref().unwrap()).await;
            files.push(format!("{prefix}{}", f.name));
        }
        for sub in dir.directories {
            todo.push((format!("{prefix}{}/", sub.name), sub.digest.unwrap()));
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_directories_come_in_the_format_the_command_asks_for() {
    let (kiln, _worker) = kiln_with_worker("formats").await;
    let ch = kiln.channel().await;
    // Two equal subtrees (a and b) and a file at the top.
    let script =
        "mkdir -p out/a out/b && echo same > out/a/f && echo same > out/b/f && echo top > out/top";
    let expected = ["a/f", "b/f", "top"];
    for (format, tree, directories) in [
        (OutputDirectoryFormat::TreeOnly, true, false),
        (OutputDirectoryFormat::DirectoryOnly, false, true),
        (OutputDirectoryFormat::TreeAndDirectory, true, true),
    ] {
        let spec = Spec {
            argv: vec!["/bin/sh", "-c", script],
            output_paths: vec!["out"],
            output_directory_format: format as i32,
            salt: format.as_str_name(),
            ..Default::default()
        };
        let digest = upload(&ch, "", &spec).await;
        let result = run(&ch, digest, ExecuteRequest::default()).await;
        let [out] = &result.output_directories[..] else {
            panic!("{format:?}: one output directory: {result:?}");
        };
        assert_eq!(out.path, "out");
        assert_eq!(out.tree_digest.is_some(), tree, "{format:?}: {out:?}");
        assert_eq!(
            out.root_directory_digest.is_some(),
            directories,
            "{format:?}: {out:?}"
        );
        if let Some(root) = &out.root_directory_digest {
            assert_eq!(files_below(&kiln, root).await, expected, "{format:?}");
        }
        if let Some(t) = &out.tree_digest {
            let tree = Tree::decode(blob(&kiln, t).await).unwrap();
            let root = tree.root.unwrap();
            assert_eq!(root.files.len(), 1, "{format:?}");
            if let Some(rd) = &out.root_directory_digest {
                assert_eq!(
                    sha(&root.encode_to_vec()).to_proto(),
                    *rd,
                    "{format:?}: both digests name the same root"
                );
            }
        }
        // The result was cached: its outputs were all found.
        let cached = kiln
            .ac()
            .await
            .get_action_result(GetActionResultRequest {
                action_digest: Some(digest.to_proto()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{format:?}: the result is cached: {e}"))
            .into_inner();
        assert_eq!(cached.output_directories, result.output_directories);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executed_result_has_what_execute_asked_to_inline() {
    let (kiln, _worker) = kiln_with_worker("inline").await;
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "echo out; echo err >&2; echo data > o"],
        outputs: vec!["o"],
        salt: "inline-hints",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let plain = run(&ch, digest, ExecuteRequest::default()).await;
    assert!(plain.stdout_raw.is_empty() && plain.stderr_raw.is_empty());
    assert!(plain.output_files[0].contents.is_empty());
    let hinted = run(
        &ch,
        digest,
        ExecuteRequest {
            inline_stdout: true,
            inline_stderr: true,
            inline_output_files: vec!["o".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(&hinted.stdout_raw[..], b"out\n");
    assert_eq!(&hinted.stderr_raw[..], b"err\n");
    assert_eq!(&hinted.output_files[0].contents[..], b"data\n");
    assert!(hinted.stdout_digest.is_some(), "the digests stay");
}

/// A blob read through ByteStream (too large for a batch).
async fn streamed(kiln: &Kiln, digest: &kiln::proto::reapi::Digest) -> Vec<u8> {
    use futures::StreamExt;
    let mut stream = kiln
        .bytestream()
        .await
        .read(kiln::proto::bytestream::ReadRequest {
            resource_name: format!("blobs/{}/{}", digest.hash, digest.size_bytes),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        out.extend_from_slice(&m.unwrap().data);
    }
    out
}

/// The server's gRPC bytes received so far, and its SpliceBlob calls that
/// succeeded.
async fn received_and_spliced(kiln: &Kiln) -> (f64, f64) {
    let m = crate::common::scrape(kiln.server.http_addr).await;
    (
        crate::common::metric_sum(&m, "kiln_grpc_bytes_total", &[("direction", "in")]),
        crate::common::metric_sum(
            &m,
            "kiln_grpc_calls_total",
            &[
                (
                    "method",
                    "/build.bazel.remote.execution.v2.ContentAddressableStorage/SpliceBlob",
                ),
                ("code", "OK"),
            ],
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_edited_in_the_middle_is_uploaded_by_its_changed_chunks() {
    edited_output_uploads_changed_chunks("").await;
}

/// The same with 1 MiB chunks (config/s3.yaml's; chunks of up to 4 MiB,
/// the larger ones sent through ByteStream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_uploaded_by_chunks_of_the_largest_average_too() {
    let larger = "    chunking: { fast_cdc_2020: { avg_chunk_size: 1MiB } }\n";
    edited_output_uploads_changed_chunks(larger).await;
}

async fn edited_output_uploads_changed_chunks(extra: &str) {
    let (kiln, _worker) = kiln_with_worker_and("chunks", extra).await;
    let ch = kiln.channel().await;
    // About 6 MiB of lines; the second action edits one in the middle.
    let expected = |edited: bool| -> Vec<u8> {
        let mut out = String::new();
        for n in 1..=900_000u32 {
            if edited && n == 450_000 {
                out.push_str("edited\n");
            } else {
                out.push_str(&format!("{n}\n"));
            }
        }
        out.into_bytes()
    };
    let mut sent = Vec::new();
    for (salt, command) in [
        ("plain", "seq 1 900000 > big"),
        ("edited", "seq 1 900000 | sed 's/^450000$/edited/' > big"),
    ] {
        let spec = Spec {
            argv: vec!["/bin/sh", "-c", command],
            outputs: vec!["big"],
            salt,
            ..Default::default()
        };
        let digest = upload(&ch, "", &spec).await;
        let (before, _) = received_and_spliced(&kiln).await;
        let result = run(&ch, digest, ExecuteRequest::default()).await;
        assert_eq!(result.exit_code, 0, "{result:?}");
        let (after, _) = received_and_spliced(&kiln).await;
        sent.push(after - before);
        let output = result.output_files[0].digest.as_ref().unwrap();
        let want = expected(salt == "edited");
        assert_eq!(output.size_bytes, want.len() as i64);
        assert!(
            streamed(&kiln, output).await == want,
            "the spliced output is the file"
        );
    }
    let (_, spliced) = received_and_spliced(&kiln).await;
    assert_eq!(spliced, 2.0, "both outputs were spliced from chunks");
    let size = expected(true).len() as f64;
    assert!(
        sent[0] > size,
        "the first output's chunks all travel: {sent:?}"
    );
    assert!(
        sent[1] < size / 2.0,
        "the edited output sends only the chunks around the edit: {sent:?} of {size}"
    );
}
