//! The `bes` workload: synthetic Bazel event streams published to the Build
//! Event Service, measuring events stored per second and the latency from
//! sending an event to its acknowledgement (which kiln sends only after the
//! event is committed).

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Ctx;
use super::runner::Stats;
use crate::error::{Error, Result};
use crate::proto::bep::{self, build_event::Payload, build_event_id::Id};
use crate::proto::bes_v1::publish_build_event_client::PublishBuildEventClient;
use crate::proto::bes_v1::{
    self as v1, OrderedBuildEvent, PublishBuildToolEventStreamRequest, StreamId, build_event::Event,
};

/// Bytes of console output per progress event: about what Bazel sends.
const PROGRESS_BYTES: usize = 200;
/// Events a stream may have unacknowledged: a client that streams as it
/// builds rather than dumping a backlog, so latency measures kiln, not a
/// queue in front of it.
const WINDOW: usize = 256;

pub(super) fn wrap(sid: &StreamId, seq: i64, event: Event) -> PublishBuildToolEventStreamRequest {
    PublishBuildToolEventStreamRequest {
        ordered_build_event: Some(OrderedBuildEvent {
            stream_id: Some(sid.clone()),
            sequence_number: seq,
            event: Some(v1::BuildEvent {
                event: Some(event),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

pub(super) fn bazel(ev: bep::BuildEvent) -> Event {
    Event::BazelEvent(prost_types::Any {
        type_url: crate::bes::summary::BAZEL_EVENT_TYPE.into(),
        value: ev.encode_to_vec(),
    })
}

/// The requests of one synthetic invocation of `n` events.
fn stream(invocation: &str, n: i64) -> Vec<PublishBuildToolEventStreamRequest> {
    let sid = StreamId {
        build_id: format!("bench-{invocation}"),
        invocation_id: invocation.into(),
        component: 3,
    };
    let id = |id: Id| Some(bep::BuildEventId { id: Some(id) });
    let mut out = vec![wrap(
        &sid,
        1,
        bazel(bep::BuildEvent {
            id: id(Id::Started(Default::default())),
            payload: Some(Payload::Started(bep::BuildStarted {
                command: "build".into(),
                ..Default::default()
            })),
            ..Default::default()
        }),
    )];
    for seq in 2..(n.max(3) - 1) {
        let progress = bep::BuildEvent {
            id: id(Id::Progress(bep::build_event_id::ProgressId {
                opaque_count: seq as i32,
            })),
            payload: Some(Payload::Progress(bep::Progress {
                stdout: "x".repeat(PROGRESS_BYTES),
                stderr: String::new(),
            })),
            ..Default::default()
        };
        out.push(wrap(&sid, seq, bazel(progress)));
    }
    let finished = bep::BuildEvent {
        id: id(Id::BuildFinished(Default::default())),
        payload: Some(Payload::Finished(bep::BuildFinished {
            exit_code: Some(bep::build_finished::ExitCode {
                name: "SUCCESS".into(),
                code: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let last = out.len() as i64 + 1;
    out.push(wrap(&sid, last, bazel(finished)));
    out.push(wrap(
        &sid,
        last + 1,
        Event::ComponentStreamFinished(v1::build_event::BuildComponentStreamFinished { r#type: 1 }),
    ));
    out
}

/// Publishes `total` events over `ctx.concurrency` streams.
pub(crate) async fn bes(ctx: &Ctx, total: u64) -> Result<Vec<Stats>> {
    let streams = ctx.concurrency.max(1);
    let per = (total / streams as u64).max(3) as i64;
    let started = Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|w| {
            let channel = ctx.channel(w);
            let requests = stream(&uuid::Uuid::new_v4().to_string(), per);
            tokio::spawn(async move { publish(channel, requests).await })
        })
        .collect();
    let mut stats = Stats::new("bes");
    for w in workers {
        match w.await.map_err(Error::from).and_then(|r| r) {
            Ok((latencies, bytes)) => {
                stats.ops += latencies.len() as u64;
                stats.items += latencies.len() as u64;
                stats.bytes += bytes;
                stats.latencies_us.extend(latencies);
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e.to_string());
            }
        }
    }
    stats.elapsed = started.elapsed();
    Ok(vec![stats])
}

/// One stream: sends everything as fast as flow control allows while reading
/// acknowledgements; returns each event's send-to-ack latency.
pub(super) async fn publish(
    channel: tonic::transport::Channel,
    requests: Vec<PublishBuildToolEventStreamRequest>,
) -> Result<(Vec<u64>, u64)> {
    let n = requests.len();
    let bytes: u64 = requests.iter().map(|r| r.encoded_len() as u64).sum();
    let sent = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; n + 1]));
    let (tx, rx) = mpsc::channel(WINDOW);
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let (s, w) = (sent.clone(), window.clone());
    let sender = tokio::spawn(async move {
        for r in requests {
            match w.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            let seq = r
                .ordered_build_event
                .as_ref()
                .map_or(0, |o| o.sequence_number) as usize;
            s.lock().expect("sent lock")[seq] = Some(Instant::now());
            if tx.send(r).await.is_err() {
                return;
            }
        }
    });
    let mut client = PublishBuildEventClient::new(channel);
    let mut acks = client
        .publish_build_tool_event_stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| Error::Unavailable(s.message().to_string()))?
        .into_inner();
    let mut latencies = Vec::with_capacity(n);
    while let Some(ack) = acks
        .message()
        .await
        .map_err(|s| Error::Unavailable(format!("{:?}: {}", s.code(), s.message())))?
    {
        let seq = ack.sequence_number as usize;
        if let Some(t) = sent.lock().expect("sent lock").get(seq).copied().flatten() {
            latencies.push(t.elapsed().as_micros() as u64);
            window.add_permits(1);
        }
        if latencies.len() == n {
            break;
        }
    }
    let _ = sender.await;
    if latencies.len() != n {
        return Err(Error::internal(format!(
            "{} of {n} events acknowledged",
            latencies.len()
        )));
    }
    Ok((latencies, bytes))
}
