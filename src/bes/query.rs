//! kiln.v1.BuildEventQuery: the gRPC face of the same queries the HTTP API
//! serves.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::store::{EventFilter, EventStore, InvocationFilter, StreamKey};
use super::summary::Invocation;
use crate::error::Error;
use crate::proto::kiln_v1::build_event_query_server::BuildEventQuery;
use crate::proto::kiln_v1::{
    self as pb, GetInvocationRequest, InvocationSummary, ListInvocationsRequest,
    ListInvocationsResponse, ListStreamsRequest, ListStreamsResponse, QueryEventsRequest,
    QueryEventsResponse,
};

/// The query service.
#[derive(Debug, Clone)]
pub struct QueryService {
    store: Arc<dyn EventStore>,
    access: super::service::Access,
}

impl QueryService {
    /// Queries `store`.
    pub fn new(store: Arc<dyn EventStore>, access: super::service::Access) -> Self {
        QueryService { store, access }
    }
}

fn regex(pattern: &str, field: &str) -> Result<regex::Regex, Error> {
    regex::Regex::new(pattern).map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))
}

fn key(k: &StreamKey) -> pb::StreamKey {
    pb::StreamKey {
        build_id: k.build_id.clone(),
        invocation_id: k.invocation_id.clone(),
        component: k.component,
    }
}

fn summary(inv: &Invocation) -> Result<InvocationSummary, Error> {
    Ok(InvocationSummary {
        invocation_id: inv.invocation_id.clone(),
        status: inv.status.as_str().to_string(),
        json: serde_json::to_string(inv)
            .map_err(|e| Error::internal_from("encoding an invocation", e))?,
    })
}

#[tonic::async_trait]
impl BuildEventQuery for QueryService {
    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        self.access.check(&request, crate::auth::Role::Read)?;
        let pattern = regex(&request.get_ref().stream_key_regex, "stream_key_regex")?;
        let streams = self.store.streams(&pattern).await?;
        Ok(Response::new(ListStreamsResponse {
            streams: streams
                .iter()
                .map(|s| pb::StreamInfo {
                    key: Some(key(&s.key)),
                    last_sequence: s.last_sequence,
                    finished: s.finished,
                })
                .collect(),
        }))
    }

    async fn query_events(
        &self,
        request: Request<QueryEventsRequest>,
    ) -> Result<Response<QueryEventsResponse>, Status> {
        self.access.check(&request, crate::auth::Role::Read)?;
        let r = request.into_inner();
        let filter = EventFilter {
            kinds: r.kinds,
            after: r.after,
            from: r.from_sequence,
            to: r.to_sequence,
            label: if r.label_regex.is_empty() {
                None
            } else {
                Some(regex(&r.label_regex, "label_regex")?)
            },
            limit: r.limit,
            newest_first: false,
        };
        let events = self.store.events(&r.invocation_id, &filter).await?;
        Ok(Response::new(QueryEventsResponse {
            events: events
                .into_iter()
                .map(|e| pb::StoredEvent {
                    stream: Some(key(&e.stream)),
                    sequence: e.sequence,
                    kind: e.kind,
                    label: e.label,
                    event_time_ms: e.event_time_ms,
                    event: e.payload,
                })
                .collect(),
        }))
    }

    async fn get_invocation(
        &self,
        request: Request<GetInvocationRequest>,
    ) -> Result<Response<InvocationSummary>, Status> {
        self.access.check(&request, crate::auth::Role::Read)?;
        let id = &request.get_ref().invocation_id;
        let inv = self
            .store
            .invocation(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no invocation {id}")))?;
        Ok(Response::new(summary(&inv)?))
    }

    async fn list_invocations(
        &self,
        request: Request<ListInvocationsRequest>,
    ) -> Result<Response<ListInvocationsResponse>, Status> {
        self.access.check(&request, crate::auth::Role::Read)?;
        let r = request.into_inner();
        let filter = InvocationFilter {
            limit: r.limit,
            status: (!r.status.is_empty()).then_some(r.status),
            user: (!r.user.is_empty()).then_some(r.user),
            ..Default::default()
        };
        let list = self.store.invocations(&filter).await?;
        Ok(Response::new(ListInvocationsResponse {
            invocations: list.iter().map(summary).collect::<Result<_, _>>()?,
        }))
    }
}
