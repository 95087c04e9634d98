//! A real `kiln worker` against actions that try to leave their directory:
//! absolute and `..` output paths, a file and a symlink of one name,
//! symlinks made at run time that lead to host files, rewriting a shared
//! input, and a token file other users could read.

use std::time::Duration;

use kiln::proto::reapi::ExecuteResponse;
use tonic::Code;

use crate::common::exec::{Spec, WorkerProc, action_writable_dir, run_spec, stdout_of};
use crate::common::{Kiln, MEMORY, missing, sha};

fn config() -> String {
    format!("execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}")
}

async fn run(kiln: &Kiln, spec: &Spec<'_>) -> Result<ExecuteResponse, tonic::Status> {
    run_spec(kiln, spec).await
}

async fn stored(kiln: &Kiln, data: &[u8]) -> bool {
    missing(&mut kiln.cas().await, &[sha(data)])
        .await
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_cannot_reach_outside_their_directory() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "confined", &[]);
    let host = action_writable_dir();
    let secret = host.path().join("secret.txt");
    let secret_text = format!("host secret {}\n", uuid::Uuid::new_v4());
    std::fs::write(&secret, &secret_text).unwrap();
    let victim = host.path().join("victim.txt");
    std::fs::write(&victim, "untouched").unwrap();
    let secret_path = secret.display().to_string();
    let victim_path = victim.display().to_string();

    // Paths that name the host are refused before anything runs.
    let refused = [
        Spec {
            argv: vec!["true"],
            output_paths: vec![&secret_path],
            ..Default::default()
        },
        Spec {
            argv: vec!["true"],
            outputs: vec!["../../../../etc/hostname"],
            ..Default::default()
        },
        Spec {
            argv: vec!["true"],
            working_directory: "/etc",
            ..Default::default()
        },
        Spec {
            argv: vec!["true"],
            working_directory: "a/../..",
            ..Default::default()
        },
        // A file and a symlink of one name: the file's bytes would be
        // written through the link.
        Spec {
            argv: vec!["true"],
            inputs: vec![("x", b"overwrite the host")],
            symlinks: vec![("x", &victim_path)],
            ..Default::default()
        },
    ];
    for spec in &refused {
        let err = run(&kiln, spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    // Symlinks the action makes at run time are never followed out.
    let host_dir = host.path().display().to_string();
    // (kiln made `out` as an output's parent: the action replaces it.)
    let link_script = format!("rm -rf out; ln -s {host_dir} out; ln -s {secret_path} f");
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &link_script],
        outputs: vec!["f"],
        output_paths: vec![],
        ..Default::default()
    };
    let done = run(&kiln, &spec).await.unwrap();
    let result = done.result.clone().unwrap();
    assert!(result.output_files.is_empty(), "{result:?}");
    assert_eq!(result.output_file_symlinks.len(), 1, "reported as a link");
    assert_eq!(result.output_file_symlinks[0].target, secret_path);

    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &link_script],
        outputs: vec!["out/secret.txt"],
        salt: "through-a-parent",
        ..Default::default()
    };
    let done = run(&kiln, &spec).await.unwrap();
    assert_eq!(
        done.status.as_ref().unwrap().code,
        Code::InvalidArgument as i32,
        "{:?}",
        done.status
    );
    assert!(
        !stored(&kiln, secret_text.as_bytes()).await,
        "the host file was uploaded"
    );

    // An input symlink leading out cannot place output directories there.
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "true"],
        symlinks: vec![("escape", &host_dir)],
        outputs: vec!["escape/made/file"],
        ..Default::default()
    };
    let done = run(&kiln, &spec).await.unwrap();
    assert_ne!(done.status.as_ref().unwrap().code, 0);
    assert!(
        !host.path().join("made").exists(),
        "a host directory was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cannot_change_what_the_next_one_reads() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "tamper", &[]);
    let original = b"the original input\n";
    let tamper = Spec {
        argv: vec![
            "/bin/sh",
            "-c",
            "chmod u+w shared.txt; echo tampered > shared.txt; cat shared.txt; true",
        ],
        inputs: vec![("shared.txt", original)],
        salt: "tamper",
        ..Default::default()
    };
    run(&kiln, &tamper).await.unwrap();
    let read = Spec {
        argv: vec!["/bin/cat", "shared.txt"],
        inputs: vec![("shared.txt", original)],
        salt: "read",
        ..Default::default()
    };
    let done = run(&kiln, &read).await.unwrap();
    assert_eq!(done.result.as_ref().unwrap().exit_code, 0);
    assert_eq!(stdout_of(&kiln, &done).await.as_bytes(), original);
}

/// A worker that is not root, and runs without a sandbox, runs actions as
/// itself, so an action can reach the cache directory and rewrite a cached
/// file there: the next action still reads the original, because copies
/// out of the cache are re-verified. (In the sandbox the cache is not even
/// visible: see confinement.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_workers_cache_cannot_be_poisoned() {
    let kiln = Kiln::start(&config()).await;
    let _worker =
        WorkerProc::start_as(65534, 65534, &kiln.url, "unprivileged", &["--sandbox=none"]);
    let original = b"cached input, shared by actions\n";
    // The action's cwd is WORK/runs/RUN/root: the cache is three levels up.
    let tamper = Spec {
        argv: vec![
            "/bin/sh",
            "-c",
            "for f in ../../../cache/*; do chmod u+w \"$f\" && echo poisoned > \"$f\"; done; ls ../../../cache",
        ],
        inputs: vec![("shared.txt", original)],
        salt: "tamper-cache",
        ..Default::default()
    };
    let done = run(&kiln, &tamper).await.unwrap();
    assert_eq!(done.result.as_ref().unwrap().exit_code, 0);
    assert!(
        !stdout_of(&kiln, &done).await.trim().is_empty(),
        "the action did reach the cache"
    );
    let read = Spec {
        argv: vec!["/bin/cat", "shared.txt"],
        inputs: vec![("shared.txt", original)],
        salt: "read-after-poison",
        ..Default::default()
    };
    let done = run(&kiln, &read).await.unwrap();
    assert_eq!(done.result.as_ref().unwrap().exit_code, 0);
    assert_eq!(stdout_of(&kiln, &done).await.as_bytes(), original);
}

#[tokio::test]
async fn a_token_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret-token").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let arg = format!("--token-file={}", token.display());
    let mut worker = WorkerProc::start("http://127.0.0.1:9", "", "loose-token", &[&arg]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
}
