//! `container-image`: an action runs with an image's root file system as
//! its sandbox's root. The test builds a real OCI image layout from
//! Debian's `busybox-static` (one gzip layer, a config, a manifest and an
//! index naming it), gives it to `kiln worker --image-dir` as a directory
//! and as a tarball, and stores a tarball of it in the CAS; then runs
//! actions in it by name, by pinned digest, from the CAS, and by names the
//! worker lacks.

use std::io::Write;
use std::path::Path;

use tonic::Code;

use crate::common::exec::{Spec, WorkerProc, run_spec, stdout_of};
use crate::common::{Kiln, MEMORY};

fn sha256_hex(data: &[u8]) -> String {
    kiln::digest::DigestFunction::Sha256
        .digest_of(data)
        .hash_hex()
}

/// Writes a blob into the layout; returns its `sha256:HEX` digest.
fn blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// An OCI layout at `layout` holding one image, `kiln-test/busybox:1`;
/// returns its manifest digest.
fn busybox_layout(layout: &Path) -> String {
    let busybox = std::fs::read("/bin/busybox")
        .expect("Debian's busybox-static (README's test command installs it)");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = |path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    dir("bin/");
    dir("etc/");
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, data).unwrap();
    };
    file(&mut tar, "bin/busybox", 0o755, &busybox);
    file(&mut tar, "etc/image-marker", 0o644, b"from the image\n");
    for applet in ["sh", "cat", "ls", "echo", "id", "head", "pwd"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let layer_tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = blob(layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&layer_tar))] },
    })
    .to_string();
    let config_digest = blob(layout, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len() }],
    })
    .to_string();
    let manifest_digest = blob(layout, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": "kiln-test/busybox:1",
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    })
    .to_string();
    std::fs::write(layout.join("index.json"), index).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    manifest_digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_run_in_the_image_they_name() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let images = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(images.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let manifest = busybox_layout(&images.path().join("busybox"));
    // The same layout as a tarball, under another name.
    let layout_tar = {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", images.path().join("busybox"))
            .unwrap();
        b.into_inner().unwrap()
    };
    let arg = format!("--image-dir={}", images.path().display());
    let _worker = WorkerProc::start(&kiln.url, "", "images", &[&arg]);
    // The layout tarball in the CAS, named by its digest.
    let in_cas = bytes::Bytes::from(layout_tar);
    kiln.cas()
        .await
        .batch_update_blobs(crate::common::upload_request(std::slice::from_ref(&in_cas)))
        .await
        .unwrap();
    let cas_ref = {
        let d = crate::common::sha(&in_cas);
        format!("cas://{}/{}", d.hash_hex(), d.size)
    };

    let script = "cat /etc/image-marker; ls /usr >/dev/null 2>&1 && echo host || echo no-usr; pwd; echo made > out";
    let pinned = format!("docker://kiln-test/busybox@{manifest}");
    for (salt, image) in [
        ("by-name", "docker://kiln-test/busybox:1"),
        ("pinned", pinned.as_str()),
        ("from-the-cas", cas_ref.as_str()),
    ] {
        let spec = Spec {
            argv: vec!["/bin/sh", "-c", script],
            platform: vec![("container-image", image)],
            outputs: vec!["out"],
            salt,
            ..Default::default()
        };
        let done = run_spec(&kiln, &spec).await.unwrap();
        assert_eq!(
            done.status.as_ref().map_or(0, |s| s.code),
            0,
            "{image}: {done:?}"
        );
        let result = done.result.as_ref().unwrap();
        assert_eq!(result.exit_code, 0, "{image}");
        assert_eq!(
            stdout_of(&kiln, &done).await,
            "from the image\nno-usr\n/kiln/exec\n",
            "{image}: the image is the root, not the host"
        );
        assert_eq!(
            result.output_files.len(),
            1,
            "{image}: outputs are collected"
        );
    }

    let absent_cas = format!("cas://{}/123", "0".repeat(64));
    for (salt, image) in [
        ("absent", "docker://kiln-test/absent:2"),
        ("absent-cas", absent_cas.as_str()),
    ] {
        let spec = Spec {
            argv: vec!["/bin/true"],
            platform: vec![("container-image", image)],
            salt,
            ..Default::default()
        };
        let done = run_spec(&kiln, &spec).await.unwrap();
        let status = done.status.unwrap();
        assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
        assert!(status.message.contains(image), "{}", status.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_tarball_in_the_image_dir_is_used() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let built = tempfile::tempdir().unwrap();
    busybox_layout(&built.path().join("layout"));
    let images = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(images.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", built.path().join("layout")).unwrap();
    std::fs::write(images.path().join("busybox.tar"), b.into_inner().unwrap()).unwrap();
    let arg = format!("--image-dir={}", images.path().display());
    let _worker = WorkerProc::start(&kiln.url, "", "tarred", &[&arg]);
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "cat /etc/image-marker"],
        platform: vec![("container-image", "docker://kiln-test/busybox:1")],
        salt: "tarred",
        ..Default::default()
    };
    let done = run_spec(&kiln, &spec).await.unwrap();
    assert_eq!(done.status.as_ref().map_or(0, |s| s.code), 0, "{done:?}");
    assert_eq!(stdout_of(&kiln, &done).await, "from the image\n");
}
