//! Authorization holes, closed: a worker of one instance forging another's
//! results, anonymous writes to a capped open instance, unauthenticated bot
//! events, the HTTP listener without a token, build-event streams and
//! lifecycle events outside their rules, and error messages that list
//! instances.

use std::time::Duration;

use kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient;
use kiln::proto::bes_v1::{OrderedBuildEvent, PublishLifecycleEventRequest};
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::{
    ActionResult, GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
};
use kiln::proto::remoteworkers::bots_client::BotsClient;
use kiln::proto::remoteworkers::{
    BotSession, CreateBotSessionRequest, Lease, LeaseState, PostBotEventTempRequest,
    UpdateBotSessionRequest,
};
use prost::Message;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::common::exec::{Spec, WorkerProc, action_writable_dir, wait_for_file};
use crate::common::{Kiln, bes};

/// Static tokens (token, roles) → a tokens file line each.
fn tokens_file(dir: &std::path::Path, tokens: &[(&str, &str)]) -> std::path::PathBuf {
    let lines: String = tokens
        .iter()
        .map(|(token, roles)| {
            let hash = kiln::digest::DigestFunction::Sha256
                .digest_of(token.as_bytes())
                .hash_hex();
            format!("{hash} {roles} {token}\n")
        })
        .collect();
    let path = dir.join("tokens");
    std::fs::write(&path, lines).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn instance(name: &str) -> String {
    format!(
        "  - name: {name}\n    cas: {{ memory: {{ max_size: 32MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n"
    )
}

fn as_token<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
        );
    }
    req
}

const TOKENS: &[(&str, &str)] = &[
    (
        "prod-worker",
        "prod:worker,prod:read,prod:write,prod:execute",
    ),
    ("sandbox-worker", "sandbox:worker,sandbox:read,prod:read"),
    ("reader", "read"),
    ("other-reader", "sandbox:read"),
];

async fn start(dir: &std::path::Path) -> Kiln {
    let tokens = tokens_file(dir, TOKENS);
    let yaml = format!(
        "auth:\n  tokens_file: {}\n  open_instances: [public]\n  instance_roles: {{ public: [read] }}\n  build_events_instance: prod\nexecution: {{ database: memory, bot_wait: 1s }}\ninstances:\n{}{}{}",
        tokens.display(),
        instance("prod"),
        instance("sandbox"),
        instance("public"),
    );
    Kiln::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_one_instance_cannot_complete_another_instances_job() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = start(dir.path()).await;
    let token_path = dir.path().join("worker-token");
    std::fs::write(&token_path, "prod-worker").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_arg = format!("--token-file={}", token_path.display());
    let _worker = WorkerProc::start(&kiln.url, "prod", "prod-bot", &[&token_arg]);

    // A running prod job (it waits, so its lease is live when attacked).
    let ch = kiln.channel().await;
    let shared = action_writable_dir();
    let marker = shared.path().join("started");
    let script = format!("echo started > {}; sleep 5; echo real", marker.display());
    let spec = Spec {
        argv: vec!["/bin/sh", "-c", &script],
        ..Default::default()
    };
    let (digest, blobs) = crate::common::exec::build(&spec);
    let mut up = crate::common::upload_request(&blobs);
    up.instance_name = "prod".into();
    kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
        ch.clone(),
    )
    .batch_update_blobs(as_token(Some("prod-worker"), up))
    .await
    .unwrap();
    let mut exec = kiln::proto::reapi::execution_client::ExecutionClient::new(ch.clone());
    let mut ops = exec
        .execute(as_token(
            Some("prod-worker"),
            kiln::proto::reapi::ExecuteRequest {
                instance_name: "prod".into(),
                action_digest: Some(digest.to_proto()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = ops.message().await.unwrap().unwrap();
    let job_id = first.name.rsplit('/').next().unwrap().to_string();
    wait_for_file(&marker, Duration::from_secs(20)).await;

    // The sandbox worker reports that job finished, with a forged result,
    // through its own (sandbox) session.
    let mut bots = BotsClient::new(ch.clone());
    let session = bots
        .create_bot_session(as_token(
            Some("sandbox-worker"),
            CreateBotSessionRequest {
                parent: "sandbox".into(),
                bot_session: Some(BotSession {
                    bot_id: "evil".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let forged = ActionResult {
        exit_code: 0,
        stdout_raw: "forged".into(),
        ..Default::default()
    };
    let lease = Lease {
        id: job_id.clone(),
        state: LeaseState::Completed as i32,
        result: Some(prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
            value: forged.encode_to_vec(),
        }),
        ..Default::default()
    };
    let report = BotSession {
        leases: vec![lease.clone()],
        ..session.clone()
    };
    let _ = bots
        .update_bot_session(as_token(
            Some("sandbox-worker"),
            UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(report.clone()),
                ..Default::default()
            },
        ))
        .await;
    // Through a prod session name, the sandbox token is refused outright.
    let err = bots
        .update_bot_session(as_token(
            Some("sandbox-worker"),
            UpdateBotSessionRequest {
                name: format!("prod/botSessions/{job_id}"),
                bot_session: Some(report),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut ac = ActionCacheClient::new(ch.clone());
    let got = ac
        .get_action_result(as_token(
            Some("prod-worker"),
            GetActionResultRequest {
                instance_name: "prod".into(),
                action_digest: Some(digest.to_proto()),
                ..Default::default()
            },
        ))
        .await;
    // The real run is still going: nothing may be cached for it yet.
    let err = got.expect_err("the forged result was cached");
    assert_eq!(err.code(), Code::NotFound);
    // The real run finishes with the real result.
    let mut last = first;
    while let Some(op) = ops.message().await.unwrap() {
        last = op;
    }
    let done = crate::common::exec::response(&last);
    assert_eq!(done.result.unwrap().exit_code, 0);
}

#[tokio::test]
async fn open_instances_keep_their_caps_and_bots_need_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = start(dir.path()).await;
    let ch = kiln.channel().await;
    let digest = crate::common::sha(b"some action");
    let err = ActionCacheClient::new(ch.clone())
        .update_action_result(UpdateActionResultRequest {
            instance_name: "public".into(),
            action_digest: Some(digest.to_proto()),
            action_result: Some(ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = ActionCacheClient::new(ch.clone())
        .get_action_result(GetActionResultRequest {
            instance_name: "public".into(),
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "reads stay open");

    let err = BotsClient::new(ch.clone())
        .post_bot_event_temp(PostBotEventTempRequest {
            name: "prod/botSessions/x".into(),
            msg: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let err = CapabilitiesClient::new(ch.clone())
        .get_capabilities(GetCapabilitiesRequest {
            instance_name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("prod"), "{}", err.message());
    assert!(!err.message().contains("sandbox"), "{}", err.message());
}

#[tokio::test]
async fn the_http_listener_needs_a_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = start(dir.path()).await;
    let base = format!("http://{}", kiln.server.http_addr);
    let client = reqwest::Client::new();
    let cases: &[(&str, Option<&str>, u16)] = &[
        ("/api/v1/invocations", None, 401),
        ("/invocation/x", None, 401),
        ("/api/v1/invocations", Some("wrong"), 401),
        ("/api/v1/invocations", Some("other-reader"), 403),
        ("/api/v1/invocations", Some("reader"), 200),
        ("/healthz", None, 200),
        ("/metrics", None, 200),
    ];
    for (path, token, want) in cases {
        let mut req = client.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let got = req.send().await.unwrap().status().as_u16();
        assert_eq!(got, *want, "{path} with {token:?}");
    }
}

#[tokio::test]
async fn build_event_streams_keep_to_their_own_keys_and_limits() {
    let kiln = Kiln::start(crate::common::MEMORY).await;
    let events = bes::bazel_events(true);
    let (_, status) = bes::publish(
        &kiln,
        bes::requests(&bes::stream_id("build-a", "inv"), &events, true),
    )
    .await;
    assert!(status.is_none(), "{status:?}");
    // Another build naming the same invocation cannot rewrite it.
    let (acks, status) = bes::publish(
        &kiln,
        bes::requests(&bes::stream_id("build-b", "inv"), &events, true),
    )
    .await;
    assert!(acks.is_empty());
    assert_eq!(status.unwrap().code(), Code::PermissionDenied);

    let mut client = PublishBuildEventClient::new(kiln.channel().await);
    let lifecycle = |seq: i64, size: usize| {
        let mut sid = bes::stream_id("build-a", "inv");
        sid.component = kiln::proto::bes_v1::stream_id::BuildComponent::Controller as i32;
        PublishLifecycleEventRequest {
            build_event: Some(OrderedBuildEvent {
                stream_id: Some(sid),
                sequence_number: seq,
                event: Some(kiln::proto::bes_v1::BuildEvent {
                    event: Some(kiln::proto::bes_v1::build_event::Event::BazelEvent(
                        prost_types::Any {
                            type_url: "x".into(),
                            value: vec![0u8; size],
                        },
                    )),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    };
    let code =
        |r: Result<tonic::Response<()>, tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(1, 10)).await),
        Code::Ok
    );
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(1, 10)).await),
        Code::Ok,
        "a retry"
    );
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(5, 10)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(0, 10)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(2, 9 << 20)).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(client.publish_lifecycle_event(lifecycle(2, 10)).await),
        Code::Ok
    );
}
