//! `GET /api/events/live`: Server-Sent Events from a position on, bounded per client and in number.

use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::events::view;
use super::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::extract::State;
use event_store::Storage;
use serde::Deserialize;

/// Query of `GET /api/events/live`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Start at this position (default: only new events).
    pub from_position: Option<u64>,
}

/// Server-Sent Events: every event from a position on, then live. Each event of the log is one
/// SSE event whose `id` is its position (a client resumes with `from_position` = last id + 1),
/// whose `event` is its event type (`OrderPlaced`, ...) and whose `data` is the event as JSON
/// (an `EventView`); an `error` event carries a read failure as text; comments keep the
/// connection alive. A node serves a bounded number of feeds; a client that stops reading is
/// disconnected once its bounded buffer has stayed full for the stall time, and resumes with
/// `from_position`.
#[utoipa::path(get, path = "/api/events/live", tag = "events", params(LiveQuery),
    responses((status = 200, description = "a text/event-stream of SSE events: id = position, event = event type, data = EventView (JSON)",
        content_type = "text/event-stream", body = String), (status = 400, body = ErrorBody),
        (status = 429, description = "the node serves as many live feeds as it allows (Retry-After)", body = ErrorBody)))]
pub(crate) async fn live_events<S: Storage>(
    State(st): State<ApiState<S>>,
    q: Result<Query<LiveQuery>, QueryRejection>,
) -> ApiResult<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, axum::Error>>>,
> {
    let Query(q) = q?;
    let Ok(place) = st.feeds.open.clone().try_acquire_owned() else {
        metrics::counter!("causeway_http_rejected_total", "reason" => "live_feeds").increment(1);
        return Err(ApiError::overloaded(
            format!("this node serves {} live feeds already, its bound; try again later", st.feeds.max),
            5,
        ));
    };
    let after = match q.from_position {
        Some(p) => p.saturating_sub(1),
        None => st.store.head(),
    };
    // A task reads the log into a bounded buffer; a client that leaves it full for `stall` is
    // dropped (its feed ends; it resumes with from_position), so a slow reader costs the node
    // `buffer` events, not the log.
    let (tx, rx) = tokio::sync::mpsc::channel(st.feeds.buffer.max(1));
    let (mut sub, stall, mut stopping) = (st.store.subscribe_all(after), st.feeds.stall, st.stopping.clone());
    tokio::spawn(async move {
        let _place = place;
        metrics::gauge!("causeway_live_feeds").increment(1.0);
        loop {
            let next = tokio::select! {
                _ = stopping.wait_for(|s| *s) => break,
                _ = tx.closed() => break,
                next = sub.next() => next,
            };
            let Some(item) = next else { break };
            let event = match item {
                Ok(e) => {
                    let (id, kind) = (e.position.to_string(), e.event_type.clone());
                    axum::response::sse::Event::default().id(id).event(kind).json_data(view(e))
                }
                Err(e) => Ok(axum::response::sse::Event::default().event("error").data(e.to_string())),
            };
            match tx.send_timeout(event, stall).await {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                    metrics::counter!("causeway_live_feeds_dropped_total").increment(1);
                    tracing::info!(
                        position = sub.position(),
                        "dropped a live feed whose client stopped reading"
                    );
                    break;
                }
                Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => break,
            }
        }
        metrics::gauge!("causeway_live_feeds").decrement(1.0);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()))
}
