//! The payment service: screen an order's amount for fraud, authorize through the gateway
//! (behind its circuit breaker), capture, refund.

use aggregates::payment::{Payment, PaymentCommand, PaymentEvent};
use aggregates::saga::Outcome;
use aggregates::{Decider, Money};
use event_store::{ExpectedVersion, Storage};

use super::{Decision, Handlers, Step};
use crate::app::aggregate::load;
use crate::app::error::{HandlerError, Poison, Transient};
use crate::app::gateway::PaymentGateway;
use crate::app::messages;

/// The fraud screening rules: amounts above a limit are refused (the step a saga of definition 2
/// takes before its payment; a refusal cancels the order before any money moves).
#[derive(Debug, Clone, Default)]
pub struct FraudRules {
    /// The largest amount (minor units) an order may have; `None`: every amount passes.
    pub max_amount_minor: Option<u64>,
}

impl FraudRules {
    /// The verdict on `amount`: `Err(why)` refuses it.
    pub fn screen(&self, amount: Money) -> Result<(), String> {
        match self.max_amount_minor {
            Some(max) if amount.0 > max => {
                Err(format!("fraud check: an amount of {} exceeds the limit of {max}", amount.0))
            }
            _ => Ok(()),
        }
    }
}

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Screens an order's amount: a verdict, recorded in the command's reply (which also makes a
    /// repeat answer as the first did, whatever the rules are by then); nothing else changes.
    pub(super) fn check_fraud(&self, amount: Money) -> Outcome {
        match self.fraud.screen(amount) {
            Ok(()) => Outcome::Succeeded,
            Err(reason) => Outcome::Rejected { reason },
        }
    }

    /// Takes the payment of an order: authorizes it once (a repeat finds it authorized), then
    /// captures it; a decline is the command's rejection.
    pub(super) async fn take_payment(
        &self,
        step: &Step,
        amount: Money,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let (order_id, amount) = (step.order_id, &amount);
        let stream = messages::payment_stream(order_id);
        let (state, version) = load::<S, Payment>(&self.store, &stream)?;
        let mut events = Vec::new();
        let mut s = state.clone();
        if s.status == aggregates::payment::PaymentStatus::None {
            // The gateway not answering (or its breaker open) is worth trying again later.
            let answer = self
                .gateway
                .authorize(step.command_id, order_id, *amount)
                .await
                .map_err(|err| HandlerError::Transient(Transient::Gateway(err)))?;
            let ev = s
                .decide(PaymentCommand::Authorize { order_id, amount: *amount, answer })
                .map_err(rejected_as_poison)?;
            s = ev.iter().fold(s, |s, e| s.evolve(e));
            events.extend(ev);
        }
        let outcome = match s.status {
            aggregates::payment::PaymentStatus::Declined => {
                let reason = events
                    .iter()
                    .find_map(|e| match e {
                        PaymentEvent::PaymentDeclined(declined) => Some(declined.reason.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "declined".into());
                Outcome::Rejected { reason }
            }
            _ => match s.decide(PaymentCommand::Capture { order_id }) {
                Ok(ev) => {
                    events.extend(ev);
                    Outcome::Succeeded
                }
                Err(err) => Outcome::Rejected { reason: err.to_string() },
            },
        };
        if !events.is_empty() {
            d.append(stream.clone(), ExpectedVersion::Exact(version), step.events(&events, &stream));
        }
        Ok(outcome)
    }

    /// Refunds an order's payment (compensation).
    pub(super) fn refund_payment(
        &self,
        step: &Step,
        reason: &str,
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let refund = PaymentCommand::Refund { order_id, reason: reason.to_owned() };
        self.execute::<Payment>(d, step, &messages::payment_stream(order_id), refund)
    }
}

fn rejected_as_poison(e: aggregates::payment::PaymentError) -> HandlerError {
    HandlerError::Poison(Poison::Refused(e.to_string()))
}
