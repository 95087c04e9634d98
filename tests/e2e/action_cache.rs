//! ActionCache: round trip, the completeness check, inlining, read-only.

use bytes::Bytes;
use kiln::proto::reapi::{
    ActionResult, BatchUpdateBlobsRequest, GetActionResultRequest, OutputFile,
    UpdateActionResultRequest, batch_update_blobs_request,
};
use tonic::Code;

use crate::common::{Kiln, MEMORY, sha};

async fn put_blob(kiln: &Kiln, data: &'static [u8]) -> kiln::digest::Digest {
    let d = sha(data);
    let resp = kiln
        .cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: Bytes::from_static(data),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.responses[0].status.as_ref().unwrap().code, 0);
    d
}

fn result_with(out: &kiln::digest::Digest, log: &kiln::digest::Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.o".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(log.to_proto()),
        exit_code: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn results_round_trip_with_inlining() {
    let kiln = Kiln::start(MEMORY).await;
    let out = put_blob(&kiln, b"object code").await;
    let log = put_blob(&kiln, b"compiler said hi").await;
    let action = sha(b"action 1");
    let mut ac = kiln.ac().await;
    let err = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let result = result_with(&out, &log);
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, result);

    let got = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            inline_output_files: vec!["out/a.o".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stdout_raw, "compiler said hi");
    assert_eq!(got.output_files[0].contents, "object code");
}

#[tokio::test]
async fn results_whose_blobs_are_gone_are_not_found() {
    let kiln = Kiln::start(MEMORY).await;
    let log = put_blob(&kiln, b"log").await;
    let never_uploaded = sha(b"never uploaded");
    let action = sha(b"action 2");
    let mut ac = kiln.ac().await;
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result_with(&never_uploaded, &log)),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "an incomplete result must look like a miss"
    );

    // With the check off, it is served.
    let kiln = Kiln::start(&MEMORY.replace(
        "action_cache: { memory: { max_size: 16MiB } }",
        "action_cache: { memory: { max_size: 16MiB } }\n    completeness_check: false",
    ))
    .await;
    let mut ac = kiln.ac().await;
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result_with(&never_uploaded, &log)),
        ..Default::default()
    })
    .await
    .unwrap();
    ac.get_action_result(GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn read_only_instances_refuse_every_write() {
    let yaml = r#"
stores:
  shared_cas: { memory: { max_size: 64MiB } }
  shared_ac: { memory: { max_size: 16MiB } }
instances:
  - name: rw
    cas: { ref: shared_cas }
    action_cache: { ref: shared_ac }
  - name: ro
    cas: { ref: shared_cas }
    action_cache: { ref: shared_ac }
    read_only: true
"#;
    let kiln = Kiln::start(yaml).await;
    let action = sha(b"action 3");
    let data = Bytes::from_static(b"payload");
    let d = sha(&data);
    let upd = |instance: &str| BatchUpdateBlobsRequest {
        instance_name: instance.into(),
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(d.to_proto()),
            data: data.clone(),
            compressor: 0,
        }],
        ..Default::default()
    };
    let mut cas = kiln.cas().await;
    assert_eq!(
        cas.batch_update_blobs(upd("ro")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    cas.batch_update_blobs(upd("rw")).await.unwrap();

    let mut ac = kiln.ac().await;
    let req = |instance: &str| UpdateActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.to_proto()),
        action_result: Some(ActionResult {
            exit_code: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        ac.update_action_result(req("ro")).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    ac.update_action_result(req("rw")).await.unwrap();
    // The read-only instance sees what the writable one stored.
    let got = ac
        .get_action_result(GetActionResultRequest {
            instance_name: "ro".into(),
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.exit_code, 1);

    let mut bs = kiln.bytestream().await;
    let msg = kiln::proto::bytestream::WriteRequest {
        resource_name: format!("ro/uploads/x/blobs/{d}"),
        write_offset: 0,
        finish_write: true,
        data: data.clone(),
    };
    let err = bs.write(tokio_stream::iter(vec![msg])).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
