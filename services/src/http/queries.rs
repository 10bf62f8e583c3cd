//! The queries over the read models: orders, payments, sagas, stock, a customer's orders, dead letters.

use super::commands::order_id;
use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::ApiState;
use super::MAX_PAGE;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::Json;
use event_store::Storage;
use projections::models::CustomerOrder;
use projections::models::DeadLetterView;
use projections::models::DeadLetters;
use projections::models::OrderPayments;
use projections::models::OrderSummaries;
use projections::models::OrderSummary;
use projections::models::PaymentLedger;
use projections::models::SagaTimeline;
use projections::models::SagaTimelines;
use projections::models::StockLevel;
use projections::models::StockLevels;
use serde::Deserialize;
use serde::Serialize;

pub(crate) fn document<S: Storage, T: serde::de::DeserializeOwned>(
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
pub(crate) async fn get_order<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<OrderSummary>> {
    let id = order_id(&id?.0)?;
    document(&st, OrderSummaries::NAME, &OrderSummaries::order_key(id), || format!("order {id} not found"))
}

#[utoipa::path(get, path = "/api/orders/{id}/payments", tag = "queries",
    params(("id" = Uuid, Path, description = "the order id")),
    responses((status = 200, body = OrderPayments), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_payments<S: Storage>(
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
pub(crate) async fn get_saga<S: Storage>(
    State(st): State<ApiState<S>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<SagaTimeline>> {
    let id = order_id(&id?.0)?;
    document(&st, SagaTimelines::NAME, &SagaTimelines::key(id), || format!("no saga for order {id}"))
}

#[utoipa::path(get, path = "/api/products/{sku}/stock", tag = "queries",
    params(("sku" = String, Path, description = "the SKU")),
    responses((status = 200, body = StockLevel), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_stock<S: Storage>(
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

pub(crate) fn page_size(limit: Option<usize>) -> ApiResult<usize> {
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
pub(crate) async fn customer_orders<S: Storage>(
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
pub(crate) async fn dead_letters<S: Storage>(
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
