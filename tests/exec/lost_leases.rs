//! A lease whose response never reached the bot (the pod answering died,
//! or the connection broke on the way) is not held for ever: the bot's
//! next update does not report it, so kiln re-queues the job at once
//! rather than renewing a lease nobody works on (found by the chaos test:
//! Bazel waited on such a job until its own timeout).

use prost::Message;

use crate::common::exec::{Spec, response, spawn_execute, upload};
use crate::common::{Kiln, MEMORY};
use kiln::proto::reapi::ActionResult;
use kiln::proto::remoteworkers::bots_client::BotsClient;
use kiln::proto::remoteworkers::{
    BotSession, BotStatus, CreateBotSessionRequest, Lease, LeaseState, UpdateBotSessionRequest,
};

fn pending(session: &BotSession) -> Option<String> {
    session
        .leases
        .iter()
        .find(|l| l.state == LeaseState::Pending as i32)
        .map(|l| l.id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_bot_never_received_is_handed_out_again() {
    let kiln = Kiln::start(&format!(
        "execution: {{ database: memory, bot_wait: 2s, lease_timeout: 10m }}\n{MEMORY}"
    ))
    .await;
    let ch = kiln.channel().await;
    let spec = Spec {
        argv: vec!["/bin/true"],
        salt: "lost-lease",
        ..Default::default()
    };
    let digest = upload(&ch, "", &spec).await;
    let call = spawn_execute(&ch, "", digest, 0);

    let mut bots = BotsClient::new(ch.clone());
    let session = bots
        .create_bot_session(CreateBotSessionRequest {
            parent: String::new(),
            bot_session: Some(BotSession {
                bot_id: "lossy".into(),
                status: BotStatus::Ok as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let update = |session: BotSession| UpdateBotSessionRequest {
        name: session.name.clone(),
        bot_session: Some(session),
        update_mask: None,
    };
    // Idle updates until the job is handed out.
    let mut got = session.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let lost = loop {
        got = bots
            .update_bot_session(update(BotSession {
                leases: vec![],
                ..got
            }))
            .await
            .unwrap()
            .into_inner();
        if let Some(id) = pending(&got) {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lease was handed out"
        );
    };

    // That answer is "lost": the bot's next update reports no lease. The
    // job must come straight back to it, not sit leased for 10 minutes.
    let again = bots
        .update_bot_session(update(BotSession {
            leases: vec![],
            ..got.clone()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pending(&again).as_deref(),
        Some(lost.as_str()),
        "the unreported lease was re-queued and handed out again: {again:?}"
    );

    // This time the bot runs it and reports the result.
    let result = ActionResult {
        exit_code: 0,
        ..Default::default()
    };
    bots.update_bot_session(update(BotSession {
        leases: vec![Lease {
            id: lost.clone(),
            state: LeaseState::Completed as i32,
            result: Some(prost_types::Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
                value: result.encode_to_vec(),
            }),
            ..Default::default()
        }],
        ..again
    }))
    .await
    .unwrap();
    let ops = call.await.unwrap().unwrap();
    let done = response(ops.last().unwrap());
    assert_eq!(done.status.map(|s| s.code).unwrap_or(0), 0);
    assert_eq!(done.result.unwrap().exit_code, 0);
}
