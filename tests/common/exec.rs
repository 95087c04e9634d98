//! Remote execution helpers: `kiln worker` processes, actions uploaded to the
//! CAS, and Execute / WaitExecution calls collected into their operations.

use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kiln::digest::Digest;
use kiln::proto::longrunning::{Operation, operation};
use kiln::proto::reapi::execution_client::ExecutionClient;
use kiln::proto::reapi::{
    Action, Command, Directory, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse,
    ExecutionPolicy, FileNode, Platform, WaitExecutionRequest, command, platform,
};
use prost::Message;
use tonic::transport::Channel;

use super::{sha, upload_request};

/// A `kiln worker` process, killed when dropped.
pub struct WorkerProc {
    pub child: Child,
    pub bot_id: String,
    pub dir: tempfile::TempDir,
}

impl WorkerProc {
    /// Starts `kiln worker` against `url` for `instance`.
    pub fn start(url: &str, instance: &str, bot_id: &str, extra: &[&str]) -> WorkerProc {
        // A worker running as root runs actions as `nobody`, who must be
        // able to reach the work dir (0700 temp dirs are not traversable).
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        let child = Process::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("worker")
            .arg(format!("--server={}", url.replace("http://", "grpc://")))
            .arg(format!("--instance={instance}"))
            .arg(format!("--work-dir={}", dir.path().display()))
            .arg(format!("--bot-id={bot_id}"))
            .arg(format!("--sandbox-rw={}", marker_root().display()))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("kiln worker starts");
        WorkerProc {
            child,
            bot_id: bot_id.to_string(),
            dir,
        }
    }

    /// Starts `kiln worker` as the unprivileged `uid`/`gid` (so the test
    /// needs root), with a work dir that user owns.
    pub fn start_as(uid: u32, gid: u32, url: &str, bot_id: &str, extra: &[&str]) -> WorkerProc {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        set_mode(dir.path(), 0o755);
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let child = Process::new(env!("CARGO_BIN_EXE_kiln"))
            .uid(uid)
            .gid(gid)
            .arg("worker")
            .arg(format!("--server={}", url.replace("http://", "grpc://")))
            .arg(format!("--work-dir={}", dir.path().display()))
            .arg(format!("--bot-id={bot_id}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("kiln worker starts as another user");
        WorkerProc {
            child,
            bot_id: bot_id.to_string(),
            dir,
        }
    }

    /// SIGKILL: the worker vanishes without a word, as a crashed host would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What an action looks like.
#[derive(Default, Clone)]
pub struct Spec<'a> {
    pub argv: Vec<&'a str>,
    pub inputs: Vec<(&'a str, &'a [u8])>,
    pub outputs: Vec<&'a str>,
    pub platform: Vec<(&'a str, &'a str)>,
    pub timeout: Option<Duration>,
    pub do_not_cache: bool,
    /// Makes otherwise identical actions distinct.
    pub salt: &'a str,
    /// Symlinks in the input root, as (name, target).
    pub symlinks: Vec<(&'a str, &'a str)>,
    /// REAPI 2.1 output paths (beside `outputs`, the 2.0 output files).
    pub output_paths: Vec<&'a str>,
    /// The Command's working directory.
    pub working_directory: &'a str,
    /// REAPI 2.8's Command.output_directory_format (0: TREE_ONLY).
    pub output_directory_format: i32,
}

/// The blobs of an action: (action digest, every blob to upload).
pub fn build(spec: &Spec<'_>) -> (Digest, Vec<Bytes>) {
    let mut blobs = Vec::new();
    let mut root = Directory::default();
    let mut inputs = spec.inputs.clone();
    inputs.sort();
    for (name, data) in inputs {
        let data = Bytes::copy_from_slice(data);
        root.files.push(FileNode {
            name: name.to_string(),
            digest: Some(sha(&data).to_proto()),
            is_executable: false,
            node_properties: None,
        });
        blobs.push(data);
    }
    for (name, target) in &spec.symlinks {
        root.symlinks.push(kiln::proto::reapi::SymlinkNode {
            name: name.to_string(),
            target: target.to_string(),
            node_properties: None,
        });
    }
    let root = Bytes::from(root.encode_to_vec());
    let command = Command {
        arguments: spec.argv.iter().map(|s| s.to_string()).collect(),
        environment_variables: vec![command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_files: spec.outputs.iter().map(|s| s.to_string()).collect(),
        output_paths: spec.output_paths.iter().map(|s| s.to_string()).collect(),
        working_directory: spec.working_directory.to_string(),
        output_directory_format: spec.output_directory_format,
        ..Default::default()
    };
    let command = Bytes::from(command.encode_to_vec());
    let action = Action {
        command_digest: Some(sha(&command).to_proto()),
        input_root_digest: Some(sha(&root).to_proto()),
        timeout: spec
            .timeout
            .map(|t| prost_types::Duration::try_from(t).unwrap()),
        do_not_cache: spec.do_not_cache,
        salt: Bytes::copy_from_slice(spec.salt.as_bytes()),
        platform: (!spec.platform.is_empty()).then(|| Platform {
            properties: spec
                .platform
                .iter()
                .map(|(k, v)| platform::Property {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }),
    };
    let action = Bytes::from(action.encode_to_vec());
    let digest = sha(&action);
    blobs.extend([root, command, action]);
    (digest, blobs)
}

/// Uploads an action and everything it needs; returns its digest.
pub async fn upload(channel: &Channel, instance: &str, spec: &Spec<'_>) -> Digest {
    let (digest, blobs) = build(spec);
    let mut request = upload_request(&blobs);
    request.instance_name = instance.to_string();
    kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
        channel.clone(),
    )
    .batch_update_blobs(request)
    .await
    .unwrap();
    digest
}

/// The ExecuteOperationMetadata of an operation.
pub fn metadata(op: &Operation) -> ExecuteOperationMetadata {
    ExecuteOperationMetadata::decode(&op.metadata.as_ref().unwrap().value[..]).unwrap()
}

/// The ExecuteResponse of a finished operation.
pub fn response(op: &Operation) -> ExecuteResponse {
    assert!(op.done, "operation {} is not done", op.name);
    match &op.result {
        Some(operation::Result::Response(any)) => ExecuteResponse::decode(&any.value[..]).unwrap(),
        other => panic!("operation {} ended without a response: {other:?}", op.name),
    }
}

/// Execute, collecting every operation until the stream ends.
pub async fn execute(
    channel: &Channel,
    instance: &str,
    digest: Digest,
    skip_cache_lookup: bool,
    priority: i32,
) -> Result<Vec<Operation>, tonic::Status> {
    let stream = ExecutionClient::new(channel.clone())
        .execute(ExecuteRequest {
            instance_name: instance.to_string(),
            skip_cache_lookup,
            action_digest: Some(digest.to_proto()),
            execution_policy: Some(ExecutionPolicy { priority }),
            ..Default::default()
        })
        .await?
        .into_inner();
    collect(stream).await
}

/// Execute with `request` (as sent, metadata included) to its end: the
/// final result, which must be a success.
pub async fn executed(
    channel: &Channel,
    request: tonic::Request<ExecuteRequest>,
) -> kiln::proto::reapi::ActionResult {
    let stream = ExecutionClient::new(channel.clone())
        .execute(request)
        .await
        .unwrap()
        .into_inner();
    let ops = collect(stream).await.unwrap();
    let r = response(ops.last().expect("an operation"));
    assert_eq!(r.status.map(|s| s.code).unwrap_or(0), 0, "{:?}", r.message);
    r.result.expect("a result")
}

/// Execute in a task of its own (for calls that wait while the test acts).
pub fn spawn_execute(
    channel: &Channel,
    instance: &str,
    digest: Digest,
    priority: i32,
) -> tokio::task::JoinHandle<Result<Vec<Operation>, tonic::Status>> {
    let (channel, instance) = (channel.clone(), instance.to_string());
    tokio::spawn(async move { execute(&channel, &instance, digest, false, priority).await })
}

/// WaitExecution, collecting every operation until the stream ends.
pub async fn wait_execution(
    channel: &Channel,
    name: &str,
) -> Result<Vec<Operation>, tonic::Status> {
    let stream = ExecutionClient::new(channel.clone())
        .wait_execution(WaitExecutionRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    collect(stream).await
}

async fn collect(mut stream: tonic::Streaming<Operation>) -> Result<Vec<Operation>, tonic::Status> {
    let mut ops = Vec::new();
    while let Some(op) = stream.next().await {
        ops.push(op?);
    }
    Ok(ops)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Where test workers let actions write marker files: the one host path
/// their sandboxes share writable (`--sandbox-rw`).
pub fn marker_root() -> std::path::PathBuf {
    let root = std::env::temp_dir().join("kiln-test-markers");
    std::fs::create_dir_all(&root).unwrap();
    set_mode(&root, 0o1777);
    root
}

/// A temp dir that actions may write marker files into (as the worker's
/// action user, not the test's), visible inside their sandboxes.
pub fn action_writable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(marker_root()).unwrap();
    set_mode(dir.path(), 0o1777);
    dir
}

/// Waits until `path` exists and has content (an action's marker file).
pub async fn wait_for_file(path: &Path, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not appear within {within:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's state letter and parent pid, from /proc/PID/stat; None once
/// it is gone (the fields follow the command name's closing parenthesis).
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The host pids of running processes whose command line contains
/// `marker` (actions run in PID namespaces of their own, so a pid an action
/// reports about itself means nothing outside; a unique marker in an
/// argument finds it from the host).
pub fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let running = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z'));
        if running && String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// Waits until some process's command line contains `marker`.
pub async fn wait_for_process(marker: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while processes_with(marker).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no process with {marker:?} started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no process's command line contains `marker`; returns how
/// long that took.
pub async fn wait_no_process(marker: &str, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    while !processes_with(marker).is_empty() {
        assert!(
            started.elapsed() < within,
            "a process with {marker:?} still runs"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Uploads and executes `spec` on the default instance (no cache lookup);
/// the final ExecuteResponse.
pub async fn run_spec(
    kiln: &super::Kiln,
    spec: &Spec<'_>,
) -> Result<ExecuteResponse, tonic::Status> {
    let ch = kiln.channel().await;
    let digest = upload(&ch, "", spec).await;
    let ops = execute(&ch, "", digest, true, 0).await?;
    Ok(response(ops.last().unwrap()))
}

/// What a finished action printed on stdout.
pub async fn stdout_of(kiln: &super::Kiln, done: &ExecuteResponse) -> String {
    let digest = done
        .result
        .as_ref()
        .unwrap()
        .stdout_digest
        .as_ref()
        .unwrap();
    let digest =
        Digest::from_proto(kiln::digest::DigestFunction::Sha256, Some(digest), "stdout").unwrap();
    let r = super::read_one(&mut kiln.cas().await, &digest).await;
    String::from_utf8_lossy(&r.data).into_owned()
}
