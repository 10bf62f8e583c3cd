//! The order API of the system Causeway implements, `POST /api/saga/order`, kept so that its
//! clients and its documented checks work unchanged: mapped onto `POST /api/orders`.
//!
//! - `product_id` is the SKU; `quantity` the quantity.
//! - Prices: there is no price catalogue, so each unit's price comes from `total_amount` (major
//!   units, at most two decimals), shared evenly over every unit of the order. A total that does
//!   not divide evenly cannot be mapped: 422, and `POST /api/orders` takes per-line prices.
//! - The currency and the shipping address may be given; without them the node's defaults apply
//!   (`serve --default-currency`, EUR, and `--default-shipping-address`). An order without any
//!   address is refused (422): its shipment could not be made, so its saga would only compensate.
//! - Everything else is as `POST /api/orders`: the Idempotency-Key, admission, forwarding on a
//!   query node, the answers. The mapped order depends on the node's defaults: the same body and
//!   key sent to a node with other defaults is another order, refused as a reused key (409). A
//!   request without an Idempotency-Key is a new order each time, as on `POST /api/orders`.

use aggregates::shipping::Address;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use event_store::Storage;
use serde::Deserialize;

use super::commands::{place_request, OrderLine, PlaceOrderRequest, PlacedOrder};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::ApiState;

/// What the compatibility route fills in when a request leaves it out.
#[derive(Debug, Clone, Default)]
pub struct CompatDefaults {
    /// The currency (EUR when `None`).
    pub currency: Option<String>,
    /// The shipping address of orders that name none.
    pub shipping_address: Option<Address>,
}

/// `POST /api/saga/order` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaOrderRequest {
    /// 1 to 200 characters, not all blank.
    pub customer_id: String,
    /// 1 to 100 lines.
    pub items: Vec<SagaOrderItem>,
    /// The order's total in major units (100.00), at most two decimals; shared evenly over the
    /// units.
    pub total_amount: f64,
    /// An ISO 4217 code (default: the node's, EUR).
    #[serde(default)]
    pub currency: Option<String>,
    /// Where to ship (default: the node's `--default-shipping-address`).
    #[serde(default)]
    pub shipping_address: Option<Address>,
}

/// One line of [`SagaOrderRequest`].
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaOrderItem {
    /// The SKU (1-64 of A-Z a-z 0-9 - _ .).
    pub product_id: String,
    /// At least 1.
    pub quantity: u32,
}

/// The largest total taken, in minor units.
const MAX_TOTAL_MINOR: u64 = 1_000_000_000_000_000;

/// `total_amount` in minor units, when it is a positive amount with at most two decimals. Read
/// from the number's shortest decimal form (what the client wrote, for any amount it can write
/// exactly), digit by digit, so no rounding can make 1e-9 a zero or 1234567890.12 a refusal.
fn minor_units(total: f64) -> Option<u64> {
    if !total.is_finite() || total <= 0.0 {
        return None;
    }
    // Rust prints a float in its shortest round-trip form and never in exponent notation.
    let text = total.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if fraction.len() > 2 || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cents: u64 = format!("{fraction:0<2}").parse().ok()?;
    let minor = whole.parse::<u64>().ok()?.checked_mul(100)?.checked_add(cents)?;
    (1..=MAX_TOTAL_MINOR).contains(&minor).then_some(minor)
}

/// A request that cannot be mapped onto `POST /api/orders` (422 `unmappable`).
fn unmappable(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unmappable", message)
}

/// The request as a `POST /api/orders` request.
fn mapped(req: SagaOrderRequest, defaults: &CompatDefaults) -> ApiResult<PlaceOrderRequest> {
    let total = minor_units(req.total_amount).ok_or_else(|| {
        ApiError::bad_request(format!(
            "total_amount must be a positive amount with at most two decimals, got {}",
            req.total_amount
        ))
    })?;
    let units: u64 = req.items.iter().map(|i| u64::from(i.quantity)).sum();
    if units == 0 {
        return Err(ApiError::bad_request("items must hold at least one unit"));
    }
    if total % units != 0 {
        return Err(unmappable(format!(
            "total_amount {} does not divide evenly over the order's {units} units, and there is no price \
                 catalogue to price them: send POST /api/orders with a unit price per line",
            req.total_amount
        )));
    }
    let shipping_address = req.shipping_address.or_else(|| defaults.shipping_address.clone());
    match &shipping_address {
        None => {
            return Err(unmappable(
                "the order names no shipping_address and the node has no default (serve --default-shipping-address): \
                 its shipment could not be made"
                    .into(),
            ))
        }
        Some(a) if !a.is_complete() => {
            return Err(unmappable(
                "the shipping_address needs line1, city, postal_code and a two-letter country code: its shipment \
                 could not be made"
                    .into(),
            ))
        }
        Some(_) => {}
    }
    let unit_price_minor = total / units;
    Ok(PlaceOrderRequest {
        customer_id: req.customer_id,
        items: req
            .items
            .into_iter()
            .map(|i| OrderLine { sku: i.product_id, quantity: i.quantity, unit_price_minor })
            .collect(),
        currency: req.currency.or_else(|| defaults.currency.clone()).unwrap_or_else(|| "EUR".to_owned()),
        shipping_address,
    })
}

/// Places an order in the request shape of the system Causeway implements: mapped onto
/// `POST /api/orders` (prices from `total_amount`, the node's default currency and shipping
/// address), with the same answers.
#[utoipa::path(post, path = "/api/saga/order", tag = "commands", request_body = SagaOrderRequest,
    params(super::commands::IdempotencyHeader),
    responses((status = 201, description = "placed", body = PlacedOrder),
        (status = 202, description = "forwarded to the order role, which has not answered yet (query node)", body = PlacedOrder),
        (status = 400, description = "malformed, or a total_amount that is not a positive amount with two decimals", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "cannot be mapped (a total that does not divide evenly over the units, no shipping address), or refused by the domain", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(crate) async fn saga_order<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    body: Result<Json<SagaOrderRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PlacedOrder>)> {
    if let super::CommandRoute::Refuse { role } = &st.commands {
        return Err(super::commands::refuse_commands(role));
    }
    let Json(req) = body?;
    let req = mapped(req, &st.compat)?;
    place_request(&st, &headers, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_with_two_decimals_map_to_minor_units() {
        assert_eq!(minor_units(100.0), Some(10_000));
        assert_eq!(minor_units(19.99), Some(1_999));
        assert_eq!(minor_units(0.29), Some(29));
        assert_eq!(minor_units(0.01), Some(1));
        assert_eq!(minor_units(1_234_567_890.12), Some(123_456_789_012));
        assert_eq!(minor_units(100.5), Some(10_050));
        for bad in [0.0, -0.0, -1.0, 1.234, 1e-9, 100.000000001, f64::NAN, f64::INFINITY, 1e20] {
            assert_eq!(minor_units(bad), None, "{bad}");
        }
    }
}
