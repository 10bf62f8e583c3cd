//! The order service: the saga confirms an order (with its shipment's tracking number) or
//! cancels it.

use aggregates::order::{CancelReason, Order, OrderCommand};
use aggregates::saga::Outcome;
use aggregates::shipping::Shipment;
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
        let tracking_number = match tracking_number {
            Some(t) => t.to_owned(),
            // A command from before the saga carried it: the shipment is local then.
            None => {
                let (shipment, _) = load::<S, Shipment>(&self.store, &messages::shipment_stream(order_id))?;
                shipment.tracking_number.unwrap_or_default()
            }
        };
        let confirm = OrderCommand::Confirm { order_id, tracking_number };
        self.execute::<Order>(d, step, &messages::order_stream(order_id), confirm)
    }

    /// Cancels the order (the saga compensated it).
    pub(super) fn cancel_order(
        &self,
        step: &Step,
        reason: &CancelReason,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let cancel = OrderCommand::Cancel { order_id, reason: reason.clone() };
        self.execute::<Order>(d, step, &messages::order_stream(order_id), cancel)
    }
}
