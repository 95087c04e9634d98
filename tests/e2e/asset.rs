//! The Remote Asset API over a real kiln and a real HTTP origin: downloads
//! verified by checksum and served again with the origin gone, the egress
//! policy (allow list, non-public addresses, redirects), FetchDirectory of
//! archives built here from a tree on disk, hostile archives, and Push.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::asset::fetch_client::FetchClient;
use kiln::proto::asset::push_client::PushClient;
use kiln::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, PushBlobRequest, Qualifier,
};
use kiln::proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};
use prost::Message;
use tonic::Code;

use crate::common::origin::Origin;
use crate::common::{self, Kiln, sha};

fn sri(data: &[u8]) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

fn q(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

fn config(allow: &[String], extra: &str) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "remote_asset:\n  allow: [{}]\n{extra}{}",
        list.join(", "),
        common::disk()
    )
}

/// A FetchBlob's outcome, success or the RPC's error alike.
struct Fetched {
    code: Code,
    message: String,
    uri: String,
    blob_digest: Option<kiln::proto::reapi::Digest>,
}

async fn fetch_blob(kiln: &Kiln, uris: &[String], qualifiers: Vec<Qualifier>) -> Fetched {
    fetched(try_fetch_blob(kiln, uris, qualifiers).await)
}

fn fetched(r: Result<FetchBlobResponse, tonic::Status>) -> Fetched {
    match r {
        Ok(r) => Fetched {
            code: Code::from(r.status.as_ref().map_or(0, |s| s.code)),
            message: String::new(),
            uri: r.uri,
            blob_digest: r.blob_digest,
        },
        Err(s) => Fetched {
            code: s.code(),
            message: s.message().to_string(),
            uri: String::new(),
            blob_digest: None,
        },
    }
}

async fn try_fetch_blob(
    kiln: &Kiln,
    uris: &[String],
    qualifiers: Vec<Qualifier>,
) -> Result<FetchBlobResponse, tonic::Status> {
    FetchClient::new(kiln.channel().await)
        .fetch_blob(FetchBlobRequest {
            uris: uris.to_vec(),
            qualifiers,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn code(r: &Fetched) -> Code {
    r.code
}

fn message(r: &Fetched) -> String {
    r.message.clone()
}

async fn stored(kiln: &Kiln, digest: &Digest) -> Bytes {
    let r = common::read_one(&mut kiln.cas().await, digest).await;
    assert_eq!(r.status.map_or(0, |s| s.code), 0, "{digest} is readable");
    r.data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_blob_verifies_caches_and_serves_without_the_origin() {
    let file = common::blob(1, 3 << 20);
    let small = Bytes::from_static(b"a small file");
    let mut origin = Origin::start(HashMap::from([
        ("/dist/file.bin".to_string(), file.clone()),
        ("/dist/small.txt".to_string(), small.clone()),
        ("/dist/other.bin".to_string(), common::blob(2, 1000)),
    ]))
    .await;
    let kiln = Kiln::start(&config(
        &[origin.url("/dist/"), origin.url("/redirect")],
        "",
    ))
    .await;
    let url = origin.url("/dist/file.bin");

    let r = fetch_blob(
        &kiln,
        std::slice::from_ref(&url),
        vec![q("checksum.sri", &sri(&file))],
    )
    .await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    assert_eq!(r.uri, url);
    let digest = Digest::from_proto(DigestFunction::Sha256, r.blob_digest.as_ref(), "d").unwrap();
    assert_eq!(digest, sha(&file));
    assert_eq!(
        stored(&kiln, &digest).await,
        file,
        "the download is in the CAS"
    );

    // A wrong checksum: refused with expected vs actual, nothing stored.
    let other = origin.url("/dist/other.bin");
    let r = fetch_blob(
        &kiln,
        std::slice::from_ref(&other),
        vec![q("checksum.sri", &sri(b"not it"))],
    )
    .await;
    assert_eq!(code(&r), Code::Aborted, "{}", message(&r));
    assert!(
        message(&r).contains(&sri(b"not it")) && message(&r).contains(&sri(&common::blob(2, 1000))),
        "expected and actual checksums: {}",
        message(&r)
    );
    let missing = common::missing(&mut kiln.cas().await, &[sha(&common::blob(2, 1000))]).await;
    assert_eq!(missing.len(), 1, "a mismatching download is not stored");

    // Mirrors are tried in order: a 404 first, then the file.
    let r = fetch_blob(
        &kiln,
        &[origin.url("/dist/nope"), origin.url("/dist/small.txt")],
        vec![],
    )
    .await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    assert_eq!(r.uri, origin.url("/dist/small.txt"));
    let r = fetch_blob(&kiln, &[origin.url("/dist/nope")], vec![]).await;
    assert_eq!(code(&r), Code::NotFound, "{}", message(&r));

    // Outside the allow list, directly or by a redirect.
    let r = fetch_blob(&kiln, &[origin.url("/elsewhere/x")], vec![]).await;
    assert_eq!(code(&r), Code::PermissionDenied, "{}", message(&r));
    assert!(message(&r).contains("egress policy"), "{}", message(&r));
    let sneaky = format!(
        "{}?to={}",
        origin.url("/redirect"),
        origin.url("/elsewhere/x")
    );
    let r = fetch_blob(&kiln, &[sneaky], vec![]).await;
    assert_eq!(code(&r), Code::PermissionDenied, "{}", message(&r));
    let via = format!(
        "{}?to={}",
        origin.url("/redirect"),
        origin.url("/dist/small.txt")
    );
    let r = fetch_blob(&kiln, &[via], vec![]).await;
    assert_eq!(
        code(&r),
        Code::Ok,
        "an allowed redirect is followed: {}",
        message(&r)
    );

    // Unknown qualifiers are the RPC's INVALID_ARGUMENT, naming them.
    let err = try_fetch_blob(
        &kiln,
        std::slice::from_ref(&url),
        vec![q("vcs.commit", "abc")],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("vcs.commit"), "{}", err.message());
    let err = try_fetch_blob(&kiln, &[], vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A request's fan-out to origins is bounded.
    let many: Vec<String> = (0..33)
        .map(|i| origin.url(&format!("/dist/m{i}")))
        .collect();
    let before = origin.hits();
    let err = try_fetch_blob(&kiln, &many, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 32"), "{}", err.message());
    assert_eq!(origin.hits(), before, "refused before any download");

    // With the origin gone, the same fetch is answered from kiln: by the
    // record of the URI, and by the checksum for any URI.
    let before = origin.hits();
    origin.stop().await;
    let r = fetch_blob(
        &kiln,
        std::slice::from_ref(&url),
        vec![q("checksum.sri", &sri(&file))],
    )
    .await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let r = fetch_blob(&kiln, &[origin.url("/dist/small.txt")], vec![]).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    let r = fetch_blob(
        &kiln,
        &["https://mirror.invalid/file.bin".into()],
        vec![q("checksum.sri", &sri(&file))],
    )
    .await;
    assert_eq!(code(&r), Code::Ok, "by checksum: {}", message(&r));
    assert_eq!(origin.hits(), before, "no request reached the origin");
    // Content older than asked for is not an answer: it is fetched again
    // (and the origin is down).
    let future = prost_types::Timestamp::from(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let r = FetchClient::new(kiln.channel().await)
        .fetch_blob(FetchBlobRequest {
            uris: vec![origin.url("/dist/small.txt")],
            oldest_content_accepted: Some(future),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner());
    let r = fetched(r);
    assert_eq!(code(&r), Code::Unavailable, "{}", message(&r));
    kiln.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_to_private_addresses_need_an_allowed_network() {
    let origin = Origin::start(HashMap::from([(
        "/f".to_string(),
        Bytes::from_static(b"f"),
    )]))
    .await;
    let url = format!("http://localhost:{}/f", origin.addr.port());
    let closed = Kiln::start(&config(&["localhost".into()], "")).await;
    let r = fetch_blob(&closed, std::slice::from_ref(&url), vec![]).await;
    assert_eq!(code(&r), Code::PermissionDenied, "{}", message(&r));
    assert!(message(&r).contains("non-public"), "{}", message(&r));
    // The cloud metadata address, even when a pattern would match it.
    let r = fetch_blob(
        &closed,
        &["http://169.254.169.254/latest/meta-data/".into()],
        vec![],
    )
    .await;
    assert_eq!(code(&r), Code::PermissionDenied, "{}", message(&r));
    closed.server.stop().await.unwrap();

    let open = Kiln::start(&config(
        &["localhost".into()],
        "  allow_private_networks: [\"127.0.0.0/8\", \"::1\"]\n",
    ))
    .await;
    let r = fetch_blob(&open, &[url], vec![]).await;
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    open.server.stop().await.unwrap();
}

/// The Directory tree of a directory on disk, by REAPI's rules, as kiln
/// should have stored it; returns the root digest and every Directory.
fn tree_of(path: &Path, out: &mut HashMap<Digest, Directory>) -> Digest {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let mut dir = Directory::default();
    for e in entries {
        let name = e.file_name().into_string().unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            dir.symlinks.push(SymlinkNode {
                name,
                target: target.to_str().unwrap().into(),
                ..Default::default()
            });
        } else if meta.is_dir() {
            let d = tree_of(&e.path(), out);
            dir.directories.push(DirectoryNode {
                name,
                digest: Some(d.to_proto()),
            });
        } else {
            let data = std::fs::read(e.path()).unwrap();
            dir.files.push(FileNode {
                name,
                digest: Some(sha(&data).to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
        }
    }
    let encoded = dir.encode_to_vec();
    let d = sha(&encoded);
    out.insert(d, dir);
    d
}

fn sample_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("src/nested/deeper")).unwrap();
    std::fs::write(root.join("README"), "hello").unwrap();
    std::fs::write(root.join("src/main.c"), "int main() { return 0; }\n").unwrap();
    std::fs::write(
        root.join("src/nested/deeper/big.bin"),
        common::blob(9, (1 << 20) + 3),
    )
    .unwrap();
    let tool = root.join("src/nested/tool.sh");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("nested/tool.sh", root.join("src/tool")).unwrap();
}

fn tar_gz_of(root: &Path) -> Bytes {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", root).unwrap();
    Bytes::from(b.into_inner().unwrap().finish().unwrap())
}

fn zip_of(root: &Path) -> Bytes {
    use std::os::unix::fs::PermissionsExt;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let opts = zip::write::SimpleFileOptions::default()
                .unix_permissions(meta.permissions().mode() & 0o777);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                z.add_symlink(rel, target.to_str().unwrap(), opts).unwrap();
            } else if meta.is_dir() {
                z.add_directory(format!("{rel}/"), opts).unwrap();
                stack.push(e.path());
            } else {
                z.start_file(rel, opts).unwrap();
                z.write_all(&std::fs::read(e.path()).unwrap()).unwrap();
            }
        }
    }
    Bytes::from(z.finish().unwrap().into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_directory_unpacks_archives_into_the_tree_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    sample_tree(&root);
    let mut expected = HashMap::new();
    let want = tree_of(&root, &mut expected);
    let mut files = HashMap::from([
        ("/a/tree.tar.gz".to_string(), tar_gz_of(&root)),
        ("/a/tree.zip".to_string(), zip_of(&root)),
    ]);
    for (name, data, _) in hostile_archives() {
        files.insert(format!("/a/{name}"), data);
    }
    let origin = Origin::start(files).await;
    let kiln = Kiln::start(&config(&[origin.url("/a/")], "  max_unpacked_size: 4MiB\n")).await;
    let mut client = FetchClient::new(kiln.channel().await);
    for name in ["/a/tree.tar.gz", "/a/tree.zip"] {
        let r = client
            .fetch_directory(FetchDirectoryRequest {
                uris: vec![origin.url(name)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let status = r.status.clone().unwrap_or_default();
        assert_eq!(status.code, 0, "{name}: {}", status.message);
        let got = Digest::from_proto(
            DigestFunction::Sha256,
            r.root_directory_digest.as_ref(),
            "d",
        )
        .unwrap();
        assert_eq!(got, want, "{name}: the tree equals the one on disk");
        for (d, dir) in &expected {
            assert_eq!(Directory::decode(stored(&kiln, d).await).unwrap(), *dir);
            for f in &dir.files {
                let fd =
                    Digest::from_proto(DigestFunction::Sha256, f.digest.as_ref(), "f").unwrap();
                assert_eq!(stored(&kiln, &fd).await.len() as u64, fd.size);
            }
        }
    }
    // A subdirectory of the archive.
    let r = client
        .fetch_directory(FetchDirectoryRequest {
            uris: vec![origin.url("/a/tree.tar.gz")],
            qualifiers: vec![q("directory", "src/nested")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let nested = Digest::from_proto(
        DigestFunction::Sha256,
        r.root_directory_digest.as_ref(),
        "d",
    )
    .unwrap();
    let want_nested = tree_of(&root.join("src/nested"), &mut HashMap::new());
    assert_eq!(nested, want_nested);
    // Hostile archives are refused, saying why.
    for (name, _, says) in hostile_archives() {
        let r = client
            .fetch_directory(FetchDirectoryRequest {
                uris: vec![origin.url(&format!("/a/{name}"))],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::InvalidArgument, "{name}: {}", r.message());
        assert!(r.message().contains(says), "{name}: {}", r.message());
    }
    kiln.server.stop().await.unwrap();
}

/// A one-entry tar whose header is written raw (tar's builder refuses
/// these names).
fn raw_tar(path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    if let Some(target) = link {
        h.set_link_name_literal(target).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

/// (file name, archive, what the refusal says): `..`, an absolute path, an
/// escaping symlink, and a zip bomb past the 4 MiB cap the test sets.
fn hostile_archives() -> Vec<(&'static str, Bytes, &'static str)> {
    use tar::EntryType as T;
    let gz = |data: Vec<u8>| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        Bytes::from(e.finish().unwrap())
    };
    let mut bomb = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    bomb.start_file("zeros", zip::write::SimpleFileOptions::default())
        .unwrap();
    bomb.write_all(&vec![0u8; 64 << 20]).unwrap();
    let bomb = Bytes::from(bomb.finish().unwrap().into_inner());
    assert!(bomb.len() < 1 << 20, "the bomb is small");
    vec![
        (
            "dotdot.tar.gz",
            gz(raw_tar("../escape", T::Regular, b"x", None)),
            "..",
        ),
        (
            "absolute.tar",
            raw_tar("/etc/passwd", T::Regular, b"x", None).into(),
            "absolute",
        ),
        (
            "symlink.tar",
            raw_tar("l", T::Symlink, b"", Some("../../etc/passwd")).into(),
            "outside",
        ),
        ("bomb.zip", bomb, "max_unpacked_size"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_assets_are_fetched_without_a_download_and_roles_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = common::tokens_file(
        tmp.path(),
        &[
            ("push-token", "read,write,ac-write", "pusher"),
            ("read-token", "read", "reader"),
            ("write-token", "read,write", "writer"),
        ],
    );
    let kiln = Kiln::start(&config(
        &[],
        &format!("auth:\n  tokens_file: {}\n", tokens.display()),
    ))
    .await;
    fn with<T>(token: &str, req: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let data = Bytes::from_static(b"pushed content");
    let d = sha(&data);
    let uri = "https://example.com/pushed.bin".to_string();
    let mut push = PushClient::new(kiln.channel().await);
    let req = || PushBlobRequest {
        uris: vec![uri.clone()],
        qualifiers: vec![q("bazel.canonical_id", "pushed-v1")],
        blob_digest: Some(d.to_proto()),
        ..Default::default()
    };
    // Not in the CAS yet: refused.
    let err = push.push_blob(with("push-token", req())).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let mut cas = kiln.cas().await;
    cas.batch_update_blobs(with(
        "push-token",
        common::upload_request(std::slice::from_ref(&data)),
    ))
    .await
    .unwrap();
    let err = push.push_blob(with("read-token", req())).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "read may not push");
    let err = push
        .push_blob(with("write-token", req()))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "pushing a record needs ac-write, not write"
    );
    push.push_blob(with("push-token", req())).await.unwrap();

    // Fetched by a reader with the pushed qualifiers (the URI is not even
    // allowed for download); without them it is another asset.
    let mut fetch = FetchClient::new(kiln.channel().await);
    let r = fetch
        .fetch_blob(with(
            "read-token",
            FetchBlobRequest {
                uris: vec![uri.clone()],
                ..Default::default()
            },
        ))
        .await;
    let r = fetched(r.map(|r| r.into_inner()));
    assert_eq!(
        code(&r),
        Code::PermissionDenied,
        "not cached, and a reader may not download"
    );
    let r = fetch
        .fetch_blob(with(
            "read-token",
            FetchBlobRequest {
                uris: vec![uri.clone()],
                qualifiers: vec![q("bazel.canonical_id", "pushed-v1")],
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner());
    let r = fetched(r);
    assert_eq!(code(&r), Code::Ok, "{}", message(&r));
    assert_eq!(r.blob_digest, Some(d.to_proto()));
    let err = fetch
        .fetch_blob(FetchBlobRequest {
            uris: vec![uri],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    kiln.server.stop().await.unwrap();
}
