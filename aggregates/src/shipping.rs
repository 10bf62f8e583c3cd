//! The Shipping aggregate, one per order: create a shipment, fail for an undeliverable address,
//! cancel.
//!
//! Whether an address is deliverable is looked up by the handler and arrives in the command.

use serde::{Deserialize, Serialize};

use crate::codec::Upcast;
use crate::{domain_events, Decider, OrderId};

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Address {
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

impl Address {
    /// Whether every field is filled in and the country code has the ISO shape.
    pub fn is_complete(&self) -> bool {
        !self.line1.trim().is_empty()
            && !self.city.trim().is_empty()
            && !self.postal_code.trim().is_empty()
            && self.country.len() == 2
            && self.country.bytes().all(|b| b.is_ascii_uppercase())
    }
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShippingCommand {
    /// Create the shipment. `deliverable` is the carrier's answer for the address, and
    /// `tracking_number` the number it assigned.
    Create { order_id: OrderId, address: Address, deliverable: Result<(), String>, tracking_number: String },
    /// Cancel it (compensation).
    Cancel { order_id: OrderId, reason: String },
}

/// `ShipmentCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCreated {
    pub order_id: OrderId,
    pub tracking_number: String,
    pub address: Address,
}
impl Upcast for ShipmentCreated {}

/// `ShipmentFailed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentFailed {
    pub order_id: OrderId,
    pub reason: String,
}
impl Upcast for ShipmentFailed {}

/// `ShipmentCancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCancelled {
    pub order_id: OrderId,
    pub reason: String,
}
impl Upcast for ShipmentCancelled {}

domain_events! {
    /// Events.
    pub enum ShippingEvent {
    ShipmentCreated(ShipmentCreated),
    ShipmentFailed(ShipmentFailed),
    ShipmentCancelled(ShipmentCancelled),
}
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShippingError {
    #[error("the address is incomplete")]
    IncompleteAddress,
    #[error("a tracking number is required")]
    MissingTrackingNumber,
    #[error("the shipment for order {0} was already decided")]
    AlreadyDecided(OrderId),
    #[error("the command is for order {command}, this is the shipment of order {shipment}")]
    WrongOrder { shipment: OrderId, command: OrderId },
}

/// Lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    #[default]
    None,
    Created,
    Failed,
    Cancelled,
}

/// State.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shipment {
    pub order_id: Option<OrderId>,
    pub status: ShipmentStatus,
    pub tracking_number: Option<String>,
}

impl Decider for Shipment {
    type Command = ShippingCommand;
    type Event = ShippingEvent;
    type Error = ShippingError;

    fn decide(&self, command: ShippingCommand) -> Result<Vec<ShippingEvent>, ShippingError> {
        match command {
            ShippingCommand::Create { order_id, address, deliverable, tracking_number } => {
                if let Some(shipment) = self.order_id.filter(|s| *s != order_id) {
                    return Err(ShippingError::WrongOrder { shipment, command: order_id });
                }
                if self.status != ShipmentStatus::None {
                    return Err(ShippingError::AlreadyDecided(order_id));
                }
                if !address.is_complete() {
                    return Err(ShippingError::IncompleteAddress);
                }
                Ok(vec![match deliverable {
                    Ok(()) => {
                        if tracking_number.trim().is_empty() {
                            return Err(ShippingError::MissingTrackingNumber);
                        }
                        ShippingEvent::ShipmentCreated(ShipmentCreated { order_id, tracking_number, address })
                    }
                    Err(reason) => ShippingEvent::ShipmentFailed(ShipmentFailed { order_id, reason }),
                }])
            }
            ShippingCommand::Cancel { order_id, reason } => {
                if let Some(shipment) = self.order_id.filter(|s| *s != order_id) {
                    return Err(ShippingError::WrongOrder { shipment, command: order_id });
                }
                Ok(match self.status {
                    // Cancelling before creation leaves a tombstone: a late create is refused.
                    ShipmentStatus::Created | ShipmentStatus::None => {
                        vec![ShippingEvent::ShipmentCancelled(ShipmentCancelled { order_id, reason })]
                    }
                    // Nothing to cancel (it failed), or already cancelled.
                    ShipmentStatus::Failed | ShipmentStatus::Cancelled => vec![],
                })
            }
        }
    }

    fn evolve(mut self, event: &ShippingEvent) -> Self {
        match event {
            ShippingEvent::ShipmentCreated(e) => {
                self.order_id = Some(e.order_id);
                self.status = ShipmentStatus::Created;
                self.tracking_number = Some(e.tracking_number.clone());
            }
            ShippingEvent::ShipmentFailed(e) => {
                self.order_id = Some(e.order_id);
                self.status = ShipmentStatus::Failed;
            }
            ShippingEvent::ShipmentCancelled(e) => {
                self.order_id = Some(e.order_id);
                self.status = ShipmentStatus::Cancelled;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DomainEvent;
    use crate::testing::given;
    use uuid::Uuid;

    fn oid() -> OrderId {
        OrderId(Uuid::from_u128(9))
    }
    fn addr() -> Address {
        Address {
            line1: "1 Main St".into(),
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        }
    }
    fn create(deliverable: Result<(), String>) -> ShippingCommand {
        ShippingCommand::Create {
            order_id: oid(),
            address: addr(),
            deliverable,
            tracking_number: "TRK1".into(),
        }
    }
    fn created() -> ShippingEvent {
        ShippingEvent::ShipmentCreated(ShipmentCreated {
            order_id: oid(),
            tracking_number: "TRK1".into(),
            address: addr(),
        })
    }
    fn cancel() -> ShippingCommand {
        ShippingCommand::Cancel { order_id: oid(), reason: "order cancelled".into() }
    }

    #[test]
    fn create_a_shipment() {
        let s = given::<Shipment>([]).when(create(Ok(()))).then([created()]);
        assert_eq!(s.tracking_number.as_deref(), Some("TRK1"));
        given::<Shipment>([created()]).when(create(Ok(()))).then_error(ShippingError::AlreadyDecided(oid()));
    }

    #[test]
    fn an_undeliverable_address_fails_the_shipment() {
        given::<Shipment>([]).when(create(Err("no carrier serves this area".into()))).then([
            ShippingEvent::ShipmentFailed(ShipmentFailed {
                order_id: oid(),
                reason: "no carrier serves this area".into(),
            }),
        ]);
    }

    #[test]
    fn bad_input_is_refused() {
        let incomplete = ShippingCommand::Create {
            order_id: oid(),
            address: Address { city: " ".into(), ..addr() },
            deliverable: Ok(()),
            tracking_number: "T".into(),
        };
        given::<Shipment>([]).when(incomplete).then_error(ShippingError::IncompleteAddress);
        let no_tracking = ShippingCommand::Create {
            order_id: oid(),
            address: addr(),
            deliverable: Ok(()),
            tracking_number: "".into(),
        };
        given::<Shipment>([]).when(no_tracking).then_error(ShippingError::MissingTrackingNumber);
    }

    #[test]
    fn cancel_is_idempotent() {
        let cancelled = ShippingEvent::ShipmentCancelled(ShipmentCancelled {
            order_id: oid(),
            reason: "order cancelled".into(),
        });
        let s = given::<Shipment>([created()]).when(cancel()).then([cancelled.clone()]);
        assert_eq!(s.status, ShipmentStatus::Cancelled);
        given::<Shipment>([created(), cancelled.clone()]).when(cancel()).then([]);
        // Before creation: a tombstone, and a late create is refused.
        given::<Shipment>([]).when(cancel()).then([cancelled.clone()]);
        given::<Shipment>([cancelled]).when(create(Ok(()))).then_error(ShippingError::AlreadyDecided(oid()));
        let other = OrderId(Uuid::from_u128(10));
        given::<Shipment>([created()])
            .when(ShippingCommand::Cancel { order_id: other, reason: "x".into() })
            .then_error(ShippingError::WrongOrder { shipment: oid(), command: other });
    }

    #[test]
    fn events_round_trip() {
        for e in
            [created(), ShippingEvent::ShipmentFailed(ShipmentFailed { order_id: oid(), reason: "r".into() })]
        {
            assert_eq!(
                ShippingEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode"),
                e
            );
        }
    }
}
