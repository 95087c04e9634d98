//! Authentication and authorization: an ACL matrix over roles and RPCs, bad
//! tokens, JWKS rotation, rate limits, and the shipped config/auth.yaml.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::kiln_v1::ListInvocationsRequest;
use kiln::proto::kiln_v1::build_event_query_client::BuildEventQueryClient;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest, UpdateActionResultRequest,
    batch_update_blobs_request,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::common::{Kiln, sha};

const SECRET: &str = "test-secret-of-reasonable-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(roles: &[&str], exp_offset: i64, aud: &str, secret: &str) -> String {
    let claims = serde_json::json!({
        "sub": "tester", "roles": roles, "aud": aud,
        "exp": (now() as i64 + exp_offset) as u64,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn config(dir: &std::path::Path, extra: &str) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!(
        "auth:\n  method: jwt\n  jwt:\n    secret_file: {}\n    audience: kiln\n{extra}instances:\n  - name: \"\"\n    cas: {{ memory: {{ max_size: 64MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n",
        secret.display()
    )
}

fn with_token<T>(mut req: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
        );
    }
    req
}

/// Calls one RPC as `token`; returns its status code.
async fn call(channel: &Channel, rpc: &str, token: Option<&str>) -> Code {
    let blob = Bytes::from_static(b"acl");
    let d = sha(&blob);
    let result = match rpc {
        "Capabilities" => CapabilitiesClient::new(channel.clone())
            .get_capabilities(with_token(
                tonic::Request::new(GetCapabilitiesRequest::default()),
                token,
            ))
            .await
            .map(|_| ()),
        "FindMissingBlobs" => ContentAddressableStorageClient::new(channel.clone())
            .find_missing_blobs(with_token(
                tonic::Request::new(FindMissingBlobsRequest {
                    blob_digests: vec![d.to_proto()],
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "BatchUpdateBlobs" => ContentAddressableStorageClient::new(channel.clone())
            .batch_update_blobs(with_token(
                tonic::Request::new(BatchUpdateBlobsRequest {
                    requests: vec![batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: blob.clone(),
                        compressor: 0,
                    }],
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "BatchReadBlobs" => ContentAddressableStorageClient::new(channel.clone())
            .batch_read_blobs(with_token(
                tonic::Request::new(BatchReadBlobsRequest {
                    digests: vec![d.to_proto()],
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "GetTree" => ContentAddressableStorageClient::new(channel.clone())
            .get_tree(with_token(
                tonic::Request::new(GetTreeRequest {
                    root_digest: Some(d.to_proto()),
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "Read" => ByteStreamClient::new(channel.clone())
            .read(with_token(
                tonic::Request::new(ReadRequest {
                    resource_name: format!("blobs/{d}"),
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "Write" => ByteStreamClient::new(channel.clone())
            .write(with_token(
                tonic::Request::new(tokio_stream::iter(vec![WriteRequest {
                    resource_name: format!("uploads/u/blobs/{d}"),
                    write_offset: 0,
                    finish_write: true,
                    data: blob.clone(),
                }])),
                token,
            ))
            .await
            .map(|_| ()),
        "GetActionResult" => ActionCacheClient::new(channel.clone())
            .get_action_result(with_token(
                tonic::Request::new(GetActionResultRequest {
                    action_digest: Some(d.to_proto()),
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "UpdateActionResult" => ActionCacheClient::new(channel.clone())
            .update_action_result(with_token(
                tonic::Request::new(UpdateActionResultRequest {
                    action_digest: Some(d.to_proto()),
                    action_result: Some(ActionResult::default()),
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "ListInvocations" => BuildEventQueryClient::new(channel.clone())
            .list_invocations(with_token(
                tonic::Request::new(ListInvocationsRequest::default()),
                token,
            ))
            .await
            .map(|_| ()),
        "PublishLifecycleEvent" => {
            kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient::new(
                channel.clone(),
            )
            .publish_lifecycle_event(with_token(
                tonic::Request::new(kiln::proto::bes_v1::PublishLifecycleEventRequest {
                    build_event: Some(kiln::proto::bes_v1::OrderedBuildEvent {
                        stream_id: Some(crate::common::bes::stream_id(
                            "acl",
                            &uuid::Uuid::new_v4().to_string(),
                        )),
                        sequence_number: 1,
                        event: Some(Default::default()),
                    }),
                    ..Default::default()
                }),
                token,
            ))
            .await
            .map(|_| ())
        }
        "QueryWriteStatus" => ByteStreamClient::new(channel.clone())
            .query_write_status(with_token(
                tonic::Request::new(kiln::proto::bytestream::QueryWriteStatusRequest {
                    resource_name: format!("uploads/q/blobs/{d}"),
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "QueryEvents" => BuildEventQueryClient::new(channel.clone())
            .query_events(with_token(
                tonic::Request::new(kiln::proto::kiln_v1::QueryEventsRequest::default()),
                token,
            ))
            .await
            .map(|_| ()),
        "ListStreams" => BuildEventQueryClient::new(channel.clone())
            .list_streams(with_token(
                tonic::Request::new(kiln::proto::kiln_v1::ListStreamsRequest {
                    stream_key_regex: ".*".into(),
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "GetInvocation" => BuildEventQueryClient::new(channel.clone())
            .get_invocation(with_token(
                tonic::Request::new(kiln::proto::kiln_v1::GetInvocationRequest {
                    invocation_id: "none".into(),
                }),
                token,
            ))
            .await
            .map(|_| ()),
        "PublishBuildToolEventStream" => {
            let sid = crate::common::bes::stream_id("acl", &uuid::Uuid::new_v4().to_string());
            let reqs = crate::common::bes::requests(
                &sid,
                &crate::common::bes::bazel_events(true)[..1],
                false,
            );
            let client =
                kiln::proto::bes_v1::publish_build_event_client::PublishBuildEventClient::new(
                    channel.clone(),
                );
            match client
                .clone()
                .publish_build_tool_event_stream(with_token(
                    tonic::Request::new(tokio_stream::iter(reqs)),
                    token,
                ))
                .await
            {
                Ok(r) => {
                    let mut acks = r.into_inner();
                    acks.message().await.map(|_| ())
                }
                Err(e) => Err(e),
            }
        }
        "Execute" => {
            use kiln::proto::reapi::execution_client::ExecutionClient;
            ExecutionClient::new(channel.clone())
                .execute(with_token(
                    tonic::Request::new(kiln::proto::reapi::ExecuteRequest {
                        action_digest: Some(d.to_proto()),
                        ..Default::default()
                    }),
                    token,
                ))
                .await
                .map(|_| ())
        }
        "WaitExecution" => {
            use kiln::proto::reapi::execution_client::ExecutionClient;
            ExecutionClient::new(channel.clone())
                .wait_execution(with_token(
                    tonic::Request::new(kiln::proto::reapi::WaitExecutionRequest {
                        name: "operations/no-such-job".into(),
                    }),
                    token,
                ))
                .await
                .map(|_| ())
        }
        "GetOperation" | "CancelOperation" | "WaitOperation" | "ListOperations" => {
            use kiln::proto::longrunning::operations_client::OperationsClient;
            use kiln::proto::longrunning::*;
            let mut ops = OperationsClient::new(channel.clone());
            let name = "operations/no-such-job".to_string();
            match rpc {
                "GetOperation" => ops
                    .get_operation(with_token(
                        tonic::Request::new(GetOperationRequest { name }),
                        token,
                    ))
                    .await
                    .map(|_| ()),
                "CancelOperation" => ops
                    .cancel_operation(with_token(
                        tonic::Request::new(CancelOperationRequest { name }),
                        token,
                    ))
                    .await
                    .map(|_| ()),
                "WaitOperation" => ops
                    .wait_operation(with_token(
                        tonic::Request::new(WaitOperationRequest {
                            name,
                            timeout: None,
                        }),
                        token,
                    ))
                    .await
                    .map(|_| ()),
                _ => ops
                    .list_operations(with_token(
                        tonic::Request::new(ListOperationsRequest::default()),
                        token,
                    ))
                    .await
                    .map(|_| ()),
            }
        }
        "CreateBotSession" | "UpdateBotSession" => {
            use kiln::proto::remoteworkers::bots_client::BotsClient;
            use kiln::proto::remoteworkers::*;
            let mut bots = BotsClient::new(channel.clone());
            let session = BotSession {
                bot_id: "acl-bot".into(),
                ..Default::default()
            };
            if rpc == "CreateBotSession" {
                bots.create_bot_session(with_token(
                    tonic::Request::new(CreateBotSessionRequest {
                        parent: String::new(),
                        bot_session: Some(session),
                    }),
                    token,
                ))
                .await
                .map(|_| ())
            } else {
                bots.update_bot_session(with_token(
                    tonic::Request::new(UpdateBotSessionRequest {
                        name: "botSessions/acl".into(),
                        bot_session: Some(session),
                        update_mask: None,
                    }),
                    token,
                ))
                .await
                .map(|_| ())
            }
        }
        // Requests without URIs: refused as INVALID_ARGUMENT once past
        // authorization (a read token may not cause a download either way).
        "FetchBlob" | "FetchDirectory" => {
            use kiln::proto::asset::fetch_client::FetchClient;
            let mut fetch = FetchClient::new(channel.clone());
            if rpc == "FetchBlob" {
                let req = kiln::proto::asset::FetchBlobRequest::default();
                fetch
                    .fetch_blob(with_token(tonic::Request::new(req), token))
                    .await
                    .map(|_| ())
            } else {
                let req = kiln::proto::asset::FetchDirectoryRequest::default();
                fetch
                    .fetch_directory(with_token(tonic::Request::new(req), token))
                    .await
                    .map(|_| ())
            }
        }
        "PushBlob" | "PushDirectory" => {
            use kiln::proto::asset::push_client::PushClient;
            let mut push = PushClient::new(channel.clone());
            if rpc == "PushBlob" {
                let req = kiln::proto::asset::PushBlobRequest::default();
                push.push_blob(with_token(tonic::Request::new(req), token))
                    .await
                    .map(|_| ())
            } else {
                let req = kiln::proto::asset::PushDirectoryRequest::default();
                push.push_directory(with_token(tonic::Request::new(req), token))
                    .await
                    .map(|_| ())
            }
        }
        other => panic!("unknown rpc {other}"),
    };
    match result {
        Ok(()) => Code::Ok,
        // NOT_FOUND etc. mean the call got past authorization.
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => s.code(),
        Err(_) => Code::Ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::start(&config(
        dir.path(),
        "execution: { database: memory, bot_wait: 100ms }\n",
    ))
    .await;
    let channel = kiln.channel().await;
    let needs: &[(&str, &str)] = &[
        ("Capabilities", "read"),
        ("FindMissingBlobs", "read"),
        ("BatchReadBlobs", "read"),
        ("GetTree", "read"),
        ("Read", "read"),
        ("GetActionResult", "read"),
        ("ListInvocations", "read"),
        ("BatchUpdateBlobs", "write"),
        ("Write", "write"),
        ("UpdateActionResult", "ac-write"),
        ("PublishLifecycleEvent", "bes"),
        ("PublishBuildToolEventStream", "bes"),
        ("QueryWriteStatus", "write"),
        ("QueryEvents", "read"),
        ("ListStreams", "read"),
        ("GetInvocation", "read"),
        ("Execute", "execute"),
        ("WaitExecution", "execute"),
        ("CancelOperation", "execute"),
        ("GetOperation", "read"),
        ("ListOperations", "read"),
        ("WaitOperation", "read"),
        ("CreateBotSession", "worker"),
        ("UpdateBotSession", "worker"),
        ("FetchBlob", "read"),
        ("FetchDirectory", "read"),
        ("PushBlob", "ac-write"),
        ("PushDirectory", "ac-write"),
    ];
    for role in [
        "read", "write", "ac-write", "bes", "execute", "worker", "admin",
    ] {
        let t = token(&[role], 600, "kiln", SECRET);
        for (rpc, needed) in needs {
            let expected = if role == *needed || role == "admin" {
                Code::Ok
            } else {
                Code::PermissionDenied
            };
            assert_eq!(
                call(&channel, rpc, Some(&t)).await,
                expected,
                "role {role} on {rpc}"
            );
        }
    }
    for (rpc, _) in needs {
        assert_eq!(
            call(&channel, rpc, None).await,
            Code::Unauthenticated,
            "no credentials on {rpc}"
        );
    }
    // Instance-scoped roles only count on their instance.
    let scoped = token(&["other:read"], 600, "kiln", SECRET);
    assert_eq!(
        call(&channel, "FindMissingBlobs", Some(&scoped)).await,
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn expired_wrong_audience_and_forged_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::start(&config(dir.path(), "")).await;
    let channel = kiln.channel().await;
    for (what, t) in [
        ("expired", token(&["admin"], -3600, "kiln", SECRET)),
        (
            "wrong audience",
            token(&["admin"], 600, "someone-else", SECRET),
        ),
        (
            "wrong signature",
            token(&["admin"], 600, "kiln", "another-secret-of-some-length"),
        ),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        assert_eq!(
            call(&channel, "Capabilities", Some(&t)).await,
            Code::Unauthenticated,
            "{what}"
        );
    }
    assert_eq!(
        call(
            &channel,
            "Capabilities",
            Some(&token(&["read"], 600, "kiln", SECRET))
        )
        .await,
        Code::Ok
    );
}

#[tokio::test]
async fn open_instances_and_static_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let hash = kiln::digest::DigestFunction::Sha256
        .digest_of(b"ci-token")
        .hash_hex();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{hash} read,write robot\n")).unwrap();
    let extra = format!(
        "  tokens_file: {}\n  open_instances: [\"public\"]\n",
        tokens.display()
    );
    let yaml = config(dir.path(), &extra).replace(
        "instances:\n",
        "instances:\n  - name: public\n    cas: { memory: { max_size: 8MiB } }\n    action_cache: { memory: { max_size: 8MiB } }\n",
    );
    let kiln = Kiln::start(&yaml).await;
    let channel = kiln.channel().await;
    assert_eq!(
        call(&channel, "BatchUpdateBlobs", Some("ci-token")).await,
        Code::Ok
    );
    assert_eq!(
        call(&channel, "UpdateActionResult", Some("ci-token")).await,
        Code::PermissionDenied
    );
    assert_eq!(
        call(&channel, "Capabilities", Some("wrong-token")).await,
        Code::Unauthenticated
    );
    let mut caps = CapabilitiesClient::new(channel.clone());
    caps.get_capabilities(GetCapabilitiesRequest {
        instance_name: "public".into(),
    })
    .await
    .expect("open instance, no credentials");
}

/// An ES256 key as (PEM private key, public JWK with `kid`).
fn es256_key(kid: &str) -> (String, serde_json::Value) {
    let key = rcgen::KeyPair::generate().unwrap();
    let raw = key.public_key_raw();
    assert_eq!(raw[0], 4, "uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    (key.serialize_pem(), jwk)
}

fn es256_token(pem: &str, kid: &str, roles: &[&str]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let claims = serde_json::json!({"sub": "rotated", "roles": roles, "exp": now() + 600});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_rotation_is_picked_up() {
    kiln::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (old_pem, old_jwk) = es256_key("old");
    let (new_pem, new_jwk) = es256_key("new");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [old_jwk]}).to_string()).unwrap();
    let yaml = format!(
        "auth:\n  method: jwt\n  jwt:\n    algorithms: [ES256]\n    jwks_file: {}\n    jwks_refresh: 200ms\ninstances:\n  - name: \"\"\n    cas: {{ memory: {{ max_size: 8MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n",
        jwks.display()
    );
    let kiln = Kiln::start(&yaml).await;
    let channel = kiln.channel().await;
    assert_eq!(
        call(
            &channel,
            "Capabilities",
            Some(&es256_token(&old_pem, "old", &["read"]))
        )
        .await,
        Code::Ok
    );
    let rotated = es256_token(&new_pem, "new", &["read"]);
    assert_eq!(
        call(&channel, "Capabilities", Some(&rotated)).await,
        Code::Unauthenticated,
        "unknown key"
    );
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [old_jwk, new_jwk]}).to_string(),
    )
    .unwrap();
    // Picked up at the next refresh: poll until it is, within a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while call(&channel, "Capabilities", Some(&rotated)).await != Code::Ok {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key is never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_is_resource_exhausted_then_recovers() {
    use tonic_types::StatusExt;
    let kiln = Kiln::start(&format!(
        "limits:\n  requests_per_second: 5\n{}",
        crate::common::MEMORY
    ))
    .await;
    let mut caps = CapabilitiesClient::new(kiln.channel().await);
    let mut refused = None;
    for _ in 0..20 {
        if let Err(s) = caps
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
        {
            refused = Some(s);
            break;
        }
    }
    let refused = refused.expect("a burst of 20 at 5/s is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo says when to retry");
    // It recovers: poll (no faster than the advice) until a call passes.
    let refused_at = std::time::Instant::now();
    let deadline = refused_at + retry + Duration::from_secs(20);
    while caps
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "never recovers");
        tokio::time::sleep(retry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_auth_config_runs_with_the_secret_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _url, channel) = crate::common::spawn_kiln_config(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/auth.yaml")),
        dir.path(),
        &[("KILN_JWT_SECRET", SECRET)],
    )
    .await;
    let claims = serde_json::json!({"sub": "ci", "roles": ["read", "write", "ac-write"], "exp": now() + 600});
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(call(&channel, "BatchUpdateBlobs", Some(&t)).await, Code::Ok);
    assert_eq!(
        call(&channel, "Capabilities", None).await,
        Code::Unauthenticated
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_held_to_the_bytes_per_second_budget() {
    let kiln = Kiln::start(&format!(
        "limits:\n  bytes_per_second: 1MiB\n{}",
        crate::common::MEMORY
    ))
    .await;
    let data = crate::common::blob(5, 3 << 20);
    let d = sha(&data);
    let msgs: Vec<WriteRequest> = (0..12)
        .map(|i| WriteRequest {
            resource_name: if i == 0 {
                format!("uploads/u/blobs/{d}")
            } else {
                String::new()
            },
            write_offset: (i as i64) << 18,
            finish_write: i == 11,
            data: data.slice(i << 18..(i + 1) << 18),
        })
        .collect();
    let started = std::time::Instant::now();
    let resp = ByteStreamClient::new(kiln.channel().await)
        .write(tokio_stream::iter(msgs))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().committed_size, 3 << 20);
    // A 1 MiB burst passes at once; the other 2 MiB wait for the budget.
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "3 MiB at 1 MiB/s took only {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_refused_before_its_nbf() {
    let dir = tempfile::tempdir().unwrap();
    let kiln = Kiln::start(&config(dir.path(), "")).await;
    let channel = kiln.channel().await;
    let with_nbf = |nbf: u64| {
        let claims = serde_json::json!({
            "sub": "early", "roles": ["read"], "aud": "kiln",
            "exp": now() + 3600, "nbf": nbf,
        });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    // An hour early (well past the 30 s leeway): not yet valid.
    let early = with_nbf(now() + 3600);
    assert_eq!(
        call(&channel, "FindMissingBlobs", Some(&early)).await,
        Code::Unauthenticated
    );
    let valid = with_nbf(now() - 60);
    assert_eq!(
        call(&channel, "FindMissingBlobs", Some(&valid)).await,
        Code::Ok
    );
}

/// A JWKS endpoint that accepts the connection and never answers does not
/// hang kiln: the fetch gives up after its timeout and start-up fails,
/// saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_endpoint_that_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    // Accept and hold connections, answering nothing.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "auth:\n  method: jwt\n  jwt:\n    algorithms: [ES256]\n    jwks_url: http://{addr}/jwks.json\ninstances:\n  - name: \"\"\n    cas: {{ memory: {{ max_size: 8MiB }} }}\n    action_cache: {{ memory: {{ max_size: 8MiB }} }}\n"
    );
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        Kiln::try_start_in(&yaml, dir.path()),
    )
    .await
    .expect("start-up gave up on the silent JWKS endpoint");
    let err = started.err().expect("no keys, no server");
    assert!(err.to_string().contains("JWKS"), "{err}");
    holder.abort();
}
