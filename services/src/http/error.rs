//! The one JSON error shape and the mapping of every typed error to its status and stable code.

use super::MAX_BODY_BYTES;
use crate::app::commands::CommandError;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use serde_json::json;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for the `Retry-After` header (429 and 503 answers).
    retry_after: Option<u64>,
    /// Fields added beside `error` (a refused saga action's `status` and `version`).
    extra: Vec<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, extra: Vec::new() }
    }
    /// 429 `overloaded`: the node is at a bound; try again after `retry_after` seconds.
    pub(crate) fn overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
        }
    }
    /// 503 `unavailable`: the node cannot serve this now; try again after `retry_after` seconds.
    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
    /// Adds `name: value` beside `error` in the body.
    pub(crate) fn with(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.extra.push((name, value));
        self
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error serving a request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the node's log")
    }
}

/// The one error shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large,
    /// unsupported_media_type, rejected, overloaded, not_ready, unavailable, timeout, internal.
    pub code: String,
    /// For people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(map) = body.as_object_mut() {
            for (name, value) in self.extra {
                map.insert(name.to_owned(), value);
            }
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            ),
            JsonRejection::MissingJsonContentType(m) => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m.body_text())
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(r) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", r.to_string())
            }
            e @ CommandError::KeyReused => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            e @ CommandError::Contention(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            e @ CommandError::OrderNotFound(_) => ApiError::not_found(e.to_string()),
            CommandError::Store(e) if e.is_client_error() => ApiError::bad_request(e.to_string()),
            CommandError::Store(e @ event_store::Error::Overloaded { .. }) => {
                ApiError::overloaded(e.to_string(), 1)
            }
            CommandError::Store(e) => ApiError::internal(e),
            CommandError::Load(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::app::ops::AdminError> for ApiError {
    fn from(e: crate::app::ops::AdminError) -> Self {
        use crate::app::ops::AdminError as A;
        match e {
            A::UnknownProjection(_) | A::UnknownConsumer(_) | A::NoSuchLetter { .. } => {
                ApiError::not_found(e.to_string())
            }
            A::NotOwner { .. } => ApiError::new(StatusCode::CONFLICT, "not_owner", e.to_string()),
            A::StillFailing(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", e.to_string()),
            A::Projection(e) => e.into(),
            A::Store(e) => e.into(),
        }
    }
}

impl From<projections::ProjectionError> for ApiError {
    fn from(e: projections::ProjectionError) -> Self {
        ApiError::internal(e)
    }
}

impl From<event_store::Error> for ApiError {
    fn from(e: event_store::Error) -> Self {
        if let event_store::Error::Overloaded { .. } = e {
            return ApiError::overloaded(e.to_string(), 1);
        }
        if e.is_client_error() {
            ApiError::bad_request(e.to_string())
        } else {
            ApiError::internal(e)
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl From<crate::app::saga::ActError> for ApiError {
    fn from(e: crate::app::saga::ActError) -> Self {
        use crate::app::error::{HandlerError, Poison};
        use crate::app::saga::ActError as A;
        match &e {
            A::NotFound(_) => ApiError::not_found(e.to_string()),
            A::Refused { error: aggregates::saga::SagaError::ReasonRequired { .. }, .. } => {
                ApiError::bad_request(e.to_string())
            }
            A::Refused { state, version, .. } | A::Moved { state, version, .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
                    .with("status", serde_json::Value::String(state.name().to_owned()))
                    .with("version", serde_json::Value::from(*version))
            }
            A::NotOwner(_) => ApiError::new(StatusCode::CONFLICT, "not_owner", e.to_string()),
            A::KeyReused { .. } | A::NotCarried { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            // Refused on a state that changed under the request (decided again after a conflict).
            A::Handler(HandlerError::Poison(Poison::Refused(_))) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            A::Handler(HandlerError::Transient(_)) => {
                ApiError::unavailable("unavailable", format!("try again: {e}"), 1)
            }
            A::Handler(_) | A::Load(_) => ApiError::internal(e),
        }
    }
}
