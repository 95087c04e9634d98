//! The worker's input-file cache keeps to `--cache-size`: least recently
//! used files are evicted, and actions still get every input.

use crate::common::exec::{Spec, WorkerProc, execute, response, upload};
use crate::common::{Kiln, MEMORY, blob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_cache_keeps_to_its_size() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let worker = WorkerProc::start(&kiln.url, "", "small-cache", &["--cache-size=1500"]);
    let ch = kiln.channel().await;
    for n in 0..4u64 {
        let input = blob(n, 1000);
        let salt = format!("cache-{n}");
        let spec = Spec {
            argv: vec!["/bin/sh", "-c", "wc -c < in.bin"],
            inputs: vec![("in.bin", &input)],
            salt: &salt,
            ..Default::default()
        };
        let digest = upload(&ch, "", &spec).await;
        let ops = execute(&ch, "", digest, false, 0).await.unwrap();
        let done = response(ops.last().unwrap());
        assert_eq!(done.status.unwrap().code, 0);
        assert_eq!(
            done.result.unwrap().exit_code,
            0,
            "action {n} saw its input"
        );
        let cached: u64 = std::fs::read_dir(worker.dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            cached <= 1500,
            "after action {n} the cache holds {cached} bytes"
        );
    }
}
