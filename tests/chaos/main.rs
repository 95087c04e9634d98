//! Pods that survive chaos: three `kiln serve` processes behind a real
//! HTTP/2 load balancer (Debian's haproxy), on one SeaweedFS and one
//! PostgreSQL, with two `kiln worker`s, while a real Bazel builds with
//! `--remote_executor`, `--remote_cache` and `--bes_backend` on the
//! balancer and a loop SIGKILLs a random pod and restarts it. Afterwards:
//! the build succeeded, every action ran to completion once (or more only
//! when its job was re-queued), the invocation's build events are stored
//! once each, in order, and every blob in the bucket is what its key says.

#[path = "../common/mod.rs"]
mod common;

mod balancer;
mod farm;
mod verify;
mod workspace;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::bazel::{Bazel, ShutdownOnDrop};
use common::exec::WorkerProc;
use common::s3::SeaweedFs;

/// Kills (and restarts) at most this many pods during the build, so
/// Bazel's own bounded retries of one BES stream are not exhausted by
/// chance; the build is long enough for all of them.
const MOST_KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_survives_pods_killed_under_it() {
    let pg = std::env::var("KILN_TEST_POSTGRES_URL").expect(
        "KILN_TEST_POSTGRES_URL is not set: README's test command starts a PostgreSQL for these tests",
    );
    let tmp = tempfile::tempdir().unwrap();
    let s3 = SeaweedFs::start().await;
    let instance = format!("chaos-{}", uuid::Uuid::new_v4());
    let mut farm = farm::Farm::start(tmp.path(), &s3, &pg, &instance, 3).await;
    let lb = balancer::Haproxy::start(tmp.path(), &farm.ports()).await;
    let url = format!("http://127.0.0.1:{}", lb.port);
    let marks = common::exec::action_writable_dir();
    let _w1 = WorkerProc::start(&url, &instance, "chaos-w1", &["--concurrency=2"]);
    let _w2 = WorkerProc::start(&url, &instance, "chaos-w2", &["--concurrency=2"]);

    let ws = workspace::write(&tmp.path().join("ws"), marks.path());
    let bazel = Bazel::at(ws.dir.clone(), tmp.path().join("bazel-root"));
    let _shutdown = ShutdownOnDrop(bazel.clone());
    let invocation = uuid::Uuid::new_v4().to_string();
    let events_file = tmp.path().join("events.json");

    // The chaos starts once the farm is busy with the build's actions.
    let building = Arc::new(AtomicBool::new(true));
    let kills = Arc::new(AtomicUsize::new(0));
    let db = sqlx::PgPool::connect(&pg).await.unwrap();
    let chaos = {
        let (building, kills, db, instance) = (
            building.clone(),
            kills.clone(),
            db.clone(),
            instance.clone(),
        );
        tokio::spawn(async move {
            verify::wait_for_jobs(&db, &instance).await;
            let mut turn = 0u64;
            while building.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) < MOST_KILLS {
                let victim = farm.pick(turn);
                farm.kill(victim);
                kills.fetch_add(1, Ordering::SeqCst);
                // Down for a moment, as a rescheduled pod would be.
                tokio::time::sleep(Duration::from_millis(500)).await;
                farm.restart(victim).await;
                tokio::time::sleep(Duration::from_millis(2000 + farm.jitter(1500))).await;
                turn += 1;
            }
            farm
        })
    };

    let lb_grpc = url.replace("http://", "grpc://");
    let (code, out) = {
        let bazel = bazel.clone();
        let invocation = invocation.clone();
        let instance = instance.clone();
        let events_file = events_file.clone();
        let run = tokio::task::spawn_blocking(move || {
            let flags = [
                format!("--remote_executor={lb_grpc}"),
                format!("--remote_cache={lb_grpc}"),
                format!("--bes_backend={lb_grpc}"),
                format!("--remote_instance_name={instance}"),
                format!("--invocation_id={invocation}"),
                format!("--build_event_json_file={}", events_file.display()),
                "--bes_timeout=120s".into(),
                "--remote_timeout=60".into(),
                "--remote_retries=20".into(),
                "--spawn_strategy=remote".into(),
                "--genrule_strategy=remote".into(),
                "--jobs=8".into(),
            ];
            let mut args = vec!["build", "//..."];
            args.extend(flags.iter().map(String::as_str));
            bazel.run_code(&args)
        });
        // Bazel's own timeouts bound it; this bounds a hang of ours.
        match tokio::time::timeout(Duration::from_secs(600), run).await {
            Ok(done) => done.unwrap(),
            Err(_) => panic!("the build did not finish in 10 minutes"),
        }
    };
    building.store(false, Ordering::SeqCst);
    let farm = chaos.await.unwrap();
    let kills = kills.load(Ordering::SeqCst);
    assert_eq!(
        code,
        0,
        "the build fails under chaos ({kills} kills):\n{out}\n{}",
        farm.logs()
    );
    assert!(
        kills >= 3,
        "the build ended before the chaos got going ({kills} kills); make it longer:\n{out}"
    );
    eprintln!("chaos: {kills} pods killed and restarted during the build");
    let ch = verify::connect(&url).await;
    verify::actions_ran_once_or_were_requeued(&db, &ch, &instance, &ws, marks.path()).await;
    verify::events_stored_once(&db, &invocation, &events_file).await;
    verify::blobs_are_intact(&s3, workspace::OUTPUT_SIZE).await;
    drop(lb);
    drop(farm);
}
