//! BuildGrid's own client, `bgd execute command`, against kiln with a worker:
//! it uploads the input directory, executes, and downloads the outputs.

use crate::common::exec::WorkerProc;
use crate::common::{Kiln, MEMORY, bgd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgd_execute_command_runs_on_a_kiln_worker() {
    let bgd = bgd();
    let yaml = format!("execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}");
    let kiln = Kiln::start(&yaml).await;
    let _worker = WorkerProc::start(&kiln.url, "", "bgd-worker", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("name.txt"), "kiln").unwrap();
    let url = kiln.url.clone();
    let cwd = tmp.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bgd)
            .args([
                "execute",
                "--remote",
                &url,
                "command",
                "--output-file",
                "greeting.txt",
            ])
            .arg(&input)
            .args([
                "--",
                "/bin/sh",
                "-c",
                "echo \"hello $(cat name.txt)\" > greeting.txt",
            ])
            .current_dir(&cwd)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = crate::common::output_text(&out);
    assert!(out.status.success(), "bgd execute failed:\n{text}");
    // bgd writes outputs under --output-directory (default "testing").
    let greeting = std::fs::read_to_string(tmp.path().join("testing/greeting.txt"))
        .unwrap_or_else(|e| panic!("no output downloaded ({e}):\n{text}"));
    assert_eq!(greeting, "hello kiln\n");
}
