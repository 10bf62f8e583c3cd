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

use std::sync::Arc;

use aggregates::codec::DomainEvent;
use aggregates::inventory::Inventory;
use aggregates::saga::{Outcome, SagaCommand, Service};
use aggregates::{Decider, OrderId};
use event_store::{
    AppendRequest, Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Storage, StreamId,
};
use uuid::Uuid;

use crate::app::consumer::{Handler, Source};
use crate::app::gateway::{Breaker, PaymentGateway};
use crate::app::messages::{self, derived_id, ConsumerName};

mod inventory;
mod order;
mod payment;
mod shipping;

pub use inventory::{load_inventory, unusable_snapshots, SNAPSHOT_EVERY};
pub use shipping::SimulatedCarrier;

/// How a message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// It can never be processed (bad payload, unknown type, undecodable history).
    #[error("poison message: {0}")]
    Poison(String),
    /// It may succeed later (store busy, gateway down, repeated conflicts).
    #[error("transient failure: {0}")]
    Transient(String),
}

impl From<event_store::Error> for HandlerError {
    fn from(e: event_store::Error) -> Self {
        if e.is_client_error() {
            HandlerError::Poison(e.to_string())
        } else {
            HandlerError::Transient(e.to_string())
        }
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
    /// An event of the stream cannot be read by this build.
    #[error("{stream} version {version}: {error}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// Why.
        error: aggregates::DecodeError,
    },
}

impl From<LoadError> for HandlerError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) => e.into(),
            e @ LoadError::Undecodable { .. } => HandlerError::Poison(e.to_string()),
        }
    }
}

/// Most conflict retries of one load → decide → append.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Rebuilds an aggregate from its stream (from `from` with state `state`).
pub fn load_from<S: Storage, D>(
    store: &EventStore<S>,
    stream: &StreamId,
    mut state: D,
    mut version: u64,
) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    for e in store.read_stream(stream, version + 1, Direction::Forward) {
        let e = e?;
        let event = D::Event::decode(&e.event_type, e.schema_version, &e.payload).map_err(|error| {
            LoadError::Undecodable { stream: stream.to_string(), version: e.version, error }
        })?;
        state = state.evolve(&event);
        version = e.version;
    }
    Ok((state, version))
}

/// Rebuilds an aggregate from its whole stream.
pub fn load<S: Storage, D>(store: &EventStore<S>, stream: &StreamId) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    load_from(store, stream, D::default(), 0)
}

/// A decider's events as log events with ids derived from `cause` (one per stream and index).
pub fn events_for<E: DomainEvent>(
    events: &[E],
    cause: Uuid,
    stream: &StreamId,
    correlation: Uuid,
    causation: Uuid,
) -> Vec<NewEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            messages::domain_event(e, derived_id(cause, stream.as_str(), i), correlation, causation)
        })
        .collect()
}

/// The four services' handlers over one store.
#[derive(Debug)]
pub struct Handlers<S: Storage, G: PaymentGateway> {
    store: EventStore<S>,
    gateway: Breaker<G>,
    carrier: SimulatedCarrier,
    /// Folded inventory states by stream, with the version they include. Used only when the
    /// stream is still at that version (checked against the log), so it can never be stale.
    inventory_cache: std::sync::Mutex<std::collections::HashMap<String, (Inventory, u64)>>,
    /// This node is one of several inventory pods (sharded by SKU): it owns some SKUs only.
    sharded_inventory: bool,
}

/// The outcome of deciding one command: what to append.
#[derive(Default)]
struct Decision {
    request: AppendRequest,
    /// Inventory states as the append leaves them (cached, and snapshotted now and then).
    after: Vec<(StreamId, Inventory, u64)>,
    /// What the reply carries besides the outcome (a shipment's tracking number).
    detail: Option<String>,
}

/// The command being decided: whose it is, and the ids its outputs derive from.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The command's idempotency key.
    command_id: Uuid,
    /// The order (and the correlation id of everything the command causes).
    order_id: OrderId,
    /// The command event (the causation id).
    cause: Uuid,
}

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Handlers over `store`, with the payment gateway behind `gateway`'s breaker.
    pub fn new(store: EventStore<S>, gateway: Breaker<G>, carrier: SimulatedCarrier) -> Self {
        Self { store, gateway, carrier, inventory_cache: Default::default(), sharded_inventory: false }
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
        let (command_id, command) = messages::decode_command(e).map_err(HandlerError::Poison)?;
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
                Ok(_) => {
                    for (stream, state, version) in decision.after {
                        inventory::maybe_snapshot(&self.store, &stream, &state, version);
                        self.remember_inventory(&stream, state, version);
                    }
                    return Ok(());
                }
                Err(event_store::Error::Conflict { .. }) => continue,
                // The same outputs were appended by an earlier delivery.
                Err(event_store::Error::EventIdReused { .. }) => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        Err(HandlerError::Transient(format!("{} conflicts in a row", MAX_CONFLICT_RETRIES)))
    }

    async fn decide(
        &self,
        command_id: Uuid,
        command: &SagaCommand,
        e: &RecordedEvent,
    ) -> Result<Decision, HandlerError> {
        let step = Step { command_id, order_id: command.order_id(), cause: e.event_id };
        let mut d = Decision::default();
        let outcome = match command {
            SagaCommand::ReserveStock { lines, .. }
            | SagaCommand::CommitStock { lines, .. }
            | SagaCommand::ReleaseStock { lines, .. } => self.stock(&step, command, lines, &mut d)?,
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
        let reply = messages::reply_event(command_id, command, outcome, d.detail.take(), step.cause);
        d.request = std::mem::take(&mut d.request).and(
            messages::replies_stream(step.order_id),
            ExpectedVersion::Any,
            vec![reply],
        );
        Ok(d)
    }

    /// The generic load → decide → append of one stream: `decided` (the decider's answer to
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
                    d.request = std::mem::take(&mut d.request).and(
                        stream.clone(),
                        ExpectedVersion::Exact(version),
                        step.events(&events, stream),
                    );
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
    }
}

/// A service's command consumer.
#[derive(Debug)]
pub struct CommandConsumer<S: Storage, G: PaymentGateway> {
    handlers: Arc<Handlers<S, G>>,
    service: Service,
    name: ConsumerName,
}

impl<S: Storage, G: PaymentGateway> CommandConsumer<S, G> {
    /// The consumer of `service`'s commands.
    pub fn new(handlers: Arc<Handlers<S, G>>, service: Service) -> Self {
        Self { handlers, service, name: ConsumerName::of_service(service) }
    }
}

impl<S: Storage, G: PaymentGateway> Handler for CommandConsumer<S, G> {
    fn name(&self) -> &str {
        self.name.as_str()
    }
    fn source(&self) -> Source {
        Source::Categories(vec![messages::commands_category(self.service)])
    }
    fn accepts(&self, _: &RecordedEvent) -> bool {
        true
    }
    fn partition_key(&self, e: &RecordedEvent) -> u64 {
        // One order's (or one SKU's) commands in order, on one worker.
        messages::shard_hash(&e.stream_id)
    }
    async fn handle(&self, e: &RecordedEvent, checkpoint: (String, u64)) -> Result<(), HandlerError> {
        match messages::ApiCommand::decode(e).map_err(HandlerError::Poison)? {
            Some(forwarded) => {
                crate::app::commands::handle_forwarded(self.handlers.store(), e, &forwarded, checkpoint).await
            }
            None => self.handlers.handle_command(e, Some(checkpoint)).await,
        }
    }
}
