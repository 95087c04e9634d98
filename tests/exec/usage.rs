//! Resource accounting: `kiln worker` runs each command under kiln-measure
//! and reports what it cost as kiln.v1.ResourceUsage in the result's
//! auxiliary metadata; kiln turns that into metrics and sums it per
//! invocation (the invocation id of the Execute call's RequestMetadata).

use prost::Message;
use tonic::metadata::BinaryMetadataValue;

use crate::common::exec::{Spec, WorkerProc, executed, response, upload};
use crate::common::{Kiln, MEMORY};
use kiln::digest::Digest;
use kiln::proto::kiln_v1::ResourceUsage;
use kiln::proto::reapi::execution_client::ExecutionClient;
use kiln::proto::reapi::{ActionResult, ExecuteRequest, RequestMetadata};

const USAGE_URL: &str = "type.googleapis.com/kiln.v1.ResourceUsage";

/// Execute on behalf of Bazel invocation `invocation`; the final result.
async fn run(ch: &tonic::transport::Channel, digest: Digest, invocation: &str) -> ActionResult {
    let mut req = tonic::Request::new(ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        skip_cache_lookup: true,
        ..Default::default()
    });
    let meta = RequestMetadata {
        tool_invocation_id: invocation.into(),
        ..Default::default()
    };
    req.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        BinaryMetadataValue::from_bytes(&meta.encode_to_vec()),
    );
    executed(ch, req).await
}

fn usage(result: &ActionResult) -> Option<ResourceUsage> {
    let meta = result.execution_metadata.as_ref()?;
    let any = meta
        .auxiliary_metadata
        .iter()
        .find(|a| a.type_url == USAGE_URL)?;
    Some(ResourceUsage::decode(&any.value[..]).expect("a ResourceUsage"))
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.expect("the duration is set");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// The value of an unlabelled sample (`name value`) in a scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `/api/v1/invocations/{id}/usage`.
async fn usage_api(kiln: &Kiln, invocation: &str) -> serde_json::Value {
    let url = format!(
        "http://{}/api/v1/invocations/{invocation}/usage",
        kiln.server.http_addr
    );
    let response = reqwest::get(url).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_result_says_what_the_action_cost() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let _worker = WorkerProc::start(&kiln.url, "", "measured", &[]);
    let ch = kiln.channel().await;

    // 64 MiB read into one buffer (dd touches all of it), then a busy loop
    // of the shell itself, and an exit code of its own.
    let spec = Spec {
        argv: vec![
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; \
             i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exit 3",
        ],
        salt: "usage-heavy",
        ..Default::default()
    };
    let heavy = run(&ch, upload(&ch, "", &spec).await, "inv-usage").await;
    assert_eq!(
        heavy.exit_code, 3,
        "the command's own exit code comes through"
    );
    let u = usage(&heavy).expect("the worker reported usage");
    let cpu = secs(&u.user_cpu) + secs(&u.system_cpu);
    assert!(cpu >= 0.05, "a 200,000-step shell loop took {cpu} s of CPU");
    assert!(
        u.max_rss_bytes >= 64 << 20,
        "dd's 64 MiB buffer shows in max RSS: {}",
        u.max_rss_bytes
    );
    assert!(secs(&u.input_fetch) >= 0.0 && secs(&u.output_upload) > 0.0);

    // The command's standard input is /dev/null, not the helper's report
    // socket: what it writes there cannot stand in for the report.
    let spec = Spec {
        argv: vec![
            "/bin/sh",
            "-c",
            "echo 'ran 0 999000000 0 0 0 0' >&0; cat; exit 0",
        ],
        salt: "usage-forged",
        ..Default::default()
    };
    let forged = run(&ch, upload(&ch, "", &spec).await, "inv-usage").await;
    let f = usage(&forged).expect("usage of the second action");
    assert!(
        secs(&f.user_cpu) < 100.0,
        "the action forged its own report: {f:?}"
    );
    // A slot's helper measures each action alone: the first action's
    // 64 MiB peak is not the second's (the helper's own children's peak
    // never falls, so it is not what is reported).
    assert!(
        f.max_rss_bytes < 32 << 20,
        "the second action inherited the first's peak memory: {f:?}"
    );

    // Metrics: one CPU and memory sample per measured action.
    let text = crate::common::wait_metrics(&kiln, "two measured actions", |t| {
        sample(t, "kiln_exec_action_cpu_seconds_count") == 2.0
    })
    .await;
    assert!(sample(&text, "kiln_exec_action_cpu_seconds_sum") >= cpu);
    assert_eq!(sample(&text, "kiln_exec_action_max_rss_bytes_count"), 2.0);
    assert!(text.contains("kiln_exec_action_io_bytes_total{direction=\"read\"}"));

    // The invocation's sums, over the JSON API.
    let totals = usage_api(&kiln, "inv-usage").await;
    assert_eq!(totals["actions"], 2, "{totals}");
    assert_eq!(totals["measured"], 2, "{totals}");
    let summed = totals["user_cpu_seconds"].as_f64().unwrap()
        + totals["system_cpu_seconds"].as_f64().unwrap();
    assert!(summed >= cpu, "{totals}");
    assert!(
        totals["peak_rss_bytes"].as_u64().unwrap() >= 64 << 20,
        "{totals}"
    );
    let other = usage_api(&kiln, "inv-other").await;
    assert_eq!(other["actions"], 0, "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_the_helper_cannot_start_is_a_failed_precondition() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let _worker = WorkerProc::start(&kiln.url, "", "measured-missing", &[]);
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/no/such/program"],
        salt: "usage-missing",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let ops = crate::common::exec::execute(&ch, "", digest, true, 0)
        .await
        .unwrap();
    let r = response(ops.last().unwrap());
    let status = r.status.unwrap();
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
    assert!(
        status.message.contains("/no/such/program"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usage_runs_commands_unmeasured() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 1s }}\n{MEMORY}"
    ))
    .await;
    let _worker = WorkerProc::start(&kiln.url, "", "unmeasured", &["--no-usage"]);
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", "exit 4"],
        salt: "usage-off",
        ..Default::default()
    };
    let result = run(&ch, upload(&ch, "", &spec).await, "inv-off").await;
    assert_eq!(result.exit_code, 4);
    assert_eq!(usage(&result), None);
}

/// The usage API sums only jobs of instances the caller may read: a token
/// that reads the build-events instance but not the one the actions ran on
/// sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_api_counts_only_instances_the_caller_may_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = crate::common::tokens_file(
        dir.path(),
        &[
            (
                "runner-token",
                "a:worker,a:read,a:write,a:execute",
                "runner",
            ),
            ("b-token", "b:read", "only-b"),
            ("both-token", "a:read,b:read", "both"),
        ],
    );
    let kiln = Kiln::start(&format!(
        "auth:\n  tokens_file: {}\n  build_events_instance: b\nexecution: {{ database: memory, bot_wait: 1s }}\ninstances:\n  - name: a\n    cas: {{ memory: {{ max_size: 64MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n  - name: b\n    cas: {{ memory: {{ max_size: 64MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n",
        tokens.display()
    ))
    .await;
    let token_file = dir.path().join("runner-token");
    std::fs::write(&token_file, "runner-token").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let arg = format!("--token-file={}", token_file.display());
    let _worker = WorkerProc::start(&kiln.url, "a", "instance-a", &[&arg]);

    // One action on instance a, on behalf of invocation inv-a.
    let interceptor = |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", "Bearer runner-token".parse().unwrap());
        Ok(r)
    };
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/bin/true"],
        salt: "usage-instance",
        ..Default::default()
    };
    let (digest, blobs) = crate::common::exec::build(&spec);
    let mut upload = crate::common::upload_request(&blobs);
    upload.instance_name = "a".into();
    kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::with_interceptor(ch.clone(), interceptor)
        .batch_update_blobs(upload)
        .await
        .unwrap();
    let mut req = ExecuteRequest {
        instance_name: "a".into(),
        action_digest: Some(digest.to_proto()),
        skip_cache_lookup: true,
        ..Default::default()
    };
    req.instance_name = "a".into();
    let mut request = tonic::Request::new(req);
    let meta = RequestMetadata {
        tool_invocation_id: "inv-a".into(),
        ..Default::default()
    };
    request.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        BinaryMetadataValue::from_bytes(&meta.encode_to_vec()),
    );
    let mut stream = ExecutionClient::with_interceptor(ch.clone(), interceptor)
        .execute(request)
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}

    let url = format!(
        "http://{}/api/v1/invocations/inv-a/usage",
        kiln.server.http_addr
    );
    let as_token = |token: &'static str| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap()
        }
    };
    assert_eq!(as_token("both-token").await["actions"], 1);
    assert_eq!(
        as_token("b-token").await["actions"],
        0,
        "a job of instance a is not summed for a caller who cannot read a"
    );
}
