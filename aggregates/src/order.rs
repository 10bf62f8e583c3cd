//! The Order aggregate: placed with items, then confirmed, or cancelled with a reason.

use serde::{Deserialize, Serialize};

use crate::codec::Upcast;
use crate::shipping::Address;
use crate::{domain_events, Currency, CustomerId, Decider, Money, OrderId, Sku};

/// Most lines in one order.
pub const MAX_LINES: usize = 100;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LineItem {
    /// What.
    pub sku: Sku,
    /// How many (at least 1).
    pub quantity: u32,
    /// Price of one, in minor units.
    pub unit_price: Money,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CancelReason {
    /// Not enough stock for a line.
    OutOfStock,
    /// The payment was declined.
    PaymentDeclined,
    /// The shipment could not be created.
    ShipmentFailed,
    /// The customer asked.
    CustomerRequest,
    /// A step did not answer in time, after retries.
    Timeout,
    /// An operator aborted the order's saga.
    Operator,
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        order_id: OrderId,
        customer_id: CustomerId,
        items: Vec<LineItem>,
        currency: Currency,
        shipping_address: Option<Address>,
    },
    /// Confirm it once it has shipped.
    Confirm { order_id: OrderId, tracking_number: String },
    /// Cancel it.
    Cancel { order_id: OrderId, reason: CancelReason },
}

/// `OrderPlaced`: schema 2 added `currency` (v1 orders were all EUR) and `shipping_address`
/// (absent in v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub currency: Currency,
    #[serde(default)]
    pub shipping_address: Option<Address>,
}

impl Upcast for OrderPlaced {
    const VERSION: u32 = 2;
    fn upcast(version: u32, mut value: serde_json::Value) -> Result<serde_json::Value, String> {
        if version == 1 {
            let obj = value.as_object_mut().ok_or("expected a JSON object")?;
            obj.entry("currency").or_insert_with(|| "EUR".into());
        }
        Ok(value)
    }
}

/// `OrderConfirmed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    pub tracking_number: String,
}
impl Upcast for OrderConfirmed {}

/// `OrderCancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: CancelReason,
}
impl Upcast for OrderCancelled {}

domain_events! {
    /// Events.
    pub enum OrderEvent { OrderPlaced(OrderPlaced), OrderConfirmed(OrderConfirmed), OrderCancelled(OrderCancelled) }
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order {0} already exists")]
    AlreadyPlaced(OrderId),
    #[error("order {0} does not exist")]
    NotFound(OrderId),
    #[error("an order needs 1 to {MAX_LINES} lines")]
    BadLineCount,
    #[error("line {0}: quantity must be at least 1")]
    ZeroQuantity(usize),
    #[error("line {0}: invalid SKU")]
    InvalidSku(usize),
    #[error("the order total overflows")]
    TotalOverflow,
    #[error("invalid currency code {0:?}")]
    InvalidCurrency(String),
    #[error("order {0} is cancelled")]
    Cancelled(OrderId),
    #[error("order {0} is confirmed and can no longer be cancelled")]
    AlreadyConfirmed(OrderId),
    #[error("the command is for order {command}, this is order {order}")]
    WrongOrder { order: OrderId, command: OrderId },
}

/// Lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderStatus {
    /// Not placed.
    #[default]
    None,
    /// Placed, saga running.
    Pending,
    /// Shipped and confirmed.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// State.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order {
    pub id: Option<OrderId>,
    pub status: OrderStatus,
    pub customer_id: Option<CustomerId>,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub currency: Option<Currency>,
    pub tracking_number: Option<String>,
    pub cancel_reason: Option<CancelReason>,
}

impl Order {
    fn existing(&self, command: OrderId) -> Result<OrderId, OrderError> {
        match self.id {
            None => Err(OrderError::NotFound(command)),
            Some(id) if id != command => Err(OrderError::WrongOrder { order: id, command }),
            Some(id) => Ok(id),
        }
    }
}

impl Decider for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { order_id, customer_id, items, currency, shipping_address } => {
                if self.id.is_some() {
                    return Err(OrderError::AlreadyPlaced(order_id));
                }
                if items.is_empty() || items.len() > MAX_LINES {
                    return Err(OrderError::BadLineCount);
                }
                if !currency.is_valid() {
                    return Err(OrderError::InvalidCurrency(currency.0));
                }
                let mut total = Money::ZERO;
                for (i, line) in items.iter().enumerate() {
                    if line.quantity == 0 {
                        return Err(OrderError::ZeroQuantity(i));
                    }
                    if !line.sku.is_valid() {
                        return Err(OrderError::InvalidSku(i));
                    }
                    total = line
                        .unit_price
                        .checked_mul(u64::from(line.quantity))
                        .and_then(|l| total.checked_add(l))
                        .ok_or(OrderError::TotalOverflow)?;
                }
                Ok(vec![OrderEvent::OrderPlaced(OrderPlaced {
                    order_id,
                    customer_id,
                    items,
                    total,
                    currency,
                    shipping_address,
                })])
            }
            OrderCommand::Confirm { order_id, tracking_number } => {
                let id = self.existing(order_id)?;
                match self.status {
                    OrderStatus::Confirmed => Ok(vec![]),
                    OrderStatus::Cancelled => Err(OrderError::Cancelled(id)),
                    _ => {
                        Ok(vec![OrderEvent::OrderConfirmed(OrderConfirmed { order_id: id, tracking_number })])
                    }
                }
            }
            OrderCommand::Cancel { order_id, reason } => {
                let id = self.existing(order_id)?;
                match self.status {
                    OrderStatus::Cancelled => Ok(vec![]),
                    OrderStatus::Confirmed => Err(OrderError::AlreadyConfirmed(id)),
                    _ => Ok(vec![OrderEvent::OrderCancelled(OrderCancelled { order_id: id, reason })]),
                }
            }
        }
    }

    fn evolve(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::OrderPlaced(e) => {
                self.id = Some(e.order_id);
                self.status = OrderStatus::Pending;
                self.customer_id = Some(e.customer_id.clone());
                self.items = e.items.clone();
                self.total = e.total;
                self.currency = Some(e.currency.clone());
            }
            OrderEvent::OrderConfirmed(e) => {
                self.status = OrderStatus::Confirmed;
                self.tracking_number = Some(e.tracking_number.clone());
            }
            OrderEvent::OrderCancelled(e) => {
                self.status = OrderStatus::Cancelled;
                self.cancel_reason = Some(e.reason.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeError, DomainEvent};
    use crate::testing::given;
    use uuid::Uuid;

    fn oid() -> OrderId {
        OrderId(Uuid::from_u128(1))
    }

    fn line(sku: &str, quantity: u32, price: u64) -> LineItem {
        LineItem { sku: Sku::from(sku), quantity, unit_price: Money(price) }
    }

    fn place(items: Vec<LineItem>) -> OrderCommand {
        OrderCommand::Place {
            order_id: oid(),
            customer_id: CustomerId("c1".into()),
            items,
            currency: "EUR".into(),
            shipping_address: None,
        }
    }

    fn placed() -> OrderEvent {
        OrderEvent::OrderPlaced(OrderPlaced {
            order_id: oid(),
            customer_id: CustomerId("c1".into()),
            items: vec![line("A", 2, 1999), line("B", 1, 500)],
            total: Money(4498),
            currency: "EUR".into(),
            shipping_address: None,
        })
    }

    fn cancelled(reason: CancelReason) -> OrderEvent {
        OrderEvent::OrderCancelled(OrderCancelled { order_id: oid(), reason })
    }

    fn confirmed() -> OrderEvent {
        OrderEvent::OrderConfirmed(OrderConfirmed { order_id: oid(), tracking_number: "T1".into() })
    }

    #[test]
    fn placing_computes_the_total() {
        let state =
            given::<Order>([]).when(place(vec![line("A", 2, 1999), line("B", 1, 500)])).then([placed()]);
        assert_eq!((state.status, state.total), (OrderStatus::Pending, Money(4498)));
    }

    #[test]
    fn placing_twice_is_refused() {
        given::<Order>([placed()])
            .when(place(vec![line("A", 1, 1)]))
            .then_error(OrderError::AlreadyPlaced(oid()));
    }

    #[test]
    fn bad_orders_are_refused() {
        given::<Order>([]).when(place(vec![])).then_error(OrderError::BadLineCount);
        given::<Order>([])
            .when(place(vec![line("A", 1, 1); MAX_LINES + 1]))
            .then_error(OrderError::BadLineCount);
        given::<Order>([])
            .when(place(vec![line("A", 1, 1), line("B", 0, 1)]))
            .then_error(OrderError::ZeroQuantity(1));
        given::<Order>([]).when(place(vec![line("no spaces", 1, 1)])).then_error(OrderError::InvalidSku(0));
        given::<Order>([])
            .when(place(vec![line("A", u32::MAX, u64::MAX)]))
            .then_error(OrderError::TotalOverflow);
        let cmd = OrderCommand::Place {
            order_id: oid(),
            customer_id: CustomerId("c".into()),
            items: vec![line("A", 1, 1)],
            currency: "euro".into(),
            shipping_address: None,
        };
        given::<Order>([]).when(cmd).then_error(OrderError::InvalidCurrency("euro".into()));
    }

    #[test]
    fn confirm_a_pending_order_once() {
        let cmd = || OrderCommand::Confirm { order_id: oid(), tracking_number: "T1".into() };
        let state = given::<Order>([placed()]).when(cmd()).then([confirmed()]);
        assert_eq!(state.status, OrderStatus::Confirmed);
        given::<Order>([placed(), confirmed()]).when(cmd()).then([]);
        given::<Order>([placed(), cancelled(CancelReason::OutOfStock)])
            .when(cmd())
            .then_error(OrderError::Cancelled(oid()));
        given::<Order>([]).when(cmd()).then_error(OrderError::NotFound(oid()));
    }

    #[test]
    fn cancel_a_pending_order_idempotently() {
        let cmd = || OrderCommand::Cancel { order_id: oid(), reason: CancelReason::PaymentDeclined };
        let state = given::<Order>([placed()]).when(cmd()).then([cancelled(CancelReason::PaymentDeclined)]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        given::<Order>([placed(), cancelled(CancelReason::PaymentDeclined)]).when(cmd()).then([]);
        given::<Order>([placed(), confirmed()]).when(cmd()).then_error(OrderError::AlreadyConfirmed(oid()));
        let other = OrderId(Uuid::from_u128(2));
        given::<Order>([placed()])
            .when(OrderCommand::Cancel { order_id: other, reason: CancelReason::CustomerRequest })
            .then_error(OrderError::WrongOrder { order: oid(), command: other });
    }

    #[test]
    fn events_round_trip_with_stable_names() {
        for e in [placed(), confirmed(), cancelled(CancelReason::Timeout)] {
            let back =
                OrderEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode");
            assert_eq!(back, e);
        }
        assert_eq!(placed().event_type(), "OrderPlaced");
        assert_eq!(placed().schema_version(), 2);
    }

    #[test]
    fn v1_order_placed_is_upcast() {
        let v1 =
            br#"{"order_id":"00000000-0000-0000-0000-000000000001","customer_id":"c1","items":[],"total":0}"#;
        match OrderEvent::decode("OrderPlaced", 1, v1).expect("upcast") {
            OrderEvent::OrderPlaced(p) => {
                assert_eq!(p.currency, Currency::from("EUR"));
                assert_eq!(p.shipping_address, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn undecodable_events_are_errors() {
        assert!(matches!(OrderEvent::decode("OrderShipped", 1, b"{}"), Err(DecodeError::UnknownType(_))));
        assert!(matches!(
            OrderEvent::decode("OrderPlaced", 3, b"{}"),
            Err(DecodeError::UnsupportedVersion { version: 3, max: 2, .. })
        ));
        assert!(matches!(
            OrderEvent::decode("OrderPlaced", 0, b"{}"),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            OrderEvent::decode("OrderConfirmed", 1, b"not json"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(OrderEvent::decode("OrderConfirmed", 1, b"{}"), Err(DecodeError::Malformed { .. })));
        assert!(matches!(OrderEvent::decode("OrderPlaced", 1, b"[1]"), Err(DecodeError::Malformed { .. })));
    }
}
