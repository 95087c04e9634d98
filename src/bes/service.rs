//! google.devtools.build.v1.PublishBuildEvent: where Bazel's `--bes_backend`
//! publishes. Each event is acknowledged in order, only after it is committed
//! to the database; a client that reconnects (to any pod) resends from its
//! first unacknowledged event, and what was already stored is acknowledged
//! again without being stored twice.
//!
//! Writes are batched: whatever events have already arrived are committed in
//! one transaction, then acknowledged together.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::BesLimits;
use super::store::{EventStore, NewEvent, StreamKey};
use super::summary::{Invocation, classify};
use super::webhook::Webhooks;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::proto::bes_v1::publish_build_event_server::PublishBuildEvent;
use crate::proto::bes_v1::{
    OrderedBuildEvent, PublishBuildToolEventStreamRequest, PublishBuildToolEventStreamResponse,
    PublishLifecycleEventRequest, StreamId, build_event::Event,
};
use prometheus_client::metrics::counter::Counter;

/// Events committed per transaction at most.
const MAX_BATCH: usize = 1000;

/// The Build Event Service.
#[derive(Debug, Clone)]
pub struct BuildEventService {
    store: Arc<dyn EventStore>,
    limits: BesLimits,
    webhooks: Webhooks,
    events: Counter,
    access: Access,
}

/// Who may publish and query build events: the policy of the instance named
/// by `auth.build_events_instance` (build events carry no instance name).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The policy.
    pub policy: Arc<crate::auth::Policy>,
    /// The instance whose rules apply.
    pub instance: String,
}

impl Access {
    /// Allows the caller of `request` to act as `role`, or refuses.
    pub fn check<T>(&self, request: &Request<T>, role: crate::auth::Role) -> Result<()> {
        let caller = crate::service::caller(request);
        caller.note_instance(&self.instance);
        self.policy
            .authorize(caller.identity.as_ref(), &self.instance, role)
    }
}

impl BuildEventService {
    /// Stores events in `store`, within `limits`, for callers `access`
    /// allows, and tells `webhooks` when an invocation ends.
    pub fn new(
        store: Arc<dyn EventStore>,
        limits: BesLimits,
        webhooks: Webhooks,
        registry: &Metrics,
        access: Access,
    ) -> Self {
        // The ingestion rate is this counter's rate().
        let events = Counter::default();
        registry.register("bes_events", "Build events stored", events.clone());
        BuildEventService {
            store,
            limits,
            webhooks,
            events,
            access,
        }
    }
}

fn key_of(id: Option<&StreamId>) -> Result<StreamKey> {
    let id = id.ok_or_else(|| Error::InvalidArgument("stream_id is missing".into()))?;
    Ok(StreamKey {
        build_id: id.build_id.clone(),
        invocation_id: id.invocation_id.clone(),
        component: id.component,
    })
}

fn event_time_ms(ordered: &OrderedBuildEvent) -> i64 {
    ordered
        .event
        .as_ref()
        .and_then(|e| e.event_time.as_ref())
        .map(|t| crate::time::saturating_ms(t.seconds, t.nanos))
        .unwrap_or(0)
}

/// One connected stream: what has been stored, and the summary being built.
struct Connected {
    key: StreamKey,
    last: i64,
    finished: bool,
    summary: Invocation,
}

impl BuildEventService {
    async fn connect(&self, key: StreamKey) -> Result<Connected> {
        let stream = self.store.stream(&key).await?;
        let mut summary = match self.store.invocation(&key.invocation_id).await? {
            // An invocation belongs to the build that started it: another
            // build's stream naming the same invocation id must not rewrite
            // its summary.
            Some(s) if s.build_id != key.build_id => {
                return Err(Error::PermissionDenied(format!(
                    "invocation {} belongs to another build than {}",
                    key.invocation_id, key.build_id
                )));
            }
            Some(s) => s,
            None => Invocation::new(&key.invocation_id, &key.build_id),
        };
        if summary.status == super::summary::Status::Disconnected {
            // The client came back: the invocation goes on.
            summary.status = super::summary::Status::InProgress;
        }
        Ok(Connected {
            key,
            last: stream.as_ref().map_or(0, |s| s.last_sequence),
            finished: stream.is_some_and(|s| s.finished),
            summary,
        })
    }

    /// Stores one batch; returns the sequence numbers to acknowledge, and an
    /// error to end the stream with after acknowledging them.
    async fn store_batch(
        &self,
        state: &mut Option<Connected>,
        batch: Vec<PublishBuildToolEventStreamRequest>,
    ) -> (Vec<i64>, Option<Error>) {
        let mut acks = Vec::new();
        let mut new = Vec::new();
        let mut failure = None;
        let was_finished = state.as_ref().is_some_and(|s| s.summary.is_finished());
        for req in batch {
            match self.accept(state, req, &mut acks, &mut new).await {
                Ok(()) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(st) = state.as_mut()
            && !new.is_empty()
        {
            if let Err(e) = self
                .store
                .commit(&st.key, &new, st.finished, Some(&st.summary))
                .await
            {
                // Only what was stored before this batch is acknowledged; the
                // client resends the rest.
                let stored: Vec<i64> = acks.iter().copied().filter(|s| *s <= st.last).collect();
                return (stored, Some(e));
            }
            st.last = new
                .iter()
                .map(|n| n.sequence)
                .max()
                .unwrap_or(st.last)
                .max(st.last);
            st.summary.metadata_changed = false;
            self.events.inc_by(new.len() as u64);
            if !was_finished && st.summary.is_finished() {
                self.webhooks.notify(&st.summary);
            }
        }
        (acks, failure)
    }

    async fn accept(
        &self,
        state: &mut Option<Connected>,
        req: PublishBuildToolEventStreamRequest,
        acks: &mut Vec<i64>,
        new: &mut Vec<NewEvent>,
    ) -> Result<()> {
        let ordered = req
            .ordered_build_event
            .ok_or_else(|| Error::InvalidArgument("ordered_build_event is missing".into()))?;
        let key = key_of(ordered.stream_id.as_ref())?;
        if state.is_none() {
            *state = Some(self.connect(key.clone()).await?);
        }
        let st = state.as_mut().expect("connected above");
        if st.key != key {
            return Err(Error::InvalidArgument(format!(
                "stream_id changed mid-stream from {} to {}",
                st.key.display(),
                key.display()
            )));
        }
        let seq = ordered.sequence_number;
        let pending_last = new.last().map_or(st.last, |n: &NewEvent| n.sequence);
        if seq <= pending_last {
            // Already stored (or in this batch): acknowledge again, store once.
            acks.push(seq);
            return Ok(());
        }
        if seq != pending_last + 1 {
            return Err(Error::FailedPrecondition(format!(
                "sequence gap in stream {}: expected {}, got {seq}",
                key.display(),
                pending_last + 1
            )));
        }
        let event = ordered.event.clone().unwrap_or_default();
        let payload = Bytes::from(event.encode_to_vec());
        if payload.len() as u64 > self.limits.max_event_size {
            return Err(Error::exhausted(format!(
                "event {seq} is {} bytes, above max_event_size {}",
                payload.len(),
                self.limits.max_event_size
            )));
        }
        if st.summary.event_count >= self.limits.max_events_per_invocation {
            return Err(Error::exhausted(format!(
                "invocation {} reached max_events_per_invocation {}",
                key.invocation_id, self.limits.max_events_per_invocation
            )));
        }
        let (kind, label, _) = classify(&event);
        if kind == "undecodable" {
            tracing::warn!(stream = %key.display(), seq, "undecodable build event stored raw");
        }
        st.summary.apply(&event);
        if matches!(event.event, Some(Event::ComponentStreamFinished(_))) {
            st.finished = true;
        }
        new.push(NewEvent {
            sequence: seq,
            kind,
            label,
            event_time_ms: event_time_ms(&ordered),
            payload,
        });
        acks.push(seq);
        Ok(())
    }

    /// Handles a whole bidirectional stream, sending acknowledgements to `tx`.
    async fn run(
        self,
        mut incoming: Streaming<PublishBuildToolEventStreamRequest>,
        tx: mpsc::Sender<Result<PublishBuildToolEventStreamResponse, Status>>,
    ) {
        let mut state: Option<Connected> = None;
        loop {
            let first = match incoming.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match incoming.message().now_or_never() {
                    Some(Ok(Some(m))) => batch.push(m),
                    _ => break,
                }
            }
            let (acks, failure) = self.store_batch(&mut state, batch).await;
            let stream_id = state.as_ref().map(|s| StreamId {
                build_id: s.key.build_id.clone(),
                invocation_id: s.key.invocation_id.clone(),
                component: s.key.component,
            });
            for seq in acks {
                let ack = PublishBuildToolEventStreamResponse {
                    stream_id: stream_id.clone(),
                    sequence_number: seq,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            if let Some(e) = failure {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        // The client went away: without component_stream_finished the
        // invocation is DISCONNECTED until it reconnects.
        if let Some(mut st) = state
            && !st.finished
        {
            st.summary.disconnect();
            if let Err(e) = self
                .store
                .commit(&st.key, &[], false, Some(&st.summary))
                .await
            {
                tracing::warn!(error = %e, "could not record a disconnected build event stream");
            }
        }
    }
}

impl BuildEventService {
    /// The limits a lifecycle event must keep, like any build-tool event.
    async fn check_lifecycle(&self, key: &StreamKey, seq: i64, size: usize) -> Result<()> {
        if seq < 1 {
            return Err(Error::InvalidArgument(format!(
                "lifecycle event sequence_number must be at least 1, got {seq}"
            )));
        }
        if size as u64 > self.limits.max_event_size {
            return Err(Error::exhausted(format!(
                "lifecycle event {seq} is {size} bytes, above max_event_size {}",
                self.limits.max_event_size
            )));
        }
        if seq as u64 > self.limits.max_events_per_invocation {
            return Err(Error::exhausted(format!(
                "lifecycle stream {} reached max_events_per_invocation {}",
                key.display(),
                self.limits.max_events_per_invocation
            )));
        }
        Ok(())
    }
}

type AckStream =
    Pin<Box<dyn Stream<Item = Result<PublishBuildToolEventStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PublishBuildEvent for BuildEventService {
    async fn publish_lifecycle_event(
        &self,
        request: Request<PublishLifecycleEventRequest>,
    ) -> Result<Response<()>, Status> {
        self.access.check(&request, crate::auth::Role::Bes)?;
        let ordered = request
            .into_inner()
            .build_event
            .ok_or_else(|| Error::InvalidArgument("build_event is missing".into()))?;
        let key = key_of(ordered.stream_id.as_ref())?;
        let event = ordered.event.clone().unwrap_or_default();
        let seq = ordered.sequence_number;
        let payload = Bytes::from(event.encode_to_vec());
        self.check_lifecycle(&key, seq, payload.len()).await?;
        let last = self
            .store
            .stream(&key)
            .await?
            .map_or(0, |s| s.last_sequence);
        if seq <= last {
            // A retry of an event already stored: acknowledged, stored once.
            return Ok(Response::new(()));
        }
        if seq != last + 1 {
            return Err(Error::FailedPrecondition(format!(
                "sequence gap in lifecycle stream {}: expected {}, got {seq}",
                key.display(),
                last + 1
            ))
            .into());
        }
        let (kind, label, _) = classify(&event);
        let new = NewEvent {
            sequence: ordered.sequence_number,
            kind,
            label,
            event_time_ms: event_time_ms(&ordered),
            payload,
        };
        // The summary belongs to the build tool's stream, which may be
        // committing at this moment: lifecycle events never write it.
        self.store.commit(&key, &[new], false, None).await?;
        Ok(Response::new(()))
    }

    type PublishBuildToolEventStreamStream = AckStream;

    async fn publish_build_tool_event_stream(
        &self,
        request: Request<Streaming<PublishBuildToolEventStreamRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        self.access.check(&request, crate::auth::Role::Bes)?;
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(self.clone().run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
