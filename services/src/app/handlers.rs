//! The services' handlers of saga commands: load → decide → append, with bounded retry on
//! version conflicts.
//!
//! Saga commands arrive as events on `<service>_commands-<order>` streams (per SKU for stock:
//! `inventory_commands-<sku>`). A handler answers each with a `CommandReplied` event appended
//! atomically with the domain events it decided (and the consumer's checkpoint). Every output id
//! is derived from the command's idempotency key. A command whose reply already exists has no
//! second effect: it is answered again with a copy of the recorded reply (so a saga whose reply
//! was lost, or dead-lettered, hears it when it retries), and the copy's id follows from the
//! redelivery, so a repeat of that delivery adds nothing either.

use std::collections::BTreeMap;

use aggregates::codec::DomainEvent;
use aggregates::inventory::{Inventory, InventoryCommand, InventoryEvent};
use aggregates::order::{Order, OrderCommand};
use aggregates::payment::{Payment, PaymentCommand, PaymentEvent};
use aggregates::saga::{Outcome, SagaCommand, SagaLine};
use aggregates::shipping::{Address, Shipment, ShippingCommand, ShippingEvent};
use aggregates::{Decider, Sku};
use event_store::{
    AppendRequest, Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, Storage,
    StreamId,
};
use uuid::Uuid;

use std::sync::Arc;

use aggregates::saga::Service;

use crate::app::consumer::{Handler, Source};
use crate::app::gateway::{Breaker, GatewayError, PaymentGateway};
use crate::app::messages::{self, derived_id, ConsumerName};

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

/// Snapshot an inventory stream every this many events.
pub const SNAPSHOT_EVERY: u64 = 100;
/// 2: bincode of the bounded state (1, JSON of the unbounded state, is no longer read: such a
/// snapshot is replaced by the next one).
const INVENTORY_SNAPSHOT_SCHEMA: u32 = 2;

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

static UNUSABLE_SNAPSHOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Snapshots found unusable by this process (also the metric `causeway_snapshots_unusable_total`).
pub fn unusable_snapshots() -> u64 {
    UNUSABLE_SNAPSHOTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Loads an inventory, starting from its snapshot when there is a usable one. A snapshot that
/// cannot be read is logged and counted (`causeway_snapshots_unusable_total`), and the stream is
/// folded from its start; the next snapshot replaces it.
pub fn load_inventory<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
) -> Result<(Inventory, u64), LoadError> {
    load_inventory_noting(store, stream).map(|(state, version, _)| (state, version))
}

/// [`load_inventory`], and whether a snapshot was used.
fn load_inventory_noting<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
) -> Result<(Inventory, u64, bool), LoadError> {
    let unusable = |reason: String| {
        UNUSABLE_SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("causeway_snapshots_unusable_total").increment(1);
        tracing::warn!(%stream, %reason, "an inventory snapshot cannot be used; folding the stream from its start");
    };
    match store.load_snapshot(stream) {
        Ok(None) => {}
        Ok(Some(snap)) if snap.schema_version == INVENTORY_SNAPSHOT_SCHEMA => {
            match bincode::deserialize::<Inventory>(&snap.payload) {
                Ok(state) => return load_from(store, stream, state, snap.version).map(|(s, v)| (s, v, true)),
                Err(e) => unusable(format!("undecodable: {e}")),
            }
        }
        // Written by an older build: replaced at the next snapshot, not an error.
        Ok(Some(snap)) if snap.schema_version < INVENTORY_SNAPSHOT_SCHEMA => {
            tracing::debug!(%stream, schema = snap.schema_version, "an older inventory snapshot is not read");
        }
        Ok(Some(snap)) => unusable(format!("schema {} from a newer build", snap.schema_version)),
        Err(e) => unusable(e.to_string()),
    }
    load(store, stream).map(|(s, v)| (s, v, false))
}

fn maybe_snapshot<S: Storage>(store: &EventStore<S>, stream: &StreamId, state: &Inventory, version: u64) {
    if version / SNAPSHOT_EVERY == (version.saturating_sub(1)) / SNAPSHOT_EVERY || version == 0 {
        return;
    }
    save_snapshot(store, stream, state, version);
}

fn save_snapshot<S: Storage>(store: &EventStore<S>, stream: &StreamId, state: &Inventory, version: u64) {
    let payload = match bincode::serialize(state) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%stream, error = %e, "encoding a snapshot failed");
            return;
        }
    };
    let snap = Snapshot { version, schema_version: INVENTORY_SNAPSHOT_SCHEMA, payload };
    if let Err(e) = store.save_snapshot(stream, &snap) {
        metrics::counter!("causeway_snapshots_failed_total").increment(1);
        tracing::warn!(%stream, error = %e, "saving a snapshot failed");
    }
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

/// Inventory states kept between commands, at most this many SKUs.
const INVENTORY_CACHE_SKUS: usize = 10_000;

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
struct Decision {
    request: AppendRequest,
    after: Vec<(StreamId, Inventory, u64)>,
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

    /// Loads an inventory: from the cache when the stream has not moved since, else from its
    /// snapshot and events.
    fn inventory(&self, stream: &StreamId) -> Result<(Inventory, u64), LoadError> {
        // Taken out, not cloned: the state goes back once the command's outcome is appended (a
        // concurrent command on the same SKU, which the consumers avoid, would load it anew).
        let cached = self.inventory_cache.lock().unwrap_or_else(|p| p.into_inner()).remove(stream.as_str());
        if let Some((state, version)) = cached {
            if self.store.stream_version(stream)? == version {
                return Ok((state, version));
            }
            // Moved on (another writer): fold just the new events.
            return load_from(&self.store, stream, state, version);
        }
        let (state, version, from_snapshot) = load_inventory_noting(&self.store, stream)?;
        if !from_snapshot && version >= SNAPSHOT_EVERY {
            // A long stream folded whole (no snapshot, or one that could not be used): snapshot it
            // now rather than at its next hundredth event.
            save_snapshot(&self.store, stream, &state, version);
        }
        Ok((state, version))
    }

    fn remember_inventory(&self, stream: &StreamId, state: Inventory, version: u64) {
        let mut cache = self.inventory_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= INVENTORY_CACHE_SKUS && !cache.contains_key(stream.as_str()) {
            cache.clear();
        }
        cache.insert(stream.as_str().to_owned(), (state, version));
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
                        maybe_snapshot(&self.store, &stream, &state, version);
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
        let order_id = command.order_id();
        let corr = order_id.0;
        let cause = e.event_id;
        let mut request = AppendRequest::default();
        let mut after = Vec::new();
        let mut detail = None;
        let outcome = match command {
            SagaCommand::ReserveStock { lines, .. }
            | SagaCommand::CommitStock { lines, .. }
            | SagaCommand::ReleaseStock { lines, .. } => {
                let mut rejected = Vec::new();
                let mut outputs = Vec::new();
                let merged = merge_lines(lines);
                // A per-SKU command has one line; one with several (even of one SKU) was keyed by
                // its order, not its SKU, so it may have reached a pod that does not own the SKU.
                if self.sharded_inventory && lines.len() > 1 {
                    rejected.push(format!(
                        "a stock command with {} lines reached one of several inventory pods, which owns some SKUs \
                         only (a saga recorded before stock went per SKU: drain such sagas before sharding inventory)",
                        lines.len()
                    ));
                }
                for (sku, quantity) in if rejected.is_empty() { merged } else { BTreeMap::new() } {
                    let stream = messages::inventory_stream(&sku)
                        .map_err(|err| HandlerError::Poison(err.to_string()))?;
                    let (state, version) = self.inventory(&stream)?;
                    let cmd = match command {
                        SagaCommand::ReserveStock { .. } => {
                            InventoryCommand::Reserve { sku: sku.clone(), order_id, quantity }
                        }
                        SagaCommand::CommitStock { .. } => {
                            InventoryCommand::Commit { sku: sku.clone(), order_id }
                        }
                        _ => InventoryCommand::Release { sku: sku.clone(), order_id },
                    };
                    match state.decide(cmd) {
                        Err(err) => {
                            rejected.push(format!("{sku}: {err}"));
                            self.remember_inventory(&stream, state, version);
                        }
                        Ok(events) => {
                            for ev in &events {
                                if let InventoryEvent::StockReservationRejected(r) = ev {
                                    rejected.push(format!(
                                        "{sku}: requested {}, available {}",
                                        r.requested, r.available
                                    ));
                                }
                            }
                            outputs.push((stream, state, version, events));
                        }
                    }
                }
                // All or nothing: when any line is refused, record only the rejections.
                for (stream, state, version, events) in outputs {
                    let keep: Vec<_> = if rejected.is_empty() {
                        events
                    } else {
                        events
                            .into_iter()
                            .filter(|e| matches!(e, InventoryEvent::StockReservationRejected(_)))
                            .collect()
                    };
                    if keep.is_empty() {
                        self.remember_inventory(&stream, state, version);
                        continue;
                    }
                    let new_version = version + keep.len() as u64;
                    let new_state = keep.iter().fold(state, |s, e| s.evolve(e));
                    request = request.and(
                        stream.clone(),
                        ExpectedVersion::Exact(version),
                        events_for(&keep, command_id, &stream, corr, cause),
                    );
                    after.push((stream, new_state, new_version));
                }
                if rejected.is_empty() {
                    Outcome::Succeeded
                } else {
                    Outcome::Rejected { reason: rejected.join("; ") }
                }
            }
            SagaCommand::TakePayment { amount, .. } => {
                let stream = messages::payment_stream(order_id);
                let (state, version) = load::<S, Payment>(&self.store, &stream)?;
                let mut events = Vec::new();
                let mut s = state.clone();
                if s.status == aggregates::payment::PaymentStatus::None {
                    let answer = self.gateway.authorize(command_id, order_id, *amount).await.map_err(
                        |err| match err {
                            GatewayError::CircuitOpen | GatewayError::Unavailable(_) => {
                                HandlerError::Transient(err.to_string())
                            }
                        },
                    )?;
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
                                PaymentEvent::PaymentDeclined(d) => Some(d.reason.clone()),
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
                    request = request.and(
                        stream.clone(),
                        ExpectedVersion::Exact(version),
                        events_for(&events, command_id, &stream, corr, cause),
                    );
                }
                outcome
            }
            SagaCommand::RefundPayment { reason, .. } => {
                let stream = messages::payment_stream(order_id);
                let (state, version) = load::<S, Payment>(&self.store, &stream)?;
                self.apply(
                    &mut request,
                    &stream,
                    version,
                    state.decide(PaymentCommand::Refund { order_id, reason: reason.clone() }),
                    command_id,
                    corr,
                    cause,
                )
            }
            SagaCommand::CreateShipment { address, .. } => {
                let stream = messages::shipment_stream(order_id);
                let (state, version) = load::<S, Shipment>(&self.store, &stream)?;
                match address {
                    None => Outcome::Rejected { reason: "the order has no shipping address".into() },
                    Some(address) => {
                        let tracking_number =
                            format!("TRK-{}", &command_id.simple().to_string()[..12].to_uppercase());
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
                        let outcome =
                            self.apply(&mut request, &stream, version, decided, command_id, corr, cause);
                        match failed {
                            Some(reason) => Outcome::Rejected { reason },
                            None => {
                                if outcome == Outcome::Succeeded {
                                    // The saga hands it on to the order (on another node, maybe).
                                    detail = Some(tracking_number);
                                }
                                outcome
                            }
                        }
                    }
                }
            }
            SagaCommand::CancelShipment { reason, .. } => {
                let stream = messages::shipment_stream(order_id);
                let (state, version) = load::<S, Shipment>(&self.store, &stream)?;
                self.apply(
                    &mut request,
                    &stream,
                    version,
                    state.decide(ShippingCommand::Cancel { order_id, reason: reason.clone() }),
                    command_id,
                    corr,
                    cause,
                )
            }
            SagaCommand::ConfirmOrder { tracking_number, .. } => {
                let stream = messages::order_stream(order_id);
                let (state, version) = load::<S, Order>(&self.store, &stream)?;
                let tracking_number = match tracking_number {
                    Some(t) => t.clone(),
                    // A command from before the saga carried it: the shipment is local then.
                    None => {
                        let (shipment, _) =
                            load::<S, Shipment>(&self.store, &messages::shipment_stream(order_id))?;
                        shipment.tracking_number.unwrap_or_default()
                    }
                };
                self.apply(
                    &mut request,
                    &stream,
                    version,
                    state.decide(OrderCommand::Confirm { order_id, tracking_number }),
                    command_id,
                    corr,
                    cause,
                )
            }
            SagaCommand::CancelOrder { reason, .. } => {
                let stream = messages::order_stream(order_id);
                let (state, version) = load::<S, Order>(&self.store, &stream)?;
                self.apply(
                    &mut request,
                    &stream,
                    version,
                    state.decide(OrderCommand::Cancel { order_id, reason: reason.clone() }),
                    command_id,
                    corr,
                    cause,
                )
            }
        };
        request = request.and(
            messages::replies_stream(order_id),
            ExpectedVersion::Any,
            vec![messages::reply_event(command_id, command, outcome, detail, cause)],
        );
        Ok(Decision { request, after })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply<E: DomainEvent, Err: std::fmt::Display>(
        &self,
        request: &mut AppendRequest,
        stream: &StreamId,
        version: u64,
        decided: Result<Vec<E>, Err>,
        command_id: Uuid,
        corr: Uuid,
        cause: Uuid,
    ) -> Outcome {
        match decided {
            Err(err) => Outcome::Rejected { reason: err.to_string() },
            Ok(events) => {
                if !events.is_empty() {
                    let mut r = std::mem::take(request);
                    r = r.and(
                        stream.clone(),
                        ExpectedVersion::Exact(version),
                        events_for(&events, command_id, stream, corr, cause),
                    );
                    *request = r;
                }
                Outcome::Succeeded
            }
        }
    }
}

fn rejected_as_poison(e: aggregates::payment::PaymentError) -> HandlerError {
    HandlerError::Poison(e.to_string())
}

/// Sums quantities per SKU (an order may list a SKU twice), in SKU order.
fn merge_lines(lines: &[SagaLine]) -> BTreeMap<Sku, u64> {
    let mut merged = BTreeMap::new();
    for l in lines {
        *merged.entry(l.sku.clone()).or_insert(0u64) += l.quantity;
    }
    merged
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

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use event_store::{MemoryStorage, StoreConfig};

    #[tokio::test]
    async fn an_unreadable_inventory_snapshot_is_counted_and_the_stream_folded_from_its_start() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        let sku = aggregates::Sku::from("SKU-1");
        for _ in 0..5 {
            crate::app::commands::add_stock(&store, Uuid::now_v7(), sku.clone(), 2).await.expect("stock");
        }
        let stream = messages::inventory_stream(&sku).expect("stream");
        let (state, version) = load_inventory(&store, &stream).expect("load");
        assert_eq!((state.available, version), (10, 5));
        let save = |schema_version: u32, payload: Vec<u8>| {
            store.save_snapshot(&stream, &Snapshot { version, schema_version, payload }).expect("save")
        };
        // A usable snapshot is what the load starts from (this one says 999, the events 10).
        let mut marked = state.clone();
        marked.available = 999;
        save(INVENTORY_SNAPSHOT_SCHEMA, bincode::serialize(&marked).expect("encode"));
        let before = unusable_snapshots();
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 999);
        assert_eq!(unusable_snapshots(), before);
        // An undecodable one is counted, and the stream is folded from its start.
        save(INVENTORY_SNAPSHOT_SCHEMA, vec![0xff; 7]);
        assert_eq!(load_inventory(&store, &stream).expect("load"), (state.clone(), version));
        assert_eq!(unusable_snapshots(), before + 1);
        // So is one of a newer schema; one of an older schema is not read, and not counted.
        save(INVENTORY_SNAPSHOT_SCHEMA + 1, vec![]);
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(unusable_snapshots(), before + 2);
        save(1, b"{}".to_vec());
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(unusable_snapshots(), before + 2);
    }
}
