//! Unpacking real archives built here (tar.gz, tar.xz, tar.zst, tar, zip),
//! and the hostile ones kiln must refuse.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use prost::Message;

use super::archive::{Content, Limits, unpack};
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::reapi::Directory;

const LIMITS: Limits = Limits {
    max_entries: 1000,
    max_bytes: 64 << 20,
    max_directory: 4 << 20,
};

/// Unpacks into a map of digest → bytes; returns (root, blobs).
fn run(
    path: &Path,
    limits: Limits,
    sub: Option<&str>,
) -> Result<(Digest, HashMap<Digest, Bytes>), Error> {
    let spool = tempfile::tempdir().unwrap();
    let mut blobs = HashMap::new();
    let mut sink = |d: Digest, c: Content| {
        let bytes = match c {
            Content::Bytes(b) => b,
            Content::File(f) => Bytes::from(std::fs::read(f.path()).unwrap()),
        };
        assert_eq!(
            DigestFunction::Sha256.digest_of(&bytes),
            d,
            "content matches its digest"
        );
        blobs.insert(d, bytes);
        Ok(())
    };
    let root = unpack(
        path,
        DigestFunction::Sha256,
        limits,
        spool.path(),
        sub,
        &std::sync::atomic::AtomicBool::new(false),
        &mut sink,
    )?;
    Ok((root, blobs))
}

fn dir(blobs: &HashMap<Digest, Bytes>, d: &Digest) -> Directory {
    Directory::decode(blobs[d].clone()).unwrap()
}

fn child(blobs: &HashMap<Digest, Bytes>, parent: &Directory, name: &str) -> Directory {
    let node = parent.directories.iter().find(|n| n.name == name).unwrap();
    let d = Digest::from_proto(DigestFunction::Sha256, node.digest.as_ref(), "d").unwrap();
    dir(blobs, &d)
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Written raw: tar::Header::set_path refuses the hostile names tested here.
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

/// A tar of (path, kind, data-or-link-target, mode).
fn tar_bytes(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, mode) in entries {
        if kind.is_symlink() || kind.is_hard_link() {
            let mut h = header(path, *kind, 0, *mode);
            h.set_link_name_literal(std::str::from_utf8(data).unwrap())
                .unwrap();
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            let h = header(path, *kind, data.len() as u64, *mode);
            b.append(&h, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

use tar::EntryType as T;

fn sample() -> Vec<u8> {
    let big = vec![b'z'; (1 << 20) + 5];
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    tar_bytes(&[
        ("./pkg/", T::Directory, b"", 0o755),
        (
            "./pkg/bin/run.sh",
            T::Regular,
            b"#!/bin/sh\necho hi\n",
            0o755,
        ),
        ("./pkg/lib/data.txt", T::Regular, b"data", 0o644),
        ("./pkg/lib/big.bin", T::Regular, big, 0o644),
        ("./pkg/link", T::Symlink, b"lib/data.txt", 0o777),
        ("./pkg/lib/same.txt", T::Link, b"pkg/lib/data.txt", 0o644),
    ])
}

fn check_sample(root: Digest, blobs: &HashMap<Digest, Bytes>) {
    let top = dir(blobs, &root);
    let pkg = child(blobs, &top, "pkg");
    assert_eq!(pkg.symlinks.len(), 1);
    assert_eq!(pkg.symlinks[0].target, "lib/data.txt");
    let bin = child(blobs, &pkg, "bin");
    assert!(bin.files[0].is_executable, "the executable bit survives");
    let lib = child(blobs, &pkg, "lib");
    let names: Vec<&str> = lib.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["big.bin", "data.txt", "same.txt"], "sorted by name");
    assert!(!lib.files[1].is_executable);
    assert_eq!(
        lib.files[1].digest, lib.files[2].digest,
        "a hard link is the same file"
    );
    assert_eq!(
        lib.files[0].digest.as_ref().unwrap().size_bytes,
        (1 << 20) + 5
    );
}

#[test]
fn tar_in_every_compression_unpacks_to_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = sample();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&plain).unwrap();
    let archives = [
        ("a.tar", plain.clone()),
        ("a.tar.gz", gzip(&plain)),
        ("a.tar.xz", xz.finish().unwrap()),
        ("a.tar.zst", zstd::encode_all(plain.as_slice(), 1).unwrap()),
    ];
    let mut roots = Vec::new();
    for (name, data) in archives {
        let (root, blobs) = run(&write(tmp.path(), name, &data), LIMITS, None).unwrap();
        check_sample(root, &blobs);
        roots.push(root);
    }
    assert!(
        roots.windows(2).all(|w| w[0] == w[1]),
        "one tree whatever the compression"
    );
    // The `directory` qualifier returns a subtree.
    let (sub, blobs) = run(&write(tmp.path(), "b.tar", &plain), LIMITS, Some("pkg/lib")).unwrap();
    assert_eq!(dir(&blobs, &sub).files.len(), 3);
    let missing = run(&write(tmp.path(), "c.tar", &plain), LIMITS, Some("nope"));
    assert!(matches!(missing, Err(Error::NotFound(_))));
}

#[test]
fn zip_with_dirs_symlink_and_executable() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = |mode: u32| zip::write::SimpleFileOptions::default().unix_permissions(mode);
    z.add_directory("top/sub/", opts(0o755)).unwrap();
    z.start_file("top/sub/tool", opts(0o755)).unwrap();
    z.write_all(b"#!/bin/true\n").unwrap();
    z.start_file("top/readme", opts(0o644)).unwrap();
    z.write_all(b"read me").unwrap();
    z.add_symlink("top/alias", "sub/tool", opts(0o777)).unwrap();
    z.finish().unwrap();
    let (root, blobs) = run(&path, LIMITS, None).unwrap();
    let top = child(&blobs, &dir(&blobs, &root), "top");
    assert_eq!(top.symlinks[0].target, "sub/tool");
    assert_eq!(top.files[0].name, "readme");
    assert!(!top.files[0].is_executable);
    let sub = child(&blobs, &top, "sub");
    assert!(sub.files[0].is_executable);
}

fn refused(result: Result<(Digest, HashMap<Digest, Bytes>), Error>, what: &str) -> String {
    match result {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("{what}: expected a refusal, got {:?}", other.map(|r| r.0)),
    }
}

#[test]
fn hostile_tars_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_bytes(&[("a/../../etc/passwd", T::Regular, b"x", 0o644)]),
            "..",
        ),
        (
            "absolute",
            tar_bytes(&[("/etc/passwd", T::Regular, b"x", 0o644)]),
            "absolute",
        ),
        (
            "link-abs",
            tar_bytes(&[("l", T::Symlink, b"/etc/passwd", 0o777)]),
            "outside",
        ),
        (
            "link-up",
            tar_bytes(&[("a/l", T::Symlink, b"../../x", 0o777)]),
            "outside",
        ),
        (
            // Each link stays inside on its own; followed together they leave.
            "link-chain",
            tar_bytes(&[
                ("a/b/s", T::Symlink, b"../..", 0o777),
                ("a/b/l", T::Symlink, b"s/../../..", 0o777),
            ]),
            "outside",
        ),
        (
            "hardlink-out",
            tar_bytes(&[("h", T::Link, b"../etc/passwd", 0o644)]),
            "..",
        ),
        (
            "hardlink-none",
            tar_bytes(&[("h", T::Link, b"nothing", 0o644)]),
            "earlier file",
        ),
        (
            "fifo",
            tar_bytes(&[("p", T::Fifo, b"", 0o644)]),
            "not a file",
        ),
        (
            "file-then-dir",
            tar_bytes(&[
                ("a", T::Regular, b"x", 0o644),
                ("a/b", T::Regular, b"y", 0o644),
            ]),
            "both",
        ),
    ];
    for (name, data, says) in cases {
        let message = refused(run(&write(tmp.path(), name, &data), LIMITS, None), name);
        assert!(message.contains(says), "{name}: {message}");
    }
    // A link leading above a requested subdirectory leaves the returned tree.
    let data = tar_bytes(&[
        ("a/b/l", T::Symlink, b"../c", 0o777),
        ("a/c", T::Regular, b"x", 0o644),
    ]);
    let path = write(tmp.path(), "sub-escape", &data);
    assert!(run(&path, LIMITS, None).is_ok(), "inside the whole archive");
    refused(run(&path, LIMITS, Some("a/b")), "above the subdirectory");
}

#[test]
fn bombs_stop_at_the_caps() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 MiB of zeros gzip to ~64 KiB; the cap is 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let data = gzip(&tar_bytes(&[("zeros", T::Regular, &zeros, 0o644)]));
    assert!(data.len() < 1 << 20);
    let small = Limits {
        max_entries: 1000,
        max_bytes: 1 << 20,
        max_directory: 4 << 20,
    };
    let message = refused(
        run(&write(tmp.path(), "bomb.tar.gz", &data), small, None),
        "tar bomb",
    );
    assert!(message.contains("max_unpacked_size"), "{message}");

    let path = tmp.path().join("bomb.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    z.start_file("zeros", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(&zeros).unwrap();
    z.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
    let message = refused(run(&path, small, None), "zip bomb");
    assert!(message.contains("max_unpacked_size"), "{message}");

    let many: Vec<(String, T, &[u8], u32)> = (0..20)
        .map(|i| (format!("f{i}"), T::Regular, &b"x"[..], 0o644))
        .collect();
    let refs: Vec<(&str, T, &[u8], u32)> = many
        .iter()
        .map(|(n, t, d, m)| (n.as_str(), *t, *d, *m))
        .collect();
    let few = Limits {
        max_entries: 10,
        max_bytes: 1 << 20,
        max_directory: 4 << 20,
    };
    let message = refused(
        run(&write(tmp.path(), "many.tar", &tar_bytes(&refs)), few, None),
        "entries",
    );
    assert!(message.contains("max_archive_entries"), "{message}");

    let message = refused(
        run(
            &write(tmp.path(), "junk", b"not an archive at all"),
            LIMITS,
            None,
        ),
        "junk",
    );
    assert!(message.contains("not a tar"), "{message}");
}

/// A GNU long-name record (`L`) of `size` bytes holding `name`, then the
/// entry it names.
fn long_named(name: &[u8], declared: u64, kind: T, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = header("././@LongLink", T::GNULongName, declared, 0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(name);
    out.extend(std::iter::repeat_n(0u8, (512 - name.len() % 512) % 512));
    let h = header("short", kind, data.len() as u64, 0o644);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

#[test]
fn a_path_ten_thousand_levels_deep_is_refused_without_recursing() {
    let tmp = tempfile::tempdir().unwrap();
    // 150 bytes of gzip: the crash the finding reported.
    let deep = "a/".repeat(10_000) + "f";
    let data = gzip(&long_named(
        deep.as_bytes(),
        deep.len() as u64,
        T::Regular,
        b"x",
    ));
    assert!(data.len() < 1024, "{}", data.len());
    let message = refused(
        run(&write(tmp.path(), "deep.tgz", &data), LIMITS, None),
        "deep",
    );
    assert!(message.contains("bytes, more than"), "{message}");
    // Short names, many levels: the depth cap.
    let deep = "a/".repeat(300) + "f";
    let data = long_named(deep.as_bytes(), deep.len() as u64, T::Regular, b"x");
    let message = refused(
        run(&write(tmp.path(), "deep.tar", &data), LIMITS, None),
        "depth",
    );
    assert!(message.contains("directories deep"), "{message}");
    // Within the caps a deep tree unpacks (and is stored without recursion).
    let ok = "d/".repeat(250) + "f";
    let data = long_named(ok.as_bytes(), ok.len() as u64, T::Regular, b"deep file");
    let (root, blobs) = run(&write(tmp.path(), "ok.tar", &data), LIMITS, None).unwrap();
    let mut at = dir(&blobs, &root);
    for _ in 0..250 {
        at = child(&blobs, &at, "d");
    }
    assert_eq!(at.files[0].name, "f");
}

#[test]
fn a_huge_long_name_record_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    // The header claims 200 MiB of name; nothing past it need exist.
    let mut h = header("././@LongLink", T::GNULongName, 200 << 20, 0o644);
    h.set_cksum();
    let data = gzip(h.as_bytes());
    let message = refused(
        run(&write(tmp.path(), "long.tgz", &data), LIMITS, None),
        "long name",
    );
    assert!(
        message.contains("long name of 209715200 bytes"),
        "{message}"
    );
}

#[test]
fn pax_paths_are_read_and_pax_sizes_that_disagree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pax_entry = |records: &str, kind: T, data: &[u8]| {
        let mut out = Vec::new();
        let h = header("PaxHeaders/x", T::XHeader, records.len() as u64, 0o644);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(records.as_bytes());
        out.extend(std::iter::repeat_n(0u8, (512 - records.len() % 512) % 512));
        let h = header("short", kind, data.len() as u64, 0o644);
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    };
    let record = |key: &str, value: &str| {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    };
    let long = format!("{}/file.txt", "x".repeat(200));
    let data = pax_entry(&record("path", &long), T::Regular, b"pax");
    let (root, blobs) = run(&write(tmp.path(), "pax.tar", &data), LIMITS, None).unwrap();
    let top = dir(&blobs, &root);
    assert_eq!(top.directories[0].name, "x".repeat(200));
    let data = pax_entry(&record("size", "999"), T::Regular, b"pax");
    let message = refused(
        run(&write(tmp.path(), "size.tar", &data), LIMITS, None),
        "pax size",
    );
    assert!(message.contains("PAX size"), "{message}");
    let data = pax_entry("garbage", T::Regular, b"pax");
    refused(
        run(&write(tmp.path(), "bad.tar", &data), LIMITS, None),
        "bad pax",
    );
}

#[test]
fn a_directory_no_client_could_read_back_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("file-{i:04}")).collect();
    let refs: Vec<(&str, T, &[u8], u32)> = names
        .iter()
        .map(|n| (n.as_str(), T::Regular, &b"x"[..], 0o644))
        .collect();
    let tight = Limits {
        max_directory: 1024,
        ..LIMITS
    };
    let message = refused(
        run(
            &write(tmp.path(), "wide.tar", &tar_bytes(&refs)),
            tight,
            None,
        ),
        "wide",
    );
    assert!(message.contains("max_message_size"), "{message}");
}

#[test]
fn decompressors_that_ask_for_too_much_memory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tar_bytes(&[("f", T::Regular, b"small", 0o644)]);
    // A zstd frame declaring a 1 GiB window (the decoder would allocate it).
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.window_log(30).unwrap();
    encoder.long_distance_matching(true).unwrap();
    encoder.write_all(&tar).unwrap();
    let zst = encoder.finish().unwrap();
    let message = refused(
        run(&write(tmp.path(), "big-window.tar.zst", &zst), LIMITS, None),
        "zstd",
    );
    assert!(
        message.contains("zstd") || message.contains("memory"),
        "{message}"
    );
    // An xz stream whose dictionary needs 256 MiB to decode.
    let mut options = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
    options.dict_size(256 << 20);
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma2(&options);
    let stream =
        liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc64)
            .unwrap();
    let mut xz = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    xz.write_all(&tar).unwrap();
    let xz = xz.finish().unwrap();
    let message = refused(
        run(&write(tmp.path(), "big-dict.tar.xz", &xz), LIMITS, None),
        "xz",
    );
    assert!(message.to_lowercase().contains("memory"), "{message}");
    // Ordinary ones still unpack.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(&tar).unwrap();
    let zst = encoder.finish().unwrap();
    assert!(run(&write(tmp.path(), "ok.tar.zst", &zst), LIMITS, None).is_ok());
}
