//! The Payment aggregate, one per order: authorize, capture, refund.
//!
//! The gateway is asked by the handler before deciding; its answer arrives in the command
//! ([`GatewayAnswer`]), so the decider stays pure. A decline is a business outcome
//! (`PaymentDeclined`), not an error.

use serde::{Deserialize, Serialize};

use crate::codec::Upcast;
use crate::{domain_events, Decider, Money, OrderId};

/// What the payment gateway said to an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayAnswer {
    /// Authorized, with the gateway's reference.
    Approved { authorization: String },
    /// Declined, with the gateway's reason.
    Declined { reason: String },
}

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Record the gateway's answer to an authorization of `amount`.
    Authorize { order_id: OrderId, amount: Money, answer: GatewayAnswer },
    /// Capture the authorized amount.
    Capture { order_id: OrderId },
    /// Give the money back (compensation): refunds a capture, voids an authorization.
    Refund { order_id: OrderId, reason: String },
}

/// `PaymentAuthorized`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub order_id: OrderId,
    pub amount: Money,
    pub authorization: String,
}
impl Upcast for PaymentAuthorized {}

/// `PaymentDeclined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub amount: Money,
    pub reason: String,
}
impl Upcast for PaymentDeclined {}

/// `PaymentCaptured`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: OrderId,
    pub amount: Money,
}
impl Upcast for PaymentCaptured {}

/// `PaymentRefunded`: `captured` tells a refund of captured money from a voided authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    pub amount: Money,
    pub captured: bool,
    pub reason: String,
}
impl Upcast for PaymentRefunded {}

domain_events! {
    /// Events.
    pub enum PaymentEvent {
    PaymentAuthorized(PaymentAuthorized),
    PaymentDeclined(PaymentDeclined),
    PaymentCaptured(PaymentCaptured),
    PaymentRefunded(PaymentRefunded),
}
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("the amount must be positive")]
    ZeroAmount,
    #[error("payment for order {0} was already decided")]
    AlreadyDecided(OrderId),
    #[error("no authorized payment for order {0}")]
    NotAuthorized(OrderId),
    #[error("the payment for order {0} was refunded")]
    Refunded(OrderId),
    #[error("the command is for order {command}, this is the payment of order {payment}")]
    WrongOrder { payment: OrderId, command: OrderId },
}

/// Lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    #[default]
    None,
    Authorized,
    Declined,
    Captured,
    Refunded,
}

/// State.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payment {
    pub order_id: Option<OrderId>,
    pub status: PaymentStatus,
    pub amount: Money,
    pub authorization: Option<String>,
    /// Money currently held from the customer (captured and not refunded).
    pub captured: Money,
}

impl Payment {
    fn same_order(&self, command: OrderId) -> Result<(), PaymentError> {
        match self.order_id {
            Some(payment) if payment != command => Err(PaymentError::WrongOrder { payment, command }),
            _ => Ok(()),
        }
    }
}

impl Decider for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        match command {
            PaymentCommand::Authorize { order_id, amount, answer } => {
                self.same_order(order_id)?;
                if amount == Money::ZERO {
                    return Err(PaymentError::ZeroAmount);
                }
                if self.status != PaymentStatus::None {
                    return Err(PaymentError::AlreadyDecided(order_id));
                }
                Ok(vec![match answer {
                    GatewayAnswer::Approved { authorization } => {
                        PaymentEvent::PaymentAuthorized(PaymentAuthorized { order_id, amount, authorization })
                    }
                    GatewayAnswer::Declined { reason } => {
                        PaymentEvent::PaymentDeclined(PaymentDeclined { order_id, amount, reason })
                    }
                }])
            }
            PaymentCommand::Capture { order_id } => {
                self.same_order(order_id)?;
                match self.status {
                    PaymentStatus::Authorized => Ok(vec![PaymentEvent::PaymentCaptured(PaymentCaptured {
                        order_id,
                        amount: self.amount,
                    })]),
                    PaymentStatus::Captured => Ok(vec![]),
                    PaymentStatus::Refunded => Err(PaymentError::Refunded(order_id)),
                    PaymentStatus::None | PaymentStatus::Declined => {
                        Err(PaymentError::NotAuthorized(order_id))
                    }
                }
            }
            PaymentCommand::Refund { order_id, reason } => {
                self.same_order(order_id)?;
                match self.status {
                    PaymentStatus::Authorized | PaymentStatus::Captured => {
                        Ok(vec![PaymentEvent::PaymentRefunded(PaymentRefunded {
                            order_id,
                            amount: self.amount,
                            captured: self.status == PaymentStatus::Captured,
                            reason,
                        })])
                    }
                    // Nothing taken yet: record a zero refund, so an authorization that arrives
                    // late (a re-driven or delayed command) is refused instead of charging a
                    // cancelled order.
                    PaymentStatus::None => Ok(vec![PaymentEvent::PaymentRefunded(PaymentRefunded {
                        order_id,
                        amount: Money::ZERO,
                        captured: false,
                        reason,
                    })]),
                    // Declined (nothing taken, and final) or already given back.
                    PaymentStatus::Declined | PaymentStatus::Refunded => Ok(vec![]),
                }
            }
        }
    }

    fn evolve(mut self, event: &PaymentEvent) -> Self {
        match event {
            PaymentEvent::PaymentAuthorized(e) => {
                self.order_id = Some(e.order_id);
                self.status = PaymentStatus::Authorized;
                self.amount = e.amount;
                self.authorization = Some(e.authorization.clone());
            }
            PaymentEvent::PaymentDeclined(e) => {
                self.order_id = Some(e.order_id);
                self.status = PaymentStatus::Declined;
                self.amount = e.amount;
            }
            PaymentEvent::PaymentCaptured(e) => {
                self.status = PaymentStatus::Captured;
                self.captured = e.amount;
            }
            PaymentEvent::PaymentRefunded(e) => {
                self.order_id = Some(e.order_id);
                self.status = PaymentStatus::Refunded;
                self.captured = Money::ZERO;
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
        OrderId(Uuid::from_u128(7))
    }
    fn authorized() -> PaymentEvent {
        PaymentEvent::PaymentAuthorized(PaymentAuthorized {
            order_id: oid(),
            amount: Money(500),
            authorization: "A1".into(),
        })
    }
    fn captured() -> PaymentEvent {
        PaymentEvent::PaymentCaptured(PaymentCaptured { order_id: oid(), amount: Money(500) })
    }
    fn authorize(answer: GatewayAnswer) -> PaymentCommand {
        PaymentCommand::Authorize { order_id: oid(), amount: Money(500), answer }
    }
    fn refund() -> PaymentCommand {
        PaymentCommand::Refund { order_id: oid(), reason: "shipment failed".into() }
    }
    fn refunded(captured: bool) -> PaymentEvent {
        PaymentEvent::PaymentRefunded(PaymentRefunded {
            order_id: oid(),
            amount: Money(500),
            captured,
            reason: "shipment failed".into(),
        })
    }

    #[test]
    fn authorize_records_the_gateway_answer() {
        given::<Payment>([])
            .when(authorize(GatewayAnswer::Approved { authorization: "A1".into() }))
            .then([authorized()]);
        let s = given::<Payment>([])
            .when(authorize(GatewayAnswer::Declined { reason: "insufficient funds".into() }))
            .then([PaymentEvent::PaymentDeclined(PaymentDeclined {
                order_id: oid(),
                amount: Money(500),
                reason: "insufficient funds".into(),
            })]);
        assert_eq!(s.status, PaymentStatus::Declined);
        given::<Payment>([authorized()])
            .when(authorize(GatewayAnswer::Approved { authorization: "A2".into() }))
            .then_error(PaymentError::AlreadyDecided(oid()));
        given::<Payment>([])
            .when(PaymentCommand::Authorize {
                order_id: oid(),
                amount: Money::ZERO,
                answer: GatewayAnswer::Approved { authorization: "A".into() },
            })
            .then_error(PaymentError::ZeroAmount);
    }

    #[test]
    fn capture_only_what_was_authorized() {
        let s = given::<Payment>([authorized()])
            .when(PaymentCommand::Capture { order_id: oid() })
            .then([captured()]);
        assert_eq!(s.captured, Money(500));
        given::<Payment>([authorized(), captured()])
            .when(PaymentCommand::Capture { order_id: oid() })
            .then([]);
        given::<Payment>([])
            .when(PaymentCommand::Capture { order_id: oid() })
            .then_error(PaymentError::NotAuthorized(oid()));
        given::<Payment>([authorized(), refunded(false)])
            .when(PaymentCommand::Capture { order_id: oid() })
            .then_error(PaymentError::Refunded(oid()));
    }

    #[test]
    fn refund_gives_the_money_back_once() {
        let s = given::<Payment>([authorized(), captured()]).when(refund()).then([refunded(true)]);
        assert_eq!((s.status, s.captured), (PaymentStatus::Refunded, Money::ZERO));
        given::<Payment>([authorized()]).when(refund()).then([refunded(false)]);
        given::<Payment>([authorized(), captured(), refunded(true)]).when(refund()).then([]);
    }

    #[test]
    fn a_refund_before_any_payment_leaves_a_tombstone_that_refuses_a_late_authorization() {
        let tombstone = PaymentEvent::PaymentRefunded(PaymentRefunded {
            order_id: oid(),
            amount: Money::ZERO,
            captured: false,
            reason: "shipment failed".into(),
        });
        let s = given::<Payment>([]).when(refund()).then([tombstone.clone()]);
        assert_eq!((s.status, s.captured), (PaymentStatus::Refunded, Money::ZERO));
        given::<Payment>([tombstone.clone()]).when(refund()).then([]);
        given::<Payment>([tombstone.clone()])
            .when(authorize(GatewayAnswer::Approved { authorization: "late".into() }))
            .then_error(PaymentError::AlreadyDecided(oid()));
        given::<Payment>([tombstone])
            .when(PaymentCommand::Capture { order_id: oid() })
            .then_error(PaymentError::Refunded(oid()));
    }

    #[test]
    fn commands_for_another_order_are_refused() {
        let other = OrderId(Uuid::from_u128(8));
        given::<Payment>([authorized()])
            .when(PaymentCommand::Capture { order_id: other })
            .then_error(PaymentError::WrongOrder { payment: oid(), command: other });
    }

    #[test]
    fn events_round_trip() {
        for e in [authorized(), captured(), refunded(true)] {
            assert_eq!(
                PaymentEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode"),
                e
            );
        }
    }
}
