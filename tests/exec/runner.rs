//! `kiln worker --runner PREFIX` runs every command through the prefix (how a
//! sandbox such as bwrap is put in front of actions).

use crate::common::exec::{Spec, WorkerProc, execute, response, upload};
use crate::common::{Kiln, MEMORY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_through_the_runner_prefix() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let _worker = WorkerProc::start(
        &kiln.url,
        "",
        "wrapped",
        &["--runner=/usr/bin/env KILN_WRAPPED=yes"],
    );
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "echo wrapped=$KILN_WRAPPED"],
        salt: "runner",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let ops = execute(&ch, "", digest, false, 0).await.unwrap();
    let result = response(ops.last().unwrap()).result.unwrap();
    assert_eq!(result.exit_code, 0);
    let stdout = result.stdout_digest.unwrap();
    let got = kiln
        .cas()
        .await
        .batch_read_blobs(kiln::proto::reapi::BatchReadBlobsRequest {
            digests: vec![stdout],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&got.responses[0].data[..], b"wrapped=yes\n");
}
