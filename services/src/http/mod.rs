//! The REST API (axum): commands, queries over the read models, event reads, health, the
//! operators' routes (sagas, read models, dead letters) and the web console (`/ui`). With a read
//! token, the reads that show personal data need it (`auth`).
//!
//! Errors have one JSON shape, `{"error": {"code": "...", "message": "..."}}`, with stable codes:
//! `bad_request` (400: malformed JSON, unknown fields, bad ids or numbers), `not_found` (404),
//! `unauthorized` (401: a read or admin route without its token), `forbidden` (403: the admin
//! routes are off), `conflict` (409: an idempotency key reused for another request, a busy stream,
//! a saga action its state does not allow, with the saga's `status` and `version`), `not_owner`
//! (409: another pod owns it),
//! `payload_too_large` (413), `unsupported_media_type` (415: not JSON), `rejected` (422: the
//! domain refused the command), `unmappable` (422: a `POST /api/saga/order` that cannot be placed
//! as an order), `overloaded` (429: the node is at a bound, of sagas in flight, of
//! pending appends, of requests or of live feeds), `not_ready` / `unavailable` (503), `timeout`
//! (504: the request took longer than the node allows; its outcome is unknown, and a retry with
//! the same Idempotency-Key tells it), `internal` (500, generic message; the cause goes to the
//! log). Every 429 and 503 carries `Retry-After`. A client mistake is never a 5xx; a refused
//! (429/503) command leaves no event behind.

use crate::app::commands::Answers;
use crate::app::consumer::Readiness;
use event_store::EventStore;
use event_store::Storage;
use projections::ReadModels;
use std::time::Duration;

mod admin;
mod auth;
mod commands;
mod compat;
mod error;
mod events;
mod health;
mod limits;
mod live;
mod queries;
mod router;
mod sagas;
pub mod trace_context;
mod ui;

pub use admin::{
    ActFn, AdminApi, ReadModelName, RedriveFn, Redriven, ReplayRequest, SagaActionRequest, SimulatorFn,
    MIN_ADMIN_TOKEN,
};
pub use commands::{
    idempotency_uuid, order_id_of_key, AddStockRequest, CancelledOrder, IdempotencyHeader, OrderLine,
    PlaceOrderRequest, PlacedOrder, StockAddedView,
};
pub use compat::{CompatDefaults, SagaOrderItem, SagaOrderRequest};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use events::{view, EventView, LogQuery, StreamQuery};
pub use health::{Health, Ready};
pub use limits::{BoundedListener, BoundedStream, HttpLimits, LiveFeeds, DEFAULT_MAX_LIVE_FEEDS};
pub use live::LiveQuery;
pub use queries::{CustomerOrdersPage, CustomerOrdersQuery, DeadLettersQuery};
pub use router::{app, ApiDoc};
pub use sagas::{Overview, SagaActionBody, SagaActionDone, SagasPage, SagasQuery, SimulatorGateway};

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
    pub admission: Option<crate::app::admission::Admission>,
    /// The live feeds served now, and their bound.
    pub feeds: LiveFeeds,
    /// The bounds on requests of the `/api` routes.
    pub limits: HttpLimits,
    /// The credential of reads that show personal data (the log, the live feed, orders, sagas,
    /// dead letters, the console): `None` leaves them open.
    pub read_token: Option<String>,
    /// What `POST /api/saga/order` fills in when a request leaves it out.
    pub compat: CompatDefaults,
}

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
            read_token: self.read_token.clone(),
            compat: self.compat.clone(),
        }
    }
}
