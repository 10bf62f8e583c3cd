//! The commands: place and cancel an order, add stock; idempotency keys; forwarding to the owning role.

use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::trace_context::of_headers;
use super::ApiState;
use super::CommandRoute;
use crate::app::commands;
use crate::app::commands::CommandError;
use crate::app::messages::Answer;
use crate::app::messages::ApiCommand;
use crate::app::trace::TraceContext;
use aggregates::order::{LineItem, OrderCommand};
use aggregates::shipping::Address;
use aggregates::OrderId;
use aggregates::Sku;
use aggregates::{Currency, CustomerId, Money};
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
use uuid::Uuid;

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

pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<Uuid>> {
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

pub(crate) fn order_id(s: &str) -> ApiResult<OrderId> {
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
pub(crate) enum Forwarded {
    /// The owner carried it out (now, or before: the original outcome).
    Done(u64),
    /// No answer in time (or too many waiting): accepted, the outcome is not known yet.
    Accepted(u64),
}

/// Appends a command for the role that owns its streams (the relay carries it there), then
/// waits for the owner's answer addressed to this node.
pub(crate) async fn forward<S: Storage>(
    st: &ApiState<S>,
    command: ApiCommand,
    trace: &TraceContext,
) -> ApiResult<Forwarded> {
    let CommandRoute::Forward { answers, source, wait } = &st.commands else {
        return Err(ApiError::internal("forward called on a node that does not forward"));
    };
    commands::precheck(&command)?;
    let stream = command.stream().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event = command.to_event(source, Some(trace));
    let event_id = event.event_id;
    // A retry of a request this node forwarded: the same event, with its first trace.
    let appended = crate::app::trace::append_adopting(
        &st.store,
        &stream,
        event_store::ExpectedVersion::Any,
        vec![event],
    )
    .await;
    let position = match appended {
        Ok(r) => r.last_position,
        // This node forwarded this key before with another body.
        Err(event_store::Error::EventIdReused { .. }) => return Err(CommandError::KeyReused.into()),
        Err(e) => return Err(e.into()),
    };
    let answer = answers.wait(&st.store, crate::app::messages::answer_id(event_id, source), *wait).await?;
    match answer {
        None => Ok(Forwarded::Accepted(position)),
        Some(Answer::Done {}) => Ok(Forwarded::Done(position)),
        Some(Answer::KeyReused) => Err(CommandError::KeyReused.into()),
        Some(Answer::Rejected { reason }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", reason))
        }
        Some(Answer::NotFound { reason }) => Err(ApiError::not_found(reason)),
        Some(other @ (Answer::Acted { .. } | Answer::Conflict { .. } | Answer::Invalid { .. })) => {
            Err(ApiError::internal(format!("the owner answered {other:?} to a command")))
        }
    }
}

/// Refuses a command while the store's append queue is half full: the disk is the bottleneck, and
/// what is queued already will take a while (a command refused here leaves nothing behind).
pub(crate) fn writer_has_room<S: Storage>(st: &ApiState<S>) -> ApiResult<()> {
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
pub(crate) fn refuse_commands(role: &str) -> ApiError {
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
pub(crate) async fn place_order<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    body: Result<Json<PlaceOrderRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    let Json(req) = body?;
    place_request(&st, &headers, req).await
}

/// Places the order `req` asks for (`POST /api/orders`, and the compatibility route mapped onto
/// it): checks, admission, then [`place`].
pub(crate) async fn place_request<S: Storage>(
    st: &ApiState<S>,
    headers: &HeaderMap,
    req: PlaceOrderRequest,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    if req.customer_id.trim().is_empty() || req.customer_id.len() > 200 {
        return Err(ApiError::bad_request("customer_id must be 1 to 200 characters"));
    }
    let key = idempotency_key(headers)?.unwrap_or_else(Uuid::now_v7);
    let order_id = order_id_of_key(key);
    super::trace_context::record_order(order_id.0);
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
    let known = st.store.stream_version(&crate::app::messages::order_stream(order_id))? > 0;
    let mut ticket = None;
    if !known {
        writer_has_room(st)?;
        if let Some(a) = &st.admission {
            ticket =
                a.admit(order_id).map_err(|e| ApiError::overloaded(e.to_string(), e.retry_after_secs))?;
        }
    }
    // Given back when nothing was recorded; kept otherwise (also when this request is cancelled
    // or times out mid-way: the order may be recorded, and its saga's end frees the place).
    let trace = of_headers(headers);
    let command = ApiCommand::PlaceOrder {
        key,
        order_id,
        customer_id: req.customer_id,
        items,
        currency: req.currency,
        shipping_address: req.shipping_address,
    };
    let placed = place(st, command, &trace).await;
    if let (Err(_), Some(t)) = (&placed, ticket) {
        t.give_back();
    }
    placed
}

/// Carries out a place-order request (after admission): `command` is an
/// [`ApiCommand::PlaceOrder`].
pub(crate) async fn place<S: Storage>(
    st: &ApiState<S>,
    command: ApiCommand,
    trace: &TraceContext,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    let ApiCommand::PlaceOrder { key, order_id, customer_id, items, currency, shipping_address } = command
    else {
        return Err(ApiError::internal("place called with another command"));
    };
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            let command =
                ApiCommand::PlaceOrder { key, order_id, customer_id, items, currency, shipping_address };
            Ok(match forward(st, command, trace).await? {
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
            let (_, r) = commands::place_order(&st.store, key, cmd, Some(trace)).await?;
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
pub(crate) async fn cancel_order<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<CancelledOrder>)> {
    let Path(id) = id?;
    let id = order_id(&id)?;
    super::trace_context::record_order(id.0);
    let key = idempotency_key(&headers)?.unwrap_or_else(Uuid::now_v7);
    let trace = of_headers(&headers);
    let done =
        |status: StatusCode, s: &str| (status, Json(CancelledOrder { order_id: id, status: s.into() }));
    if !matches!(st.commands, CommandRoute::Refuse { .. }) {
        writer_has_room(&st)?;
    }
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            Ok(match forward(&st, ApiCommand::CancelOrder { key, order_id: id }, &trace).await? {
                Forwarded::Done(_) => done(StatusCode::OK, "cancelled"),
                Forwarded::Accepted(_) => done(StatusCode::ACCEPTED, "cancel_requested"),
            })
        }
        CommandRoute::Local => {
            commands::cancel_order(&st.store, key, id, Some(&trace)).await?;
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
pub(crate) async fn add_stock<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
    body: Result<Json<AddStockRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<StockAddedView>)> {
    let Path(sku) = sku?;
    let Json(req) = body?;
    let key = idempotency_key(&headers)?.unwrap_or_else(Uuid::now_v7);
    let trace = of_headers(&headers);
    let view = |position| Json(StockAddedView { sku: sku.clone(), added: req.quantity, position });
    if !matches!(st.commands, CommandRoute::Refuse { .. }) {
        writer_has_room(&st)?;
    }
    match &st.commands {
        CommandRoute::Refuse { role } => Err(refuse_commands(role)),
        CommandRoute::Forward { .. } => {
            let command = ApiCommand::AddStock { key, sku: Sku(sku.clone()), quantity: req.quantity };
            Ok(match forward(&st, command, &trace).await? {
                Forwarded::Done(position) => (StatusCode::OK, view(position)),
                Forwarded::Accepted(position) => (StatusCode::ACCEPTED, view(position)),
            })
        }
        CommandRoute::Local => {
            let r = commands::add_stock(&st.store, key, Sku(sku.clone()), req.quantity, Some(&trace)).await?;
            Ok((StatusCode::OK, view(r.last_position)))
        }
    }
}
