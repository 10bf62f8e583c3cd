//! Liveness, readiness and Prometheus metrics (outside the bounds of `/api`, so probes answer under load).

use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::ApiState;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use event_store::Storage;
use serde::Serialize;

/// Counts requests and their latency by method and status.
pub(crate) async fn http_metrics(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("causeway_http_requests_total", "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("causeway_http_request_seconds", "method" => method)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
pub(crate) async fn prometheus<S: Storage>(State(st): State<ApiState<S>>) -> ApiResult<Response> {
    let Some(handle) = &st.metrics else {
        return Err(ApiError::not_found("metrics are not enabled on this node"));
    };
    metrics::gauge!("causeway_store_head_position").set(st.store.head() as f64);
    metrics::gauge!("causeway_store_pending_appends").set(st.store.pending_appends() as f64);
    metrics::gauge!("causeway_store_max_pending_appends").set(st.store.max_pending_appends() as f64);
    for name in projections::models::ReadModel::ALL.map(|m| m.name()) {
        let lag = st.models.lag(name)?;
        metrics::gauge!("causeway_projection_lag_events", "projection" => name).set(lag as f64);
    }
    metrics::gauge!("causeway_ready").set(if st.ready.is_ready() { 1.0 } else { 0.0 });
    // Disk figures list files and ask the file system: off the async workers, since a slow disk
    // is when they matter. A figure that cannot be read is NaN (no stale value).
    let store = st.store.clone();
    let disk = tokio::task::spawn_blocking(move || {
        let storage = store.storage();
        (storage.size_on_disk(), storage.volume_space())
    })
    .await;
    let (size, space) = match disk {
        Ok((size, space)) => (size.map_err(|e| e.to_string()), space.map_err(|e| e.to_string())),
        Err(e) => (Err(e.to_string()), Err(e.to_string())),
    };
    match size {
        Ok(bytes) => metrics::gauge!("causeway_store_disk_bytes").set(bytes as f64),
        Err(e) => {
            tracing::debug!(error = %e, "the store's size on disk is unknown");
            metrics::gauge!("causeway_store_disk_bytes").set(f64::NAN);
        }
    }
    match space {
        Ok(Some(space)) => {
            metrics::gauge!("causeway_store_disk_available_bytes").set(space.available as f64);
            metrics::gauge!("causeway_store_disk_total_bytes").set(space.total as f64);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, "the store's volume space is unknown");
            metrics::gauge!("causeway_store_disk_available_bytes").set(f64::NAN);
        }
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response())
}

/// Liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Readiness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// The log's head position.
    pub head: u64,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The node serves: its consumers hold their inputs (Kafka partitions, or the local log) and
/// have read from them once.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz<S: Storage>(State(st): State<ApiState<S>>) -> ApiResult<Json<Ready>> {
    if st.ready.is_ready() {
        return Ok(Json(Ready { status: "ready".into(), head: st.store.head() }));
    }
    let waiting = st.ready.waiting();
    let message = if waiting.is_empty() {
        "the node is not serving (starting or stopping)".to_owned()
    } else {
        format!("waiting for the inputs of {}", waiting.join(", "))
    };
    Err(ApiError::unavailable("not_ready", message, 5))
}
