//! The order service: the saga confirms an order (with its shipment's tracking number) or
//! cancels it.

use aggregates::order::{CancelReason, Order, OrderCommand};
use aggregates::saga::Outcome;
use aggregates::shipping::Shipment;
use aggregates::Decider;
use event_store::Storage;

use super::{Decision, Handlers, Step};
use crate::app::aggregate::load;
use crate::app::error::HandlerError;
use crate::app::gateway::PaymentGateway;
use crate::app::messages;

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Confirms the order, with the tracking number the shipping service replied.
    pub(super) fn confirm_order(
        &self,
        step: &Step,
        tracking_number: Option<&str>,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let stream = messages::order_stream(order_id);
        let (state, version) = load::<S, Order>(&self.store, &stream)?;
        let tracking_number = match tracking_number {
            Some(t) => t.to_owned(),
            // A command from before the saga carried it: the shipment is local then.
            None => {
                let (shipment, _) = load::<S, Shipment>(&self.store, &messages::shipment_stream(order_id))?;
                shipment.tracking_number.unwrap_or_default()
            }
        };
        let decided = state.decide(OrderCommand::Confirm { order_id, tracking_number });
        Ok(self.apply(d, step, &stream, version, decided))
    }

    /// Cancels the order (the saga compensated it).
    pub(super) fn cancel_order(
        &self,
        step: &Step,
        reason: &CancelReason,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let stream = messages::order_stream(order_id);
        let (state, version) = load::<S, Order>(&self.store, &stream)?;
        let decided = state.decide(OrderCommand::Cancel { order_id, reason: reason.clone() });
        Ok(self.apply(d, step, &stream, version, decided))
    }
}
