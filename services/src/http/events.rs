//! Reads of the log: a stream's events, the global log from a position or a time.

use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::queries::page_size;
use super::ApiState;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::Json;
use event_store::Direction;
use event_store::RecordedEvent;
use event_store::Storage;
use event_store::StreamId;
use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// An event as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub position: u64,
    pub stream_id: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    /// The event's metadata (its source node, trace context, ...).
    pub metadata: std::collections::BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// An event of the log as the API (and `causeway events --json`) shows it.
pub fn view(e: RecordedEvent) -> EventView {
    let recorded_at =
        e.recorded_at().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let payload = serde_json::from_slice(&e.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&e.payload).into_owned()));
    EventView {
        position: e.position,
        stream_id: e.stream_id,
        version: e.version,
        event_id: e.event_id,
        event_type: e.event_type,
        schema_version: e.schema_version,
        recorded_at,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        metadata: e.metadata,
        payload,
    }
}

/// Query of `GET /api/streams/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// From this version (default 1).
    pub from_version: Option<u64>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A stream's events, oldest first.
#[utoipa::path(get, path = "/api/streams/{id}/events", tag = "events",
    params(("id" = String, Path, description = "the stream id, like order-<uuid>"), StreamQuery),
    responses((status = 200, body = [EventView]), (status = 400, body = ErrorBody)))]
pub(crate) async fn stream_events<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<EventView>>> {
    let Path(id) = id?;
    let Query(q) = q?;
    let limit = page_size(q.limit)?;
    let stream = StreamId::new(id)?;
    let events = st
        .store
        .read_stream(&stream, q.from_version.unwrap_or(1).max(1), Direction::Forward)
        .take(limit)
        .map(|e| e.map(view))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(events))
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// From this position (default 1); not with `from_time`.
    pub from_position: Option<u64>,
    /// From this time (RFC 3339); not with `from_position`.
    #[param(format = DateTime)]
    pub from_time: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The global log from a position or from a time.
#[utoipa::path(get, path = "/api/events", tag = "events", params(LogQuery),
    responses((status = 200, body = [EventView]), (status = 400, body = ErrorBody)))]
pub(crate) async fn log_events<S: Storage>(
    State(st): State<ApiState<S>>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<EventView>>> {
    let Query(q) = q?;
    let limit = page_size(q.limit)?;
    let start = match (q.from_position, q.from_time) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give from_position or from_time, not both")),
        (_, Some(t)) => {
            let t = time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::bad_request(format!("{t:?} is not an RFC 3339 time")))?;
            st.store.seek_time(t)?
        }
        (p, None) => p.unwrap_or(1).max(1),
    };
    let events = st.store.read_all(start).take(limit).map(|e| e.map(view)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(events))
}

/// One event, by its id.
#[utoipa::path(get, path = "/api/events/by-id/{id}", tag = "events",
    params(("id" = Uuid, Path, description = "the event's id")),
    responses((status = 200, body = EventView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn event_by_id<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<EventView>> {
    let Path(id) = id?;
    let id: Uuid =
        id.parse().map_err(|_| ApiError::bad_request(format!("{id:?} is not an event id (a UUID)")))?;
    match st.store.find_event(id)? {
        Some(e) => Ok(Json(view(e))),
        None => Err(ApiError::not_found(format!("no event {id} in this node's log"))),
    }
}
