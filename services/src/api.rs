//! The REST API (axum): commands, queries over the read models, event reads, health.
//!
//! Errors have one JSON shape, `{"error": {"code": "...", "message": "..."}}`, with stable codes:
//! `bad_request` (400: malformed JSON, unknown fields, bad ids or numbers), `not_found` (404),
//! `conflict` (409: an idempotency key reused for another request, a busy stream),
//! `payload_too_large` (413), `unsupported_media_type` (415: not JSON), `rejected` (422: the
//! domain refused the command), `overloaded` (429: the node is at a bound, of sagas in flight, of
//! pending appends, of requests or of live feeds), `not_ready` / `unavailable` (503), `timeout`
//! (504: the request took longer than the node allows; its outcome is unknown, and a retry with
//! the same Idempotency-Key tells it), `internal` (500, generic message; the cause goes to the
//! log). Every 429 and 503 carries `Retry-After`. A client mistake is never a 5xx; a refused
//! (429/503) command leaves no event behind.

use std::sync::Arc;
use std::time::Duration;

use aggregates::order::{LineItem, OrderCommand};
use aggregates::shipping::Address;
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use event_store::{Direction, EventStore, RecordedEvent, Storage, StreamId};
use projections::models::{
    CustomerOrder, DeadLetterView, DeadLetters, OrderPayments, OrderSummaries, OrderSummary, PaymentLedger,
    SagaTimeline, SagaTimelines, StockLevel, StockLevels,
};
use projections::ReadModels;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::commands::{self, Answers, CommandError};
use crate::consumer::Readiness;
use crate::messages::{Answer, ApiCommand, ConsumerName};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest page.
pub const MAX_PAGE: usize = 1000;

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState<S: Storage> {
    /// The log.
    pub store: EventStore<S>,
    /// The read models.
    pub models: ReadModels<S>,
    /// Whether the node is ready to serve (its consumers hold their inputs and have read them).
    pub ready: Readiness,
    /// The Prometheus recorder's handle (`/metrics` answers 404 without one).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Turns true when the node stops: live feeds end so the server can shut down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The admin routes' token and hooks (`None`: the admin routes answer 403).
    pub admin: Option<AdminApi>,
    /// Where REST commands go.
    pub commands: CommandRoute,
    /// Admission control of new orders (`None`: unbounded, for tools and tests that want it).
    pub admission: Option<crate::admission::Admission>,
    /// The live feeds served now, and their bound.
    pub feeds: LiveFeeds,
    /// The bounds on requests of the `/api` routes.
    pub limits: HttpLimits,
}

/// Bounds on the requests of the `/api` routes (health and metrics stay outside them, so probes
/// answer under load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests served at once; past it a request is answered 429 `overloaded` at once.
    pub max_in_flight: usize,
    /// A request not answered in this time is answered 504 `timeout`: its outcome is unknown
    /// (a command may have been recorded; the same Idempotency-Key tells). A live feed's stream is
    /// not bounded by it, only its start.
    pub request_timeout: Duration,
}

/// A TCP listener that holds at most `max` connections open: past it, new connections wait in
/// the kernel's listen backlog until one closes (and `causeway_http_connections_waiting` says
/// so), instead of each taking memory and a task. A connection on which nothing is read or
/// written for `idle` is closed, so idle keep-alive or trickling clients cannot hold the places
/// (a live feed writes a keep-alive comment every 15 s).
#[derive(Debug)]
pub struct BoundedListener {
    inner: tokio::net::TcpListener,
    room: Arc<tokio::sync::Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    /// At most `max` connections of `inner` at once, each closed after `idle` without traffic.
    pub fn new(inner: tokio::net::TcpListener, max: usize, idle: Duration) -> Self {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self { inner, room: Arc::new(tokio::sync::Semaphore::new(max)), idle }
    }
}

/// A connection of a [`BoundedListener`]: its place is given back when it closes.
#[derive(Debug)]
pub struct BoundedStream {
    io: tokio::net::TcpStream,
    _place: tokio::sync::OwnedSemaphorePermit,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BoundedStream {
    /// Some traffic: the idle deadline moves.
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Nothing moved: has the connection been idle too long?
    fn idle_for_too_long(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        std::future::Future::poll(self.deadline.as_mut(), cx).is_ready()
    }

    fn poll_io<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match poll {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.idle_for_too_long(cx) => {
                metrics::counter!("causeway_http_idle_closed_total").increment(1);
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let place = match self.room.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::gauge!("causeway_http_connections_waiting").set(1.0);
                tracing::warn!("at the bound of open HTTP connections; new ones wait");
                let p = self.room.clone().acquire_owned().await;
                metrics::gauge!("causeway_http_connections_waiting").set(0.0);
                match p {
                    Ok(p) => p,
                    // The semaphore is never closed; wait forever rather than serve unbounded.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Small answers go out at once.
        let _ = io.set_nodelay(true);
        let deadline = Box::pin(tokio::time::sleep(self.idle));
        (BoundedStream { io, _place: place, idle: self.idle, deadline }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for BoundedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        self.poll_io(cx, poll)
    }
}

impl tokio::io::AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.poll_io(cx, poll)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.poll_io(cx, poll)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_in_flight: 1024, request_timeout: Duration::from_secs(30) }
    }
}

/// The bound on live feeds (`GET /api/events/live`): how many at once, how many events each may
/// have waiting for a slow client, and how long a client may leave its buffer full before it is
/// dropped.
#[derive(Debug, Clone)]
pub struct LiveFeeds {
    open: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Events waiting for one client at most.
    pub buffer: usize,
    /// A client that reads nothing while its buffer is full this long is disconnected.
    pub stall: Duration,
}

impl LiveFeeds {
    /// At most `max` feeds at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            open: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            buffer: 256,
            stall: Duration::from_secs(30),
        }
    }

    /// Feeds open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.open.available_permits())
    }
}

impl Default for LiveFeeds {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LIVE_FEEDS)
    }
}

/// The default bound on live feeds at once.
pub const DEFAULT_MAX_LIVE_FEEDS: usize = 64;

/// Where a node's REST commands go.
#[derive(Debug, Clone)]
pub enum CommandRoute {
    /// Decided and appended here (the embedded node).
    Local,
    /// Forwarded through Kafka to the roles that own their streams (the query role of a
    /// distributed deployment); the owner's answer is awaited up to `wait`, then the command is
    /// answered 202 Accepted.
    Forward {
        /// The answers reaching this node.
        answers: Answers,
        /// This node's CloudEvents source (the owners address their answers to it).
        source: String,
        /// How long to wait for an answer.
        wait: Duration,
    },
    /// Refused: this node owns one role's share of streams only (a role pod of a distributed
    /// deployment); commands go to a query node.
    Refuse {
        /// This node's role.
        role: &'static str,
    },
}

/// Re-drives a dead letter `(consumer, original event id)` on the running node.
pub type RedriveFn = Arc<
    dyn Fn(ConsumerName, Uuid) -> futures::future::BoxFuture<'static, Result<(), crate::admin::AdminError>>
        + Send
        + Sync,
>;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminApi {
    /// The bearer token (from configuration).
    pub token: String,
    /// Re-drive through the node's own consumers.
    pub redrive: RedriveFn,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").field("token", &"<redacted>").finish_non_exhaustive()
    }
}

/// The least length of an admin token.
pub const MIN_ADMIN_TOKEN: usize = 16;

impl<S: Storage> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            models: self.models.clone(),
            ready: self.ready.clone(),
            metrics: self.metrics.clone(),
            stopping: self.stopping.clone(),
            admin: self.admin.clone(),
            commands: self.commands.clone(),
            admission: self.admission.clone(),
            feeds: self.feeds.clone(),
            limits: self.limits,
        }
    }
}

/// The read models whose lag `/metrics` reports.
const READ_MODELS: [&str; 5] =
    [OrderSummaries::NAME, StockLevels::NAME, PaymentLedger::NAME, SagaTimelines::NAME, DeadLetters::NAME];

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for the `Retry-After` header (429 and 503 answers).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
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
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn internal(cause: impl std::fmt::Display) -> Self {
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
        let mut resp = (self.status, Json(json!({"error": {"code": self.code, "message": self.message}})))
            .into_response();
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

impl From<crate::admin::AdminError> for ApiError {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError as A;
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

type ApiResult<T> = Result<T, ApiError>;

/// The handler of one documented operation (`None`: the document names an operation this build
/// has no handler for, which the API tests catch).
fn handler<S: Storage>(method: &str, path: &str) -> Option<axum::routing::MethodRouter<ApiState<S>>> {
    Some(match (method, path) {
        ("get", "/healthz") => get(healthz),
        ("get", "/readyz") => get(readyz::<S>),
        ("get", "/metrics") => get(prometheus::<S>),
        ("get", "/api/openapi.json") => get(openapi),
        ("post", "/api/orders") => post(place_order::<S>),
        ("get", "/api/orders/{id}") => get(get_order::<S>),
        ("post", "/api/orders/{id}/cancel") => post(cancel_order::<S>),
        ("get", "/api/orders/{id}/payments") => get(get_payments::<S>),
        ("get", "/api/customers/{id}/orders") => get(customer_orders::<S>),
        ("post", "/api/products/{sku}/stock") => post(add_stock::<S>),
        ("get", "/api/products/{sku}/stock") => get(get_stock::<S>),
        ("get", "/api/sagas/{id}") => get(get_saga::<S>),
        ("get", "/api/dead-letters") => get(dead_letters::<S>),
        ("get", "/api/streams/{id}/events") => get(stream_events::<S>),
        ("get", "/api/events") => get(log_events::<S>),
        ("get", "/api/events/live") => get(live_events::<S>),
        ("post", "/api/admin/projections/{name}/replay") => post(admin_replay::<S>),
        ("post", "/api/admin/dead-letters/{consumer}/{event_id}/redrive") => post(admin_redrive::<S>),
        _ => return None,
    })
}

/// The router, built from the OpenAPI document: every operation the document lists is routed to
/// its handler, and nothing else is served (so no route can be served undocumented). Tests call
/// it directly (`tower::ServiceExt::oneshot`).
pub fn app<S: Storage>(state: ApiState<S>) -> Router {
    use utoipa::OpenApi;
    // The `/api` routes are bounded; health, readiness and metrics are not, so probes answer
    // while the node sheds load.
    let (mut api, mut probes) = (Router::new(), Router::new());
    for (path, item) in ApiDoc::openapi().paths.paths {
        let operations = [
            ("get", item.get.is_some()),
            ("post", item.post.is_some()),
            ("put", item.put.is_some()),
            ("delete", item.delete.is_some()),
            ("patch", item.patch.is_some()),
        ];
        let mut methods: Option<axum::routing::MethodRouter<ApiState<S>>> = None;
        for (method, _) in operations.iter().filter(|(_, present)| *present) {
            match handler::<S>(method, &path) {
                Some(h) => {
                    methods = Some(match methods {
                        None => h,
                        Some(m) => m.merge(h),
                    })
                }
                None => tracing::error!(%method, %path, "a documented operation has no handler"),
            }
        }
        if let Some(m) = methods {
            if path.starts_with("/api/") {
                api = api.route(&path, m);
            } else {
                probes = probes.route(&path, m);
            }
        }
    }
    let limits = state.limits;
    let bounded = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(shed))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ))
        .timeout(limits.request_timeout);
    probes
        .merge(api.layer(bounded))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(http_metrics))
        .with_state(state)
}

/// The answer of a request the bounds stopped: 429 when too many are in flight, 504 when it
/// took too long.
async fn shed(err: tower::BoxError) -> ApiError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("causeway_http_rejected_total", "reason" => "in_flight").increment(1);
        ApiError::overloaded("the node serves as many requests as it allows; try again later", 1)
    } else if err.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("causeway_http_rejected_total", "reason" => "timeout").increment(1);
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than the node allows; a command may or may not have been carried out: \
             send it again with the same Idempotency-Key to learn its outcome",
        )
    } else {
        ApiError::internal(err)
    }
}

/// Checks `Authorization: Bearer <token>` against the configured admin token.
fn authorize<S: Storage>(st: &ApiState<S>, headers: &HeaderMap) -> ApiResult<AdminApi> {
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
    // Compare in time independent of where the first difference is.
    let (a, b) = (given.as_bytes(), admin.token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
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

fn rfc3339(s: &str) -> ApiResult<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not an RFC 3339 time")))
}

/// Rebuild, replay from a time, as-of or back up a read model (or `all`), on the running node.
#[utoipa::path(post, path = "/api/admin/projections/{name}/replay", tag = "admin",
    params(("name" = ReadModelName, Path, description = "a read model, or all")),
    request_body(content = ReplayRequest, description = "empty object: full rebuild"),
    security(("bearer" = [])),
    responses((status = 200, body = [crate::admin::ReplayOutcome]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn admin_replay<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<crate::admin::ReplayOutcome>>> {
    authorize(&st, &headers)?;
    let Path(name) = name?;
    let Json(req) = body?;
    use crate::admin::ReplayMode;
    let mode = match (req.from.as_deref(), req.as_of.as_deref(), req.backup) {
        (None, None, false) => ReplayMode::Rebuild,
        (Some(t), None, false) => ReplayMode::From(rfc3339(t)?),
        (None, Some(t), false) => ReplayMode::AsOf(rfc3339(t)?),
        (None, None, true) => ReplayMode::Backup,
        _ => return Err(ApiError::bad_request("give at most one of from, as_of, backup")),
    };
    crate::admin::projection_names(&name)?;
    tracing::info!(read_model = %name, ?mode, "admin replay");
    Ok(Json(crate::admin::replay(&st.models, &name, mode).await?))
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
async fn admin_redrive<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Redriven>> {
    let admin = authorize(&st, &headers)?;
    let Path((consumer, event_id)) = path?;
    let event_id: Uuid = event_id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{event_id:?} is not an event id (a UUID)")))?;
    let name = crate::admin::consumer_name(&consumer)?;
    tracing::info!(%consumer, %event_id, "admin re-drive");
    (admin.redrive)(name, event_id).await?;
    Ok(Json(Redriven { consumer, event_id }))
}

/// Counts requests and their latency by method and status.
async fn http_metrics(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
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
async fn prometheus<S: Storage>(State(st): State<ApiState<S>>) -> ApiResult<Response> {
    let Some(handle) = &st.metrics else {
        return Err(ApiError::not_found("metrics are not enabled on this node"));
    };
    metrics::gauge!("causeway_store_head_position").set(st.store.head() as f64);
    metrics::gauge!("causeway_store_pending_appends").set(st.store.pending_appends() as f64);
    metrics::gauge!("causeway_store_max_pending_appends").set(st.store.max_pending_appends() as f64);
    for name in READ_MODELS {
        let lag = st.models.lag(name)?;
        metrics::gauge!("causeway_projection_lag_events", "projection" => name).set(lag as f64);
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response())
}

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
async fn live_events<S: Storage>(
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
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// The node serves: its consumers hold their inputs (Kafka partitions, or the local log) and
/// have read from them once.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
async fn readyz<S: Storage>(State(st): State<ApiState<S>>) -> ApiResult<Json<Ready>> {
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

/// The `Idempotency-Key` header of the commands.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// 1-200 characters of text; a retry with the same key and body has no second effect, the
    /// same key with another body is a 409 (on any node).
    #[serde(rename = "Idempotency-Key")]
    #[param(min_length = 1, max_length = 200)]
    pub key: Option<String>,
}

/// A read model's name in the admin routes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReadModelName {
    OrderSummaries,
    StockLevels,
    PaymentLedger,
    SagaTimelines,
    DeadLetters,
    All,
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<Uuid>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be text"))?;
            if s.is_empty() || s.len() > 200 {
                return Err(ApiError::bad_request("Idempotency-Key must be 1 to 200 characters"));
            }
            Ok(Some(idempotency_uuid(s)))
        }
    }
}

/// The UUID an `Idempotency-Key` header stands for: any text works, mapped deterministically.
pub fn idempotency_uuid(key: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("causeway:idempotency:{key}").as_bytes())
}

/// The id of the order that `POST /api/orders` with this idempotency key places, so a retried
/// request lands on the same order and a client knows the id before the answer.
pub fn order_id_of_key(key: Uuid) -> OrderId {
    OrderId(Uuid::new_v5(&key, b"order"))
}

fn order_id(s: &str) -> ApiResult<OrderId> {
    s.parse::<Uuid>()
        .map(OrderId)
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not an order id (a UUID)")))
}

/// `POST /api/orders` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// 1 to 200 characters, not all blank.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub customer_id: String,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLine>,
    /// An ISO 4217 code, like EUR.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub shipping_address: Option<Address>,
}

/// One line of [`PlaceOrderRequest`].
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// 1-64 of A-Z a-z 0-9 - _ .
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// At least 1.
    #[schema(minimum = 1)]
    pub quantity: u32,
    /// Price of one, in minor units (the order's total must fit in 64 bits).
    pub unit_price_minor: u64,
}

/// A placed order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlacedOrder {
    /// Its id (derived from the Idempotency-Key when one is given).
    pub order_id: OrderId,
    /// The log position of OrderPlaced on this node (of the forwarded command, on a query node).
    pub position: u64,
}

/// What became of a command forwarded to its owner.
enum Forwarded {
    /// The owner carried it out (now, or before: the original outcome).
    Done(u64),
    /// No answer in time (or too many waiting): accepted, the outcome is not known yet.
    Accepted(u64),
}

/// Appends a command for the role that owns its streams (the relay carries it there), then
/// waits for the owner's answer addressed to this node.
async fn forward<S: Storage>(st: &ApiState<S>, command: ApiCommand) -> ApiResult<Forwarded> {
    let CommandRoute::Forward { answers, source, wait } = &st.commands else {
        return Err(ApiError::internal("forward called on a node that does not forward"));
    };
    commands::precheck(&command)?;
    let stream = command.stream().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event = command.to_event(source);
    let event_id = event.event_id;
    let position = match st.store.append_to(&stream, event_store::ExpectedVersion::Any, vec![event]).await {
        Ok(r) => r.last_position,
        // This node forwarded this key before with another body.
        Err(event_store::Error::EventIdReused { .. }) => return Err(CommandError::KeyReused.into()),
        Err(e) => return Err(e.into()),
    };
    let answer = answers.wait(&st.store, crate::messages::answer_id(event_id, source), *wait).await?;
    match answer {
        None => Ok(Forwarded::Accepted(position)),
        Some(Answer::Done {}) => Ok(Forwarded::Done(position)),
        Some(Answer::KeyReused) => Err(CommandError::KeyReused.into()),
        Some(Answer::Rejected { reason }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", reason))
        }
        Some(Answer::NotFound { reason }) => Err(ApiError::not_found(reason)),
    }
}

/// Refuses a command while the store's append queue is half full: the disk is the bottleneck, and
/// what is queued already will take a while (a command refused here leaves nothing behind).
fn writer_has_room<S: Storage>(st: &ApiState<S>) -> ApiResult<()> {
    let (pending, max) = (st.store.pending_appends(), st.store.max_pending_appends());
    if pending * 2 >= max {
        metrics::counter!("causeway_http_rejected_total", "reason" => "appends").increment(1);
        return Err(ApiError::overloaded(
            format!("the node has {pending} appends waiting for its disk (bound {max}); try again later"),
            1,
        ));
    }
    Ok(())
}

/// The refusal of a command on a role pod.
fn refuse_commands(role: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_owner",
        format!(
            "this node runs the {role} role and owns only its share of that role's streams; send commands to a \
             query node, which forwards them to their owners"
        ),
    )
}

/// Places an order; its saga starts. With an `Idempotency-Key`, a retry returns the same order;
/// the same key with another body is a 409, on any node.
#[utoipa::path(post, path = "/api/orders", tag = "commands", request_body = PlaceOrderRequest,
    params(IdempotencyHeader),
    responses((status = 201, description = "placed (on a query node: the order role placed it)", body = PlacedOrder),
        (status = 202, description = "forwarded to the order role, which has not answered yet (query node)", body = PlacedOrder),
        (status = 400, body = ErrorBody),
        (status = 409, description = "the Idempotency-Key was used for another request, or this node takes no commands", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, description = "the node is at its limit of sagas in flight or of pending appends (Retry-After says when to retry; nothing was recorded)", body = ErrorBody),
        (status = 503, description = "the node cannot take requests now (Retry-After)", body = ErrorBody),
        (status = 504, description = "not answered in the node's request time: the outcome is unknown; send it again with the same Idempotency-Key", body = ErrorBody)))]
async fn place_order<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    body: Result<Json<PlaceOrderRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    let Json(req) = body?;
    if req.customer_id.trim().is_empty() || req.customer_id.len() > 200 {
        return Err(ApiError::bad_request("customer_id must be 1 to 200 characters"));
    }
    let key = idempotency_key(&headers)?.unwrap_or_else(Uuid::now_v7);
    let order_id = order_id_of_key(key);
    let items: Vec<LineItem> = req
        .items
        .into_iter()
        .map(|l| LineItem { sku: Sku(l.sku), quantity: l.quantity, unit_price: Money(l.unit_price_minor) })
        .collect();
    if let CommandRoute::Refuse { role } = &st.commands {
        return Err(refuse_commands(role));
    }
    // A saga starts for a new order: it needs a place under the node's limit, and room in the
    // store's queue. A retry of an order the log already holds starts nothing and takes neither.
    let known = st.store.stream_version(&crate::messages::order_stream(order_id))? > 0;
    let mut ticket = None;
    if !known {
        writer_has_room(&st)?;
        if let Some(a) = &st.admission {
            ticket =
                a.admit(order_id).map_err(|e| ApiError::overloaded(e.to_string(), e.retry_after_secs))?;
        }
    }
    // Given back when nothing was recorded; kept otherwise (also when this request is cancelled
    // or times out mid-way: the order may be recorded, and its saga's end frees the place).
    let placed = place(&st, key, order_id, req.customer_id, items, req.currency, req.shipping_address).await;
    if let (Err(_), Some(t)) = (&placed, ticket) {
        t.give_back();
    }
    placed
}

/// Carries out a place-order request (after admission).
async fn place<S: Storage>(
    st: &ApiState<S>,
    key: Uuid,
    order_id: OrderId,
    customer_id: String,
    items: Vec<LineItem>,
    currency: String,
    shipping_address: Option<Address>,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            let command =
                ApiCommand::PlaceOrder { key, order_id, customer_id, items, currency, shipping_address };
            Ok(match forward(st, command).await? {
                Forwarded::Done(position) => (StatusCode::CREATED, Json(PlacedOrder { order_id, position })),
                Forwarded::Accepted(position) => {
                    (StatusCode::ACCEPTED, Json(PlacedOrder { order_id, position }))
                }
            })
        }
        CommandRoute::Local => {
            let cmd = OrderCommand::Place {
                order_id,
                customer_id: CustomerId(customer_id),
                items,
                currency: Currency(currency),
                shipping_address,
            };
            let (_, r) = commands::place_order(&st.store, key, cmd).await?;
            Ok((StatusCode::CREATED, Json(PlacedOrder { order_id, position: r.last_position })))
        }
    }
}

/// A cancelled order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelledOrder {
    /// The order.
    pub order_id: OrderId,
    /// `cancelled`, or `cancel_requested` when forwarded and not answered yet.
    pub status: String,
}

/// Cancels an order (its saga compensates whatever was done).
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "commands",
    params(("id" = Uuid, Path, description = "the order id"),
        IdempotencyHeader),
    responses((status = 200, body = CancelledOrder),
        (status = 202, description = "forwarded to the order role, which has not answered yet", body = CancelledOrder),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, description = "the node is overloaded (Retry-After; nothing was recorded)", body = ErrorBody),
        (status = 503, description = "the node cannot take requests now (Retry-After)", body = ErrorBody),
        (status = 504, description = "not answered in the node's request time: the outcome is unknown; send it again with the same Idempotency-Key", body = ErrorBody)))]
async fn cancel_order<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<CancelledOrder>)> {
    let Path(id) = id?;
    let id = order_id(&id)?;
    let key = idempotency_key(&headers)?.unwrap_or_else(Uuid::now_v7);
    let done =
        |status: StatusCode, s: &str| (status, Json(CancelledOrder { order_id: id, status: s.into() }));
    if !matches!(st.commands, CommandRoute::Refuse { .. }) {
        writer_has_room(&st)?;
    }
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            Ok(match forward(&st, ApiCommand::CancelOrder { key, order_id: id }).await? {
                Forwarded::Done(_) => done(StatusCode::OK, "cancelled"),
                Forwarded::Accepted(_) => done(StatusCode::ACCEPTED, "cancel_requested"),
            })
        }
        CommandRoute::Local => {
            commands::cancel_order(&st.store, key, id).await?;
            Ok(done(StatusCode::OK, "cancelled"))
        }
    }
}

/// `POST /api/products/{sku}/stock` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStockRequest {
    /// Units to add (at least 1).
    #[schema(minimum = 1)]
    pub quantity: u64,
}

/// Stock added.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockAddedView {
    /// The SKU.
    pub sku: String,
    /// Units added.
    pub added: u64,
    /// The log position of StockAdded on this node (of the forwarded command, on a query node).
    pub position: u64,
}

/// Adds stock to a SKU (creating it).
#[utoipa::path(post, path = "/api/products/{sku}/stock", tag = "commands", request_body = AddStockRequest,
    params(("sku" = String, Path, description = "1-64 of A-Z a-z 0-9 - _ ."),
        IdempotencyHeader),
    responses((status = 200, body = StockAddedView),
        (status = 202, description = "forwarded to the inventory role, which has not answered yet", body = StockAddedView),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, description = "the node is overloaded (Retry-After; nothing was recorded)", body = ErrorBody),
        (status = 503, description = "the node cannot take requests now (Retry-After)", body = ErrorBody),
        (status = 504, description = "not answered in the node's request time: the outcome is unknown; send it again with the same Idempotency-Key", body = ErrorBody)))]
async fn add_stock<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
    body: Result<Json<AddStockRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<StockAddedView>)> {
    let Path(sku) = sku?;
    let Json(req) = body?;
    let key = idempotency_key(&headers)?.unwrap_or_else(Uuid::now_v7);
    let view = |position| Json(StockAddedView { sku: sku.clone(), added: req.quantity, position });
    if !matches!(st.commands, CommandRoute::Refuse { .. }) {
        writer_has_room(&st)?;
    }
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            let command = ApiCommand::AddStock { key, sku: Sku(sku.clone()), quantity: req.quantity };
            Ok(match forward(&st, command).await? {
                Forwarded::Done(position) => (StatusCode::OK, view(position)),
                Forwarded::Accepted(position) => (StatusCode::ACCEPTED, view(position)),
            })
        }
        CommandRoute::Local => {
            let r = commands::add_stock(&st.store, key, Sku(sku.clone()), req.quantity).await?;
            Ok((StatusCode::OK, view(r.last_position)))
        }
    }
}

fn document<S: Storage, T: serde::de::DeserializeOwned>(
    st: &ApiState<S>,
    model: &str,
    key: &str,
    missing: impl FnOnce() -> String,
) -> ApiResult<Json<T>> {
    st.models.get(model, key)?.map(Json).ok_or_else(|| ApiError::not_found(missing()))
}

#[utoipa::path(get, path = "/api/orders/{id}", tag = "queries",
    params(("id" = Uuid, Path, description = "the order id")),
    responses((status = 200, body = OrderSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_order<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<OrderSummary>> {
    let id = order_id(&id?.0)?;
    document(&st, OrderSummaries::NAME, &OrderSummaries::order_key(id), || format!("order {id} not found"))
}

#[utoipa::path(get, path = "/api/orders/{id}/payments", tag = "queries",
    params(("id" = Uuid, Path, description = "the order id")),
    responses((status = 200, body = OrderPayments), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_payments<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<OrderPayments>> {
    let id = order_id(&id?.0)?;
    document(&st, PaymentLedger::NAME, &PaymentLedger::order_key(id), || {
        format!("no payments for order {id}")
    })
}

#[utoipa::path(get, path = "/api/sagas/{id}", tag = "queries",
    params(("id" = Uuid, Path, description = "the order id (a saga per order)")),
    responses((status = 200, body = SagaTimeline), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_saga<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SagaTimeline>> {
    let id = order_id(&id?.0)?;
    document(&st, SagaTimelines::NAME, &SagaTimelines::key(id), || format!("no saga for order {id}"))
}

#[utoipa::path(get, path = "/api/products/{sku}/stock", tag = "queries",
    params(("sku" = String, Path, description = "the SKU")),
    responses((status = 200, body = StockLevel), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_stock<S: Storage>(
    State(st): State<ApiState<S>>,
    sku: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<StockLevel>> {
    let sku = sku?.0;
    document(&st, StockLevels::NAME, &StockLevels::key(&sku), || format!("no stock for SKU {sku}"))
}

/// Query of `GET /api/customers/{id}/orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerOrdersQuery {
    /// Only orders in this status (pending, confirmed, cancelled).
    pub status: Option<aggregates::order::OrderStatus>,
    /// The cursor from the previous page.
    pub after: Option<String>,
    /// Page size (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

fn page_size(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}, got {n}"))),
    }
}

/// A page of a customer's orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerOrdersPage {
    /// Oldest first.
    pub items: Vec<CustomerOrder>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// A customer's orders, optionally by status, with cursor pagination.
#[utoipa::path(get, path = "/api/customers/{id}/orders", tag = "queries",
    params(("id" = String, Path, description = "the customer id"), CustomerOrdersQuery),
    responses((status = 200, body = CustomerOrdersPage), (status = 400, body = ErrorBody)))]
async fn customer_orders<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<CustomerOrdersQuery>, QueryRejection>,
) -> ApiResult<Json<CustomerOrdersPage>> {
    let Path(customer) = id?;
    let Query(q) = q?;
    let limit = page_size(q.limit)?;
    let prefix = OrderSummaries::customer_prefix(&customer);
    let mut items = Vec::new();
    let mut cursor = q.after.map(|a| format!("{prefix}{a}"));
    let mut next = None;
    // Filtering by status may skip documents: keep reading pages until this one is full.
    loop {
        let batch: Vec<(String, CustomerOrder)> =
            st.models.scan(OrderSummaries::NAME, &prefix, cursor.as_deref(), limit)?;
        let exhausted = batch.len() < limit;
        for (key, order) in batch {
            cursor = Some(key.clone());
            if q.status.is_none_or(|s| s == order.status) {
                items.push(order);
                if items.len() == limit {
                    next = Some(key[prefix.len()..].to_owned());
                    break;
                }
            }
        }
        if items.len() == limit || exhausted {
            break;
        }
    }
    Ok(Json(CustomerOrdersPage { items, next }))
}

/// Query of `GET /api/dead-letters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersQuery {
    /// Only this consumer's.
    pub consumer: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// Messages a consumer could not process, with the reason and the original.
#[utoipa::path(get, path = "/api/dead-letters", tag = "queries", params(DeadLettersQuery),
    responses((status = 200, body = [DeadLetterView]), (status = 400, body = ErrorBody)))]
async fn dead_letters<S: Storage>(
    State(st): State<ApiState<S>>,
    q: Result<Query<DeadLettersQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let Query(q) = q?;
    let limit = page_size(q.limit)?;
    let rows = st.models.scan::<DeadLetterView>(
        DeadLetters::NAME,
        &DeadLetters::prefix(q.consumer.as_deref()),
        None,
        limit,
    )?;
    Ok(Json(rows.into_iter().map(|(_, v)| v).collect()))
}

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
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

fn view(e: RecordedEvent) -> EventView {
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
async fn stream_events<S: Storage>(
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
async fn log_events<S: Storage>(
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

/// Adds the admin routes' bearer scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3 document of every route above.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Causeway", description = "An event-sourced order platform: commands, queries over read models, the event log, and operations."),
    paths(healthz, readyz, prometheus, openapi, place_order, cancel_order, add_stock, get_order, get_payments,
        customer_orders, get_stock, get_saga, dead_letters, stream_events, log_events, live_events,
        admin_replay, admin_redrive),
    components(schemas(ReadModelName)),
    modifiers(&BearerAuth),
    tags((name = "commands"), (name = "queries"), (name = "events"), (name = "admin"), (name = "health"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi())
}
