//! The admin routes (bearer token): replay a read model, re-drive a dead letter.

use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::ApiState;
use crate::app::messages::ConsumerName;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use event_store::Storage;
use serde::Deserialize;
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

/// Re-drives a dead letter `(consumer, original event id)` on the running node.
pub type RedriveFn = Arc<
    dyn Fn(ConsumerName, Uuid) -> futures::future::BoxFuture<'static, Result<(), crate::app::ops::AdminError>>
        + Send
        + Sync,
>;

/// An operator's action on one saga, as the admin route received it.
#[derive(Debug, Clone)]
pub struct SagaActionRequest {
    /// The saga's order.
    pub order: aggregates::OrderId,
    /// The action.
    pub request: crate::app::saga::OperatorRequest,
}

/// Carries out an operator's action on a saga on the running node.
pub type ActFn = Arc<
    dyn Fn(
            SagaActionRequest,
        )
            -> futures::future::BoxFuture<'static, Result<crate::app::saga::Acted, crate::app::saga::ActError>>
        + Send
        + Sync,
>;

/// Reconfigures the node's simulated payment gateway (the simulator's knob, for drills and
/// tests; `None` when the node talks to another gateway).
pub type SimulatorFn = Arc<dyn Fn(crate::app::gateway::SimulatedGatewayConfig) + Send + Sync>;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminApi {
    /// The bearer token (from configuration).
    pub token: String,
    /// Re-drive through the node's own consumers.
    pub redrive: RedriveFn,
    /// Operators' actions on sagas, through the node's saga manager.
    pub act: ActFn,
    /// The simulated gateway's settings.
    pub simulator: Option<SimulatorFn>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").field("token", &"<redacted>").finish_non_exhaustive()
    }
}

/// The least length of an admin token.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Checks `Authorization: Bearer <token>` against the configured admin token.
pub(crate) fn authorize<S: Storage>(st: &ApiState<S>, headers: &HeaderMap) -> ApiResult<AdminApi> {
    let Some(admin) = &st.admin else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API is disabled on this node (start it with --admin-token or CAUSEWAY_ADMIN_TOKEN)",
        ));
    };
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need Authorization: Bearer <token>",
        )
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    if super::auth::same(given, &admin.token) {
        Ok(admin.clone())
    } else {
        Err(unauthorized())
    }
}

/// `POST /api/admin/projections/{name}/replay` body: none of the fields for a full rebuild.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Restore the state at this time (RFC 3339; from the newest backup before it when there is
    /// one) and apply everything after it. At most one of `from`, `as_of`, `backup`.
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// Build the state as of this time (RFC 3339) into a separate read model.
    #[schema(format = DateTime)]
    pub as_of: Option<String>,
    /// Back up the current model at its checkpoint.
    #[serde(default)]
    pub backup: bool,
}

pub(crate) fn rfc3339(s: &str) -> ApiResult<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not an RFC 3339 time")))
}

/// Rebuild, replay from a time, as-of or back up a read model (or `all`), on the running node.
#[utoipa::path(post, path = "/api/admin/projections/{name}/replay", tag = "admin",
    params(("name" = ReadModelName, Path, description = "a read model, or all")),
    request_body(content = ReplayRequest, description = "empty object: full rebuild"),
    security(("bearer" = [])),
    responses((status = 200, body = [crate::app::ops::ReplayOutcome]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn admin_replay<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<crate::app::ops::ReplayOutcome>>> {
    authorize(&st, &headers)?;
    let Path(name) = name?;
    let Json(req) = body?;
    use crate::app::ops::ReplayMode;
    let mode = match (req.from.as_deref(), req.as_of.as_deref(), req.backup) {
        (None, None, false) => ReplayMode::Rebuild,
        (Some(t), None, false) => ReplayMode::From(rfc3339(t)?),
        (None, Some(t), false) => ReplayMode::AsOf(rfc3339(t)?),
        (None, None, true) => ReplayMode::Backup,
        _ => return Err(ApiError::bad_request("give at most one of from, as_of, backup")),
    };
    crate::app::ops::read_models(&name)?;
    tracing::info!(read_model = %name, ?mode, "admin replay");
    Ok(Json(crate::app::ops::replay(&st.models, &name, mode).await?))
}

/// The outcome of a re-drive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redriven {
    /// The consumer.
    pub consumer: String,
    /// The original event, now handled.
    pub event_id: Uuid,
}

/// Hands a dead-lettered message to its consumer again; on success the letter is resolved.
#[utoipa::path(post, path = "/api/admin/dead-letters/{consumer}/{event_id}/redrive", tag = "admin",
    params(("consumer" = String, Path, description = "order-service, inventory-service, payment-service, shipping-service or saga-manager"),
        ("event_id" = Uuid, Path, description = "the original event's id")),
    security(("bearer" = [])),
    responses((status = 200, body = Redriven), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "this node does not run that consumer (the answer names where to re-drive)", body = ErrorBody),
        (status = 422, description = "it failed again; the letter stays open", body = ErrorBody)))]
pub(crate) async fn admin_redrive<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Redriven>> {
    let admin = authorize(&st, &headers)?;
    let Path((consumer, event_id)) = path?;
    let event_id: Uuid = event_id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{event_id:?} is not an event id (a UUID)")))?;
    let name = crate::app::ops::consumer_name(&consumer)?;
    tracing::info!(%consumer, %event_id, "admin re-drive");
    (admin.redrive)(name, event_id).await?;
    Ok(Json(Redriven { consumer, event_id }))
}

/// A read model's name in the admin routes: one of `projections::models::ReadModel`'s, or
/// `all` (the OpenAPI document lists them from that registry).
#[derive(Debug)]
pub struct ReadModelName;

impl utoipa::PartialSchema for ReadModelName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let names = projections::models::ReadModel::ALL.map(|m| m.name()).into_iter().chain(["all"]);
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A read model's name in the admin routes, or all."))
            .enum_values(Some(names))
            .into()
    }
}

impl utoipa::ToSchema for ReadModelName {}
