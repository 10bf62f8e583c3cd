//! The services' handlers of saga commands: load → decide → append, with bounded retry on
//! version conflicts. This module holds what every service shares (loading, the retry loop,
//! the reply, the command consumer); each service's decisions are in its own file: stock in
//! [`inventory`], payments in [`payment`], shipments in [`shipping`], orders in [`order`].
//!
//! Saga commands arrive as events on `<service>_commands-<order>` streams (per SKU for stock:
//! `inventory_commands-<sku>`). A handler answers each with a `CommandReplied` event appended
//! atomically with the domain events it decided (and the consumer's checkpoint). Every output id
//! is derived from the command's idempotency key. A command whose reply already exists has no
//! second effect: it is answered again with a copy of the recorded reply (so a saga whose reply
//! was lost, or dead-lettered, hears it when it retries), and the copy's id follows from the
//! redelivery, so a repeat of that delivery adds nothing either.

use aggregates::codec::DomainEvent;
use aggregates::inventory::Inventory;
use aggregates::saga::{Outcome, SagaCommand};
use aggregates::{Decider, OrderId};
use event_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Storage, StreamId};
use uuid::Uuid;

use crate::app::aggregate::MAX_CONFLICT_RETRIES;
use crate::app::aggregate::{events_for, load, StateCache};
use crate::app::error::HandlerError;
use crate::app::gateway::{Breaker, PaymentGateway};
use crate::app::messages::{self, derived_id};
use crate::app::trace::{traced, TraceContext};

mod inventory;
mod order;
mod payment;
mod shipping;

pub use crate::app::aggregate::unusable_snapshots;
pub use inventory::{load_inventory, SNAPSHOT_EVERY};
pub use payment::FraudRules;
pub use shipping::SimulatedCarrier;

/// The four services' handlers over one store.
#[derive(Debug)]
pub struct Handlers<S: Storage, G: PaymentGateway> {
    store: EventStore<S>,
    gateway: Breaker<G>,
    carrier: SimulatedCarrier,
    fraud: FraudRules,
    /// Folded inventory states by stream, with the version they include (and their snapshots).
    /// A cached state is brought up to its stream before it is used: the log is checked for
    /// events after it, and those are folded in.
    inventory: StateCache<Inventory>,
    /// This node is one of several inventory pods (sharded by SKU): it owns some SKUs only.
    sharded_inventory: bool,
}

/// The outcome of deciding one command: what to append.
#[derive(Default)]
struct Decision {
    request: AppendRequest,
    /// Inventory streams appended to: the version loaded and the state the append leaves
    /// (cached, and snapshotted now and then, once the append is done).
    after: Vec<(StreamId, u64, Inventory)>,
    /// What the reply carries besides the outcome (a shipment's tracking number).
    detail: Option<String>,
}

impl Decision {
    /// Adds `events` on `stream` to what the command appends, at `expected`.
    fn append(&mut self, stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) {
        self.request = std::mem::take(&mut self.request).and(stream, expected, events);
    }
}

/// The command being decided: whose it is, and the ids its outputs derive from.
#[derive(Debug, Clone)]
struct Step {
    /// The command's idempotency key.
    command_id: Uuid,
    /// The order (and the correlation id of everything the command causes).
    order_id: OrderId,
    /// The command event (the causation id).
    cause: Uuid,
    /// The trace context the command recorded (its saga's): every output records it too.
    trace: Option<TraceContext>,
}

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Handlers over `store`, with the payment gateway behind `gateway`'s breaker.
    pub fn new(store: EventStore<S>, gateway: Breaker<G>, carrier: SimulatedCarrier) -> Self {
        Self {
            store,
            gateway,
            carrier,
            fraud: FraudRules::default(),
            inventory: inventory::cache(),
            sharded_inventory: false,
        }
    }

    /// Screens amounts for fraud by `rules` (every amount passes by default).
    pub fn with_fraud_rules(mut self, rules: FraudRules) -> Self {
        self.fraud = rules;
        self
    }

    /// Marks this node as one of several inventory pods: a stock command for several SKUs (sent
    /// by a saga recorded before stock went per SKU) is refused, since some of its SKUs belong to
    /// other pods.
    pub fn with_sharded_inventory(mut self, sharded: bool) -> Self {
        self.sharded_inventory = sharded;
        self
    }

    /// The store.
    pub fn store(&self) -> &EventStore<S> {
        &self.store
    }

    /// The gateway (behind its breaker).
    pub fn gateway(&self) -> &Breaker<G> {
        &self.gateway
    }

    /// Handles one command event; appends the outcome with `checkpoint` in the same write.
    pub async fn handle_command(
        &self,
        e: &RecordedEvent,
        checkpoint: Option<(String, u64)>,
    ) -> Result<(), HandlerError> {
        let (command_id, command) = messages::decode_command(e).map_err(HandlerError::bad_message)?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            // Already answered (a duplicate delivery, or a retry of a processed command): no
            // second effect, but the answer again, in case the first one was lost on its way.
            if let Some(reply) = self.store.find_event(derived_id(command_id, "reply", 0))? {
                let mut request = AppendRequest::single(
                    messages::replies_stream(command.order_id()),
                    ExpectedVersion::Any,
                    vec![messages::resent_reply(&reply, e)],
                );
                if let Some((name, value)) = &checkpoint {
                    request = request.with_checkpoint(name.clone(), *value);
                }
                return match self.store.append(request).await {
                    Ok(_) | Err(event_store::Error::EventIdReused { .. }) => Ok(()),
                    Err(err) => Err(err.into()),
                };
            }
            let decision = self.decide(command_id, &command, e).await?;
            let mut request = decision.request;
            if let Some((name, value)) = &checkpoint {
                request = request.with_checkpoint(name.clone(), *value);
            }
            match self.store.append(request).await {
                Ok(done) => {
                    for (stream, loaded, state) in decision.after {
                        self.inventory.appended(&self.store, &stream, loaded, state, &done);
                    }
                    return Ok(());
                }
                Err(event_store::Error::Conflict { .. }) => continue,
                // The same outputs were appended by an earlier delivery.
                Err(event_store::Error::EventIdReused { .. }) => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        Err(HandlerError::conflicts(format!("the streams of command {}", e.stream_id), MAX_CONFLICT_RETRIES))
    }

    async fn decide(
        &self,
        command_id: Uuid,
        command: &SagaCommand,
        e: &RecordedEvent,
    ) -> Result<Decision, HandlerError> {
        let step = Step {
            command_id,
            order_id: command.order_id(),
            cause: e.event_id,
            trace: TraceContext::of_event(e),
        };
        let mut d = Decision::default();
        let outcome = match command {
            SagaCommand::ReserveStock { lines, .. }
            | SagaCommand::CommitStock { lines, .. }
            | SagaCommand::ReleaseStock { lines, .. } => self.stock(&step, command, lines, &mut d)?,
            SagaCommand::CheckFraud { amount, .. } => self.check_fraud(*amount),
            SagaCommand::TakePayment { amount, .. } => self.take_payment(&step, *amount, &mut d).await?,
            SagaCommand::RefundPayment { reason, .. } => self.refund_payment(&step, reason, &mut d)?,
            SagaCommand::CreateShipment { address, .. } => {
                self.create_shipment(&step, address.as_ref(), &mut d)?
            }
            SagaCommand::CancelShipment { reason, .. } => self.cancel_shipment(&step, reason, &mut d)?,
            SagaCommand::ConfirmOrder { tracking_number, .. } => {
                self.confirm_order(&step, tracking_number.as_deref(), &mut d)?
            }
            SagaCommand::CancelOrder { reason, .. } => self.cancel_order(&step, reason, &mut d)?,
        };
        let reply = traced(
            messages::reply_event(command_id, command, outcome, d.detail.take(), step.cause),
            step.trace.as_ref(),
        );
        d.append(messages::replies_stream(step.order_id), ExpectedVersion::Any, vec![reply]);
        Ok(d)
    }

    /// Load → decide → append of one stream: the aggregate at `stream` is loaded and asked
    /// `command`; its events (or its refusal) go into `d`.
    fn execute<D>(
        &self,
        d: &mut Decision,
        step: &Step,
        stream: &StreamId,
        command: D::Command,
    ) -> Result<Outcome, HandlerError>
    where
        D: Decider,
        D::Event: DomainEvent,
    {
        let (state, version) = load::<S, D>(&self.store, stream)?;
        Ok(self.apply(d, step, stream, version, state.decide(command)))
    }

    /// The append of one stream's decision: `decided` (the decider's answer to
    /// the command, on the state at `version`) is added to `d` as an append at exactly that
    /// version, or is the command's rejection.
    fn apply<E: DomainEvent, Err: std::fmt::Display>(
        &self,
        d: &mut Decision,
        step: &Step,
        stream: &StreamId,
        version: u64,
        decided: Result<Vec<E>, Err>,
    ) -> Outcome {
        match decided {
            Err(err) => Outcome::Rejected { reason: err.to_string() },
            Ok(events) => {
                if !events.is_empty() {
                    d.append(stream.clone(), ExpectedVersion::Exact(version), step.events(&events, stream));
                }
                Outcome::Succeeded
            }
        }
    }
}

impl Step {
    /// A decider's events on `stream` as log events, with ids derived from the command.
    fn events<E: DomainEvent>(&self, events: &[E], stream: &StreamId) -> Vec<NewEvent> {
        events_for(events, self.command_id, stream, self.order_id.0, self.cause)
            .into_iter()
            .map(|e| traced(e, self.trace.as_ref()))
            .collect()
    }
}
