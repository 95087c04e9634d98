//! A real `kiln worker` running as root, with actions in its bubblewrap
//! sandbox as uids of its pool, against the attacks of an `execute`-only
//! client: processes that outlive their action and race output collection,
//! one action poisoning another's inputs through /proc, output FIFOs and
//! sparse terabytes, a DAG bomb of an input root, and the host's files,
//! network and the worker's own directories seen from inside.

use std::time::Duration;

use bytes::Bytes;
use kiln::proto::reapi::{Action, Command, Directory, DirectoryNode, ExecuteResponse, FileNode};
use prost::Message;
use tonic::Code;

use crate::common::exec::{
    Spec, WorkerProc, action_writable_dir, execute, proc_stat, processes_with, response, run_spec,
    spawn_execute, stdout_of, upload, wait_for_process, wait_no_process,
};
use crate::common::{Kiln, MEMORY, missing, sha, upload_request, wait_metrics};

fn config() -> String {
    format!("execution: {{ database: memory, bot_wait: 5s }}\n{MEMORY}")
}

async fn run(kiln: &Kiln, spec: &Spec<'_>) -> ExecuteResponse {
    run_spec(kiln, spec).await.unwrap()
}

async fn stored(kiln: &Kiln, data: &[u8]) -> bool {
    missing(&mut kiln.cas().await, &[sha(data)])
        .await
        .is_empty()
}

fn code(done: &ExecuteResponse) -> i32 {
    done.status.as_ref().map_or(0, |s| s.code)
}

/// A root-only directory holding a root-only secret, as a host would.
fn host_secret() -> (tempfile::TempDir, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret_dir = dir.path().join("private");
    std::fs::create_dir(&secret_dir).unwrap();
    let text = format!("root-only secret {}\n", uuid::Uuid::new_v4());
    std::fs::write(secret_dir.join("key"), &text).unwrap();
    std::fs::set_permissions(
        secret_dir.join("key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = secret_dir.display().to_string();
    (dir, path, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_left_behind_dies_with_its_action_and_cannot_swap_outputs() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "survivor", &[]);
    let (_keep, secret_dir, secret) = host_secret();
    let marker = format!("1000.{}", std::process::id());
    // The survivor starts a session of its own (escaping a process-group
    // kill) and keeps swapping the output directory for a symlink to a
    // root-only host directory while the worker collects.
    let script = format!(
        "mkdir -p out && echo made > out/f && \
         setsid -f sh -c 'while :; do rm -rf out; ln -sfn {secret_dir} out; mkdir -p out 2>/dev/null; done' && \
         setsid -f sleep {marker} && echo started"
    );
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        output_paths: vec!["out"],
        salt: "survivor",
        ..Default::default()
    };
    let done = run(&kiln, &spec).await;
    // By the time the result is reported, nothing the action started runs.
    assert!(
        processes_with(&format!("sleep\0{marker}")).is_empty(),
        "a process of the action outlived it"
    );
    assert_eq!(stdout_of(&kiln, &done).await.trim(), "started");
    assert!(
        !stored(&kiln, secret.as_bytes()).await,
        "a root-only host file was uploaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_sees_only_its_own_world() {
    let kiln = Kiln::start(&config()).await;
    // The worker's token sits in a directory the allow list shows, as a
    // Kubernetes secret mounts it: a symlink into `..data`.
    let shown = tempfile::tempdir().unwrap();
    let token_text = format!("worker-token-{}", uuid::Uuid::new_v4());
    std::fs::create_dir(shown.path().join("..data")).unwrap();
    std::fs::write(shown.path().join("..data/token"), &token_text).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path, m| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&shown.path().join("..data/token"), 0o600);
        mode(&shown.path().join("..data"), 0o755);
        mode(shown.path(), 0o755);
    }
    std::os::unix::fs::symlink("..data/token", shown.path().join("token")).unwrap();
    let shown_dir = shown.path().display().to_string();
    let token_arg = format!("--token-file={shown_dir}/token");
    let mut allow: Vec<String> = ["/usr", "/bin", "/lib", "/lib64", "/etc", &shown_dir]
        .iter()
        .map(|p| format!("--sandbox-ro={p}"))
        .collect();
    allow.push(token_arg);
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let worker = WorkerProc::start(&kiln.url, "", "world", &allow);
    let (_keep, secret_dir, _) = host_secret();
    let port = kiln.server.addr.port();
    let work_dir = worker.dir.path().display().to_string();
    let script = format!(
        "echo uid=$(id -u); \
         echo shadow=$(cat /etc/shadow 2>/dev/null | wc -c); \
         echo root=$(ls /root >/dev/null 2>&1 && echo visible || echo hidden); \
         echo secret=$(ls {secret_dir} >/dev/null 2>&1 && echo visible || echo hidden); \
         echo work=$(ls {work_dir} >/dev/null 2>&1 && echo visible || echo hidden); \
         echo net=$(bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo open || echo closed); \
         echo usr=$(touch /usr/kiln-probe 2>/dev/null && echo writable || echo readonly); \
         echo procs=$(ls -d /proc/[0-9]* | wc -l); \
         echo cwd=$(pwd); \
         echo token=$(cat {shown_dir}/token {shown_dir}/..data/token 2>/dev/null | wc -c)"
    );
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "world",
        ..Default::default()
    };
    let done = run(&kiln, &spec).await;
    let out = stdout_of(&kiln, &done).await;
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not printed: {out}"))
            .to_string()
    };
    let uid: u32 = field("uid").parse().unwrap();
    assert!(uid >= 1_000_000, "runs as a pool uid, not {uid}: {out}");
    assert_eq!(field("shadow"), "0", "{out}");
    assert_eq!(field("root"), "hidden", "{out}");
    assert_eq!(field("secret"), "hidden", "{out}");
    assert_eq!(
        field("work"),
        "hidden",
        "the worker's cache and runs: {out}"
    );
    assert_eq!(field("net"), "closed", "{out}");
    assert_eq!(field("usr"), "readonly", "{out}");
    let procs: u32 = field("procs").parse().unwrap();
    assert!(procs <= 6, "only its own processes: {out}");
    assert_eq!(field("cwd"), "/kiln/exec", "{out}");
    assert_eq!(field("token"), "0", "the worker's token is masked: {out}");
    assert!(!out.contains(&token_text));

    // Network on request is refused by a worker that does not allow it.
    let spec = Spec {
        argv: vec!["/bin/true"],
        platform: vec![("network", "on")],
        salt: "wants-network",
        ..Default::default()
    };
    let done = run(&kiln, &spec).await;
    assert_eq!(code(&done), Code::FailedPrecondition as i32, "{done:?}");
    assert!(
        done.status.unwrap().message.contains("--allow-network"),
        "the refusal says what to change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_action_cannot_poison_anothers_inputs() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "neighbours", &["--concurrency=2"]);
    let marks = action_writable_dir();
    let m = marks.path().display().to_string();
    let original = b"the victim's own input\n";
    // The victim says it runs, waits until the attacker is done, then
    // reads its input; the attacker rewrites every `shared.txt` it can
    // find through /proc meanwhile.
    let victim_script = format!(
        "echo > {m}/victim-running; i=0; while [ ! -e {m}/attacked ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; cat shared.txt"
    );
    let attack_script = format!(
        "i=0; while [ ! -e {m}/victim-running ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
         for n in 1 2 3 4 5; do for d in /proc/[0-9]*/cwd /proc/[0-9]*/root/kiln/exec; do \
           rm -f $d/shared.txt 2>/dev/null; echo poisoned > $d/shared.txt 2>/dev/null; \
           chmod u+w $d/shared.txt 2>/dev/null; echo poisoned >> $d/shared.txt 2>/dev/null; \
         done; done; echo > {m}/attacked"
    );
    let ch = kiln.channel().await;
    let victim = Spec {
        argv: vec!["/bin/sh", "-c", &victim_script],
        inputs: vec![("shared.txt", original)],
        salt: "victim",
        ..Default::default()
    };
    let attacker = Spec {
        argv: vec!["/bin/sh", "-c", &attack_script],
        inputs: vec![("shared.txt", original)],
        salt: "attacker",
        ..Default::default()
    };
    let victim_digest = upload(&ch, "", &victim).await;
    let attacker_digest = upload(&ch, "", &attacker).await;
    let victim_call = spawn_execute(&ch, "", victim_digest, 0);
    let attacker_call = spawn_execute(&ch, "", attacker_digest, 0);
    let attacked = response(attacker_call.await.unwrap().unwrap().last().unwrap());
    assert_eq!(code(&attacked), 0, "{attacked:?}");
    let done = response(victim_call.await.unwrap().unwrap().last().unwrap());
    assert_eq!(done.result.as_ref().unwrap().exit_code, 0);
    assert!(marks.path().join("attacked").exists(), "the attack ran");
    assert_eq!(
        stdout_of(&kiln, &done).await.as_bytes(),
        original,
        "the victim read a poisoned input (and its result is cached for everyone)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_fifos_and_sparse_terabytes_fail_the_action_not_the_worker() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "special-outputs", &[]);
    let fifo = Spec {
        argv: vec!["/bin/sh", "-c", "mkfifo out"],
        outputs: vec!["out"],
        salt: "fifo",
        ..Default::default()
    };
    let done = run(&kiln, &fifo).await;
    assert_eq!(code(&done), Code::InvalidArgument as i32, "{done:?}");
    let message = done.status.unwrap().message;
    assert!(
        message.contains("FIFO") && message.contains("out"),
        "{message}"
    );

    let sparse = Spec {
        argv: vec!["/bin/sh", "-c", "truncate -s 1T big"],
        outputs: vec!["big"],
        salt: "sparse",
        ..Default::default()
    };
    let done = run(&kiln, &sparse).await;
    assert_eq!(code(&done), Code::ResourceExhausted as i32, "{done:?}");
    assert!(done.status.unwrap().message.contains("--max-output-size"));

    // The one slot is free again.
    let ok = Spec {
        argv: vec!["/bin/sh", "-c", "echo fine"],
        salt: "after",
        ..Default::default()
    };
    let done = run(&kiln, &ok).await;
    assert_eq!(code(&done), 0);
    assert_eq!(stdout_of(&kiln, &done).await, "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_bomb_is_refused_before_anything_is_built() {
    let kiln = Kiln::start(&config()).await;
    let worker = WorkerProc::start(&kiln.url, "", "bomb", &[]);
    // 60 levels, each naming the one below twice: 2^60 files.
    let leaf_data = Bytes::from_static(b"x");
    let mut blobs = vec![leaf_data.clone()];
    let leaf = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(sha(&leaf_data).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut below = Bytes::from(leaf.encode_to_vec());
    blobs.push(below.clone());
    for _ in 0..60 {
        let node = |name: &str| DirectoryNode {
            name: name.into(),
            digest: Some(sha(&below).to_proto()),
        };
        let dir = Directory {
            directories: vec![node("a"), node("b")],
            ..Default::default()
        };
        below = Bytes::from(dir.encode_to_vec());
        blobs.push(below.clone());
    }
    let command = Bytes::from(
        Command {
            arguments: vec!["/bin/true".into()],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let action = Bytes::from(
        Action {
            command_digest: Some(sha(&command).to_proto()),
            input_root_digest: Some(sha(&below).to_proto()),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    blobs.extend([command, action.clone()]);
    kiln.cas()
        .await
        .batch_update_blobs(upload_request(&blobs))
        .await
        .unwrap();
    let ch = kiln.channel().await;
    let ops = execute(&ch, "", sha(&action), true, 0).await.unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(code(&done), Code::InvalidArgument as i32, "{done:?}");
    let message = done.status.unwrap().message;
    assert!(message.contains("expands to"), "{message}");
    // Nothing of it was made on the worker's disk.
    let runs = worker.dir.path().join("runs");
    let mut left = Vec::new();
    for entry in std::fs::read_dir(&runs).unwrap() {
        let entry = entry.unwrap();
        // Slots' resident sandboxes keep a directory each for their runs.
        if entry.file_name().to_string_lossy().starts_with("slot-") {
            left.extend(
                std::fs::read_dir(entry.path())
                    .unwrap()
                    .map(|e| e.unwrap().path()),
            );
        } else {
            left.push(entry.path());
        }
    }
    assert!(left.is_empty(), "run directories left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_whole_tree_at_once_and_costs_no_other_job_an_attempt() {
    use kiln::proto::longrunning::CancelOperationRequest;
    use kiln::proto::longrunning::operations_client::OperationsClient;
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "cancel", &[]);
    let ch = kiln.channel().await;
    let marker = format!("600.{}", std::process::id());
    // A tree: a child in a session of its own, and the command itself.
    let script = format!("setsid -f sleep {marker}1; sleep {marker}2");
    let long = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        salt: "long",
        ..Default::default()
    };
    let digest = upload(&ch, "", &long).await;
    let call = spawn_execute(&ch, "", digest, 0);
    wait_for_process(&format!("sleep\0{marker}2"), Duration::from_secs(30)).await;
    wait_for_process(&format!("sleep\0{marker}1"), Duration::from_secs(5)).await;
    // A second job waits for the one slot meanwhile.
    let next = Spec {
        argv: vec!["/bin/sh", "-c", "echo next"],
        salt: "next",
        ..Default::default()
    };
    let next_digest = upload(&ch, "", &next).await;
    let next_call = spawn_execute(&ch, "", next_digest, 0);
    wait_metrics(&kiln, "the second job queued", |m| {
        m.contains("kiln_exec_jobs_total{event=\"queued\"} 2")
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first job never showed as executing"
        );
        let ops = OperationsClient::new(ch.clone())
            .list_operations(kiln::proto::longrunning::ListOperationsRequest {
                name: String::new(),
                filter: format!("stage=EXECUTING action_digest={}", digest.hash_hex()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .operations;
        if let Some(op) = ops.into_iter().next() {
            break op.name;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    OperationsClient::new(ch.clone())
        .cancel_operation(CancelOperationRequest { name: first })
        .await
        .unwrap();
    // Every process of the action goes, the one in its own session too.
    let gone = wait_no_process(&format!("sleep\0{marker}"), Duration::from_secs(10)).await;
    let ops = call.await.unwrap().unwrap();
    assert_eq!(code(&response(ops.last().unwrap())), Code::Cancelled as i32);
    let done = response(next_call.await.unwrap().unwrap().last().unwrap());
    assert_eq!(code(&done), 0, "{done:?}");
    assert_eq!(stdout_of(&kiln, &done).await, "next\n");
    // No lease was dropped and re-queued on the way.
    let metrics = crate::common::scrape(kiln.server.http_addr).await;
    assert!(
        !metrics.contains("kiln_exec_jobs_total{event=\"requeued\"}"),
        "a job was re-queued: {metrics}"
    );
    eprintln!("cancel to process tree gone: {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsandboxed_worker_is_shown_as_such() {
    let kiln = Kiln::start(&config()).await;
    let _confined = WorkerProc::start(&kiln.url, "", "confined-one", &[]);
    let _open = WorkerProc::start(&kiln.url, "", "open-one", &["--sandbox=none"]);
    let url = format!("http://{}/operations", kiln.server.http_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if page.contains("confined-one") && page.contains("open-one") {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both workers never showed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let row = |bot: &str| -> String {
        let at = page.find(bot).unwrap();
        let end = page[at..].find("</tr>").unwrap();
        page[at..at + end].to_string()
    };
    assert!(
        row("open-one").contains("UNSANDBOXED"),
        "{}",
        row("open-one")
    );
    assert!(
        row("confined-one").contains("bwrap"),
        "{}",
        row("confined-one")
    );
    assert!(!row("confined-one").contains("UNSANDBOXED"));
}

/// A worker whose sandbox cannot start (here a `bwrap` that always fails,
/// as one refused user namespaces would) says so and stops at start,
/// instead of taking leases and failing every action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_sandbox_cannot_start_refuses_to_run() {
    let mut worker = WorkerProc::start(
        "http://127.0.0.1:9",
        "",
        "broken-sandbox",
        &["--bwrap=/bin/false"],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker kept running without a working sandbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
}

/// The resident sandbox helpers `worker` started (descendants of it).
fn helpers_of(worker: &WorkerProc) -> Vec<i32> {
    let root = worker.child.id() as i32;
    processes_with("--resident")
        .into_iter()
        .filter(|pid| {
            // The helper itself, not the bubblewrap that started it.
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/kiln/measure\0"))
        })
        .filter(|&pid| {
            let mut at = pid;
            for _ in 0..8 {
                match proc_stat(at).map(|(_, parent)| parent) {
                    Some(p) if p == root => return true,
                    Some(p) if p > 1 => at = p,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_of_one_slot_leave_each_other_nothing() {
    let kiln = Kiln::start(&config()).await;
    let worker = WorkerProc::start(&kiln.url, "", "slotmates", &["--concurrency=1"]);
    // The first action leaves what it can: files in /tmp, /dev/shm, / and
    // /dev, a SysV shared memory segment, a process in a session of its
    // own; and it tries the helper that started it.
    let leave = "echo left > /tmp/left; echo left > /dev/shm/left; \
                 echo left > /left 2>/dev/null && echo root=writable; \
                 echo left > /dev/left 2>/dev/null && echo dev=writable; \
                 ipcmk -M 4096 >/dev/null 2>&1 && echo ipc=made; \
                 setsid -f sh -c 'while :; do sleep 1; done' slotmate-survivor >/dev/null 2>&1; \
                 echo survivor=$(grep -l 'slotmate-surviv[o]r' /proc/[0-9]*/cmdline 2>/dev/null | wc -l); \
                 echo helper_env=$(cat /proc/1/environ 2>/dev/null | wc -c); \
                 echo helper_fds=$(ls /proc/1/fd 2>/dev/null | wc -l); \
                 echo slot=$(ls -A /kiln/slot 2>/dev/null | wc -l); \
                 echo caps=$(grep CapEff /proc/self/status | tr -d '[:space:]')";
    let first = run(
        &kiln,
        &Spec {
            argv: vec!["/bin/sh", "-c", leave],
            salt: "slotmate-first",
            ..Default::default()
        },
    )
    .await;
    let out = stdout_of(&kiln, &first).await;
    assert_eq!(code(&first), 0, "{first:?}");
    assert!(out.contains("ipc=made"), "the segment was made: {out}");
    assert!(
        !out.contains("survivor=0"),
        "the survivor was running when the action ended: {out}"
    );
    for line in [
        "helper_env=0",
        "helper_fds=0",
        "slot=0",
        "caps=CapEff:0000000000000000",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} expected: {out}");
    }
    assert!(!out.contains("=writable"), "{out}");
    assert!(
        processes_with("slotmate-survivor").is_empty(),
        "the survivor is gone"
    );
    // The next action in the same slot finds none of it.
    let look = "echo tmp=$(ls /tmp/left 2>/dev/null | wc -l); echo shm=$(ls -A /dev/shm | wc -l); \
                echo root=$(ls /left 2>/dev/null | wc -l); \
                echo ipc=$(ipcs -m | grep -c '^0x'); \
                echo procs=$(grep -l 'slotmate-surviv[o]r' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)";
    let second = run(
        &kiln,
        &Spec {
            argv: vec!["/bin/sh", "-c", look],
            salt: "slotmate-second",
            ..Default::default()
        },
    )
    .await;
    let out = stdout_of(&kiln, &second).await;
    for line in ["tmp=0", "shm=0", "root=0", "ipc=0", "procs=0"] {
        assert!(out.lines().any(|l| l == line), "{line} expected: {out}");
    }
    // A helper killed from outside costs nothing but itself: the slot's
    // next action starts a new one.
    let helpers = helpers_of(&worker);
    assert_eq!(helpers.len(), 1, "one resident helper for one slot");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helpers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_no_process_pid(helpers[0]).await;
    let third = run(
        &kiln,
        &Spec {
            argv: vec!["/bin/sh", "-c", "echo again"],
            salt: "slotmate-third",
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code(&third), 0, "{third:?}");
    assert_eq!(stdout_of(&kiln, &third).await, "again\n");
    let now = helpers_of(&worker);
    assert!(
        now.len() == 1 && now[0] != helpers[0],
        "a new helper: {now:?}"
    );
}

async fn wait_no_process_pid(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // A killed helper is reaped by the worker when it next looks.
    while proc_stat(pid).is_some_and(|(state, _)| state != 'Z') {
        assert!(
            tokio::time::Instant::now() < deadline,
            "helper {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forking_action_past_its_timeout_is_cleared_and_its_slot_goes_on() {
    let kiln = Kiln::start(&config()).await;
    let _worker = WorkerProc::start(&kiln.url, "", "forker", &["--concurrency=1"]);
    // Forks as fast as it can until killed: a kill must be repeated until
    // no process is left, not waited out once.
    let forker = run(
        &kiln,
        &Spec {
            argv: vec![
                "/bin/sh",
                "-c",
                "while :; do sleep 1000 & done",
                "forking-marker",
            ],
            timeout: Some(Duration::from_secs(1)),
            salt: "forker",
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code(&forker), Code::DeadlineExceeded as i32, "{forker:?}");
    wait_no_process("forking-marker", Duration::from_secs(10)).await;
    let after = run(
        &kiln,
        &Spec {
            argv: vec!["/bin/sh", "-c", "echo after"],
            salt: "after-forker",
            ..Default::default()
        },
    )
    .await;
    assert_eq!(code(&after), 0, "{after:?}");
    assert_eq!(stdout_of(&kiln, &after).await, "after\n");
}
