//! The shipping service: a shipment created where the carrier delivers (its tracking number goes
//! back in the reply), or cancelled (compensation).

use aggregates::saga::Outcome;
use aggregates::shipping::{Address, Shipment, ShippingCommand, ShippingEvent};
use aggregates::Decider;
use event_store::Storage;

use super::{Decision, Handlers, Step};
use crate::app::aggregate::load;
use crate::app::error::HandlerError;
use crate::app::gateway::PaymentGateway;
use crate::app::messages;

/// The shipping carrier port: can it deliver to this address?
#[derive(Debug, Clone)]
pub struct SimulatedCarrier {
    /// Countries it does not serve.
    pub undeliverable_countries: Vec<String>,
}

impl Default for SimulatedCarrier {
    fn default() -> Self {
        Self { undeliverable_countries: vec!["XX".into(), "AQ".into()] }
    }
}

impl SimulatedCarrier {
    /// Checks an address.
    pub fn check(&self, address: &Address) -> Result<(), String> {
        if self.undeliverable_countries.contains(&address.country) {
            return Err(format!("no carrier delivers to {}", address.country));
        }
        Ok(())
    }
}

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Creates the order's shipment; an address no carrier serves is the command's rejection.
    pub(super) fn create_shipment(
        &self,
        step: &Step,
        address: Option<&Address>,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let stream = messages::shipment_stream(order_id);
        let (state, version) = load::<S, Shipment>(&self.store, &stream)?;
        let Some(address) = address else {
            return Ok(Outcome::Rejected { reason: "the order has no shipping address".into() });
        };
        let tracking_number = format!("TRK-{}", &step.command_id.simple().to_string()[..12].to_uppercase());
        let cmd = ShippingCommand::Create {
            order_id,
            address: address.clone(),
            deliverable: self.carrier.check(address),
            tracking_number: tracking_number.clone(),
        };
        let decided = state.decide(cmd);
        let failed = decided.as_ref().ok().and_then(|evs| {
            evs.iter().find_map(|e| match e {
                ShippingEvent::ShipmentFailed(f) => Some(f.reason.clone()),
                _ => None,
            })
        });
        let outcome = self.apply(d, step, &stream, version, decided);
        Ok(match failed {
            Some(reason) => Outcome::Rejected { reason },
            None => {
                if outcome == Outcome::Succeeded {
                    // The saga hands it on to the order (on another node, maybe).
                    d.detail = Some(tracking_number);
                }
                outcome
            }
        })
    }

    /// Cancels the order's shipment (compensation).
    pub(super) fn cancel_shipment(
        &self,
        step: &Step,
        reason: &str,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let cancel = ShippingCommand::Cancel { order_id, reason: reason.to_owned() };
        self.execute::<Shipment>(d, step, &messages::shipment_stream(order_id), cancel)
    }
}
