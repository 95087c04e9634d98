//! Bazel 4.2.3's `--experimental_remote_downloader` on kiln's Remote Asset
//! API: `http_archive` and `http_file` are downloaded by kiln from a local
//! origin, verified by their sha256; with the origin stopped and Bazel's
//! repository cache and output base wiped, the build still succeeds, served
//! by kiln. A wrong sha256 fails with kiln's checksum error; a URL outside
//! `remote_asset.allow` is refused.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;

use crate::common::bazel::{Bazel, ShutdownOnDrop};
use crate::common::origin::Origin;
use crate::common::{Kiln, disk};

fn sha256_hex(data: &[u8]) -> String {
    kiln::digest::DigestFunction::Sha256
        .digest_of(data)
        .hash_hex()
}

fn archive() -> Bytes {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, data) in [
        ("ext-1.0/a.txt", "from the archive\n"),
        ("ext-1.0/sub/b.txt", "nested\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    let mut gz = b.into_inner().unwrap();
    gz.flush().unwrap();
    Bytes::from(gz.finish().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_archive_and_http_file_come_from_kiln_once_the_origin_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let tarball = archive();
    let data = Bytes::from_static(b"a downloaded file\n");
    let mut origin = Origin::start(HashMap::from([
        ("/deps/ext-1.0.tar.gz".to_string(), tarball.clone()),
        ("/deps/data.txt".to_string(), data.clone()),
    ]))
    .await;
    let yaml = format!(
        "remote_asset:\n  allow: [{:?}]\n{}",
        origin.url("/deps/"),
        disk()
    );
    let kiln = Kiln::start_in(&yaml, &tmp.path().join("kiln-data")).await;
    let bazel = Bazel::new(tmp.path());
    let _shutdown = ShutdownOnDrop(bazel.clone());

    let mut workspace = std::fs::OpenOptions::new()
        .append(true)
        .open(bazel.workspace.join("WORKSPACE"))
        .unwrap();
    write!(
        workspace,
        r#"
load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_archive", "http_file")
http_archive(
    name = "ext",
    urls = ["{archive}"],
    sha256 = "{archive_sha}",
    strip_prefix = "ext-1.0",
    build_file_content = 'filegroup(name = "files", srcs = glob(["**/*.txt"]), visibility = ["//visibility:public"])',
)
http_file(name = "data", urls = ["{data}"], sha256 = "{data_sha}", downloaded_file_path = "data.txt")
http_file(name = "bad", urls = ["{data}"], sha256 = "{wrong}", downloaded_file_path = "bad.txt")
http_file(name = "outside", urls = ["http://127.0.0.1:{port}/elsewhere/x.txt"], sha256 = "{other_sha}")
"#,
        archive = origin.url("/deps/ext-1.0.tar.gz"),
        archive_sha = sha256_hex(&tarball),
        data = origin.url("/deps/data.txt"),
        data_sha = sha256_hex(&data),
        wrong = sha256_hex(b"something else"),
        // Not one Bazel's repository cache holds already, so it must ask.
        other_sha = sha256_hex(b"outside"),
        port = origin.addr.port(),
    )
    .unwrap();
    std::fs::create_dir_all(bazel.workspace.join("dl")).unwrap();
    std::fs::write(
        bazel.workspace.join("dl/BUILD"),
        r#"
genrule(name = "out", srcs = ["@ext//:files", "@data//file"], outs = ["out.txt"], cmd = "cat $(SRCS) > $@")
genrule(name = "bad", srcs = ["@bad//file"], outs = ["bad.txt"], cmd = "cat $(SRCS) > $@")
genrule(name = "outside", srcs = ["@outside//file"], outs = ["outside.txt"], cmd = "cat $(SRCS) > $@")
"#,
    )
    .unwrap();

    let port = kiln.server.addr.port();
    let repo_cache = tmp.path().join("repository-cache");
    let flags = [
        format!("--experimental_remote_downloader=grpc://127.0.0.1:{port}"),
        format!("--remote_cache=grpc://127.0.0.1:{port}"),
        format!("--repository_cache={}", repo_cache.display()),
    ];
    let b = bazel.clone();
    let build = move |target: &str| {
        let mut args = vec!["build".to_string(), target.to_string()];
        args.extend(flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        b.run(&args)
    };
    let build2 = build.clone();
    let (first, bad, outside) = tokio::task::spawn_blocking(move || {
        (
            build2("//dl:out"),
            build2("//dl:bad"),
            build2("//dl:outside"),
        )
    })
    .await
    .unwrap();
    let (ok, out) = first;
    assert!(ok, "the first build downloads through kiln:\n{out}");
    let built = std::fs::read_to_string(bazel.workspace.join("bazel-bin/dl/out.txt")).unwrap();
    assert_eq!(built, "from the archive\nnested\na downloaded file\n");
    assert!(origin.hits() >= 2, "kiln fetched both from the origin");
    let (ok, out) = bad;
    assert!(!ok, "a wrong sha256 fails the build");
    assert!(
        out.contains("checksum mismatch"),
        "kiln's checksum error:\n{out}"
    );
    let (ok, out) = outside;
    assert!(!ok, "a URL outside remote_asset.allow fails the build");
    assert!(out.contains("egress policy"), "kiln's refusal:\n{out}");

    // The origin goes away; Bazel forgets everything it downloaded.
    let hits = origin.hits();
    origin.stop().await;
    let b = bazel.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        let (ok, out) = b.run(&["clean", "--expunge"]);
        assert!(ok, "bazel clean --expunge:\n{out}");
        let _ = std::fs::remove_dir_all(&repo_cache);
        build("//dl:out")
    })
    .await
    .unwrap();
    assert!(
        ok,
        "with the origin gone, kiln serves the downloads:\n{out}"
    );
    let built = std::fs::read_to_string(bazel.workspace.join("bazel-bin/dl/out.txt")).unwrap();
    assert_eq!(built, "from the archive\nnested\na downloaded file\n");
    assert_eq!(origin.hits(), hits, "nothing reached the origin");
    kiln.server.stop().await.unwrap();
}
