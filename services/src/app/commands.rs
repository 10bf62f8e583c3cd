//! The REST API's own commands (place an order, cancel it, add stock): load → decide → append,
//! with the client's `Idempotency-Key` as the source of every event id, and typed errors that
//! keep the domain's refusals apart from the store's failures.
//!
//! A command is first *planned* (the state loaded and the decider asked: the events it would
//! append, at which expected version), then either carried out here ([`place_order`],
//! [`cancel_order`], [`add_stock`]: the embedded node and a role's own API) or, on the node that
//! owns the streams, carried out for another node that forwarded it ([`handle_forwarded`]),
//! with an answer addressed to the forwarding node in the same atomic append.

use aggregates::inventory::{Inventory, InventoryCommand, InventoryError};
use aggregates::order::{CancelReason, Order, OrderCommand, OrderError};
use aggregates::{Decider, OrderId, Sku};
use event_store::{
    AppendRequest, AppendResult, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Storage, Stored,
    StreamId,
};
use uuid::Uuid;

use crate::app::aggregate::{events_for, load};
use crate::app::error::{HandlerError, LoadError};
use crate::app::handlers::load_inventory;
use crate::app::messages::{self, Answer, ApiCommand};
use crate::app::trace::{adopt_stored, append_adopting, traced, TraceContext};

/// Why the domain refused a command: the aggregate's own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The Order aggregate refused.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The Inventory aggregate refused.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// A refused REST command, or a failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused it (422).
    #[error(transparent)]
    Rejected(#[from] Refusal),
    /// The idempotency key was used before for a different request (409).
    #[error("this Idempotency-Key was already used for a different request")]
    KeyReused,
    /// The order does not exist (404).
    #[error("order {0} does not exist")]
    OrderNotFound(OrderId),
    /// The stream kept changing under the command (a hot stream); retry later (409).
    #[error("the {0} stream is busy; retry")]
    Contention(String),
    /// Reading the aggregate's history failed (500: the store, or a history this build cannot
    /// read).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The store failed to append (500), or refused the append as malformed (400).
    #[error(transparent)]
    Store(event_store::Error),
}

impl From<event_store::Error> for CommandError {
    fn from(e: event_store::Error) -> Self {
        match e {
            event_store::Error::EventIdReused { .. } => CommandError::KeyReused,
            other => CommandError::Store(other),
        }
    }
}

/// What a command would append: events to one stream at an expected version (none: it changes
/// nothing).
#[derive(Debug)]
pub struct Planned {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    /// The order the command is about (place, cancel).
    order: Option<OrderId>,
}

impl Planned {
    fn none(stream: StreamId, order: Option<OrderId>) -> Self {
        Self { stream, expected: ExpectedVersion::Any, events: Vec::new(), order }
    }

    /// Its events with the request's trace context (the append adopts the one an earlier
    /// attempt of the same request recorded: [`append_adopting`]).
    fn traced(mut self, trace: Option<&TraceContext>) -> Self {
        self.events = self.events.into_iter().map(|e| traced(e, trace)).collect();
        self
    }
}

/// Plans placing an order (an `OrderCommand::Place`): its events get ids derived from the
/// idempotency key.
pub fn plan_place(key: Uuid, command: OrderCommand) -> Result<Planned, CommandError> {
    let OrderCommand::Place { order_id, .. } = &command else {
        return Err(CommandError::Store(event_store::Error::InvalidAppend(
            "not a place-order command".into(),
        )));
    };
    let order_id = *order_id;
    let stream = messages::order_stream(order_id);
    let events = Order::default().decide(command).map_err(Refusal::from)?;
    let events = events_for(&events, key, &stream, order_id.0, key);
    Ok(Planned { stream, expected: ExpectedVersion::NoStream, events, order: Some(order_id) })
}

/// Plans a customer's cancellation of an order.
pub fn plan_cancel<S: Storage>(
    store: &EventStore<S>,
    key: Uuid,
    order_id: OrderId,
) -> Result<Planned, CommandError> {
    let stream = messages::order_stream(order_id);
    let (state, version) = load::<S, Order>(store, &stream)?;
    if version == 0 {
        return Err(CommandError::OrderNotFound(order_id));
    }
    let events = state
        .decide(OrderCommand::Cancel { order_id, reason: CancelReason::CustomerRequest })
        .map_err(Refusal::from)?;
    if events.is_empty() {
        return Ok(Planned::none(stream, Some(order_id)));
    }
    let events = events_for(&events, key, &stream, order_id.0, key);
    Ok(Planned { stream, expected: ExpectedVersion::Exact(version), events, order: Some(order_id) })
}

/// Plans adding stock to a SKU.
pub fn plan_add_stock<S: Storage>(
    store: &EventStore<S>,
    key: Uuid,
    sku: &Sku,
    quantity: u64,
) -> Result<Planned, CommandError> {
    if !sku.is_valid() {
        return Err(Refusal::Inventory(InventoryError::InvalidSku(sku.0.clone())).into());
    }
    let stream = messages::inventory_stream(sku).map_err(CommandError::Store)?;
    let (state, version) = load_inventory(store, &stream)?;
    let events =
        state.decide(InventoryCommand::AddStock { sku: sku.clone(), quantity }).map_err(Refusal::from)?;
    let events = events_for(&events, key, &stream, key, key);
    Ok(Planned { stream, expected: ExpectedVersion::Exact(version), events, order: None })
}

/// Checks a command that will be forwarded as far as the pure deciders can, so a client hears
/// about a malformed command at once rather than from the owner.
pub fn precheck(command: &ApiCommand) -> Result<(), CommandError> {
    match command {
        ApiCommand::PlaceOrder { order_id, customer_id, items, currency, shipping_address, .. } => {
            Order::default()
                .decide(OrderCommand::Place {
                    order_id: *order_id,
                    customer_id: aggregates::CustomerId(customer_id.clone()),
                    items: items.clone(),
                    currency: aggregates::Currency(currency.clone()),
                    shipping_address: shipping_address.clone(),
                })
                .map_err(Refusal::from)?;
        }
        ApiCommand::CancelOrder { .. } => {}
        ApiCommand::AddStock { sku, quantity, .. } => {
            if !sku.is_valid() {
                return Err(Refusal::Inventory(InventoryError::InvalidSku(sku.0.clone())).into());
            }
            Inventory::default()
                .decide(InventoryCommand::AddStock { sku: sku.clone(), quantity: *quantity })
                .map_err(Refusal::from)?;
        }
    }
    Ok(())
}

fn plan<S: Storage>(store: &EventStore<S>, command: &ApiCommand) -> Result<Planned, CommandError> {
    match command {
        ApiCommand::PlaceOrder { key, order_id, customer_id, items, currency, shipping_address } => {
            plan_place(
                *key,
                OrderCommand::Place {
                    order_id: *order_id,
                    customer_id: aggregates::CustomerId(customer_id.clone()),
                    items: items.clone(),
                    currency: aggregates::Currency(currency.clone()),
                    shipping_address: shipping_address.clone(),
                },
            )
        }
        ApiCommand::CancelOrder { key, order_id } => plan_cancel(store, *key, *order_id),
        ApiCommand::AddStock { key, sku, quantity } => plan_add_stock(store, *key, sku, *quantity),
    }
}

/// Conflict retries of an API command before it answers "busy".
const API_CONFLICT_RETRIES: usize = 16;

/// Plans and appends, retrying version conflicts with jittered backoff. A plan whose events are
/// stored already (a retry of the same request) gets the original result; a plan that changes
/// nothing gets an empty result.
async fn carry_out<S: Storage>(
    store: &EventStore<S>,
    replan: impl Fn() -> Result<Planned, CommandError>,
    trace: Option<&TraceContext>,
) -> Result<AppendResult, CommandError> {
    let mut backoff = std::time::Duration::from_millis(1);
    for _ in 0..API_CONFLICT_RETRIES {
        let planned = replan()?.traced(trace);
        if planned.events.is_empty() {
            return Ok(AppendResult { first_position: 0, last_position: 0, streams: vec![] });
        }
        match append_adopting(store, &planned.stream, planned.expected, planned.events).await {
            Err(event_store::Error::Conflict { .. }) => {
                // A hot stream: back off with jitter so concurrent writers stop colliding.
                tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>())).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other.map_err(Into::into),
        }
    }
    Err(CommandError::Contention(replan().map(|p| p.stream.to_string()).unwrap_or_default()))
}

/// Places an order. `idempotency_key` makes a retry return the first result; the same key with
/// another order is [`CommandError::KeyReused`].
pub async fn place_order<S: Storage>(
    store: &EventStore<S>,
    idempotency_key: Uuid,
    command: OrderCommand,
    trace: Option<&TraceContext>,
) -> Result<(OrderId, AppendResult), CommandError> {
    let planned = plan_place(idempotency_key, command)?.traced(trace);
    let order_id = planned.order.unwrap_or(OrderId(Uuid::nil()));
    match append_adopting(store, &planned.stream, planned.expected, planned.events).await {
        Ok(r) => Ok((order_id, r)),
        // An order with this id exists with events that did not come from this key.
        Err(event_store::Error::Conflict { .. }) => {
            Err(Refusal::Order(OrderError::AlreadyPlaced(order_id)).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Cancels an order on the customer's request.
pub async fn cancel_order<S: Storage>(
    store: &EventStore<S>,
    idempotency_key: Uuid,
    order_id: OrderId,
    trace: Option<&TraceContext>,
) -> Result<AppendResult, CommandError> {
    carry_out(store, || plan_cancel(store, idempotency_key, order_id), trace).await
}

/// Adds stock to a SKU.
pub async fn add_stock<S: Storage>(
    store: &EventStore<S>,
    idempotency_key: Uuid,
    sku: Sku,
    quantity: u64,
    trace: Option<&TraceContext>,
) -> Result<AppendResult, CommandError> {
    carry_out(store, || plan_add_stock(store, idempotency_key, &sku, quantity), trace).await
}

/// Carries out a REST command another node forwarded (the event `forwarded` on its
/// `<service>_commands` stream, read from Kafka), idempotent by the client's key, and answers
/// the forwarding node: the effect, the answer and the consumer's `checkpoint` are one atomic
/// append. A refusal is an answer too (not a dead letter); only a failure of this node is an
/// error.
pub async fn handle_forwarded<S: Storage>(
    store: &EventStore<S>,
    forwarded: &RecordedEvent,
    command: &ApiCommand,
    checkpoint: (String, u64),
) -> Result<(), HandlerError> {
    let source = forwarded
        .metadata
        .get(messages::SOURCE_KEY)
        .cloned()
        .unwrap_or_else(|| "causeway://local".to_owned());
    let trace = TraceContext::of_event(forwarded);
    let mut backoff = std::time::Duration::from_millis(1);
    for _ in 0..API_CONFLICT_RETRIES {
        // Another forwarding node's copy of the same command may carry another trace: the
        // comparison with what is stored takes the stored one.
        let planned = plan(store, command).map(|p| p.traced(trace.as_ref())).and_then(|mut p| {
            adopt_stored(store, &mut p.events)?;
            Ok(p)
        });
        let (answer, effect) = match planned {
            Ok(planned) => match planned.events.first() {
                None => (Answer::Done {}, None),
                Some(first) => match store.stored_as(&planned.stream, first)? {
                    // Carried out by an earlier delivery (from this node or another).
                    Stored::Same { .. } => (Answer::Done {}, None),
                    Stored::Different { .. } => (Answer::KeyReused, None),
                    Stored::Absent
                        if planned.expected == ExpectedVersion::NoStream
                            && store.stream_version(&planned.stream)? > 0 =>
                    {
                        let order = planned.order.unwrap_or(OrderId(Uuid::nil()));
                        (Answer::Rejected { reason: OrderError::AlreadyPlaced(order).to_string() }, None)
                    }
                    Stored::Absent => (Answer::Done {}, Some(planned)),
                },
            },
            Err(CommandError::Rejected(r)) => (Answer::Rejected { reason: r.to_string() }, None),
            Err(CommandError::OrderNotFound(id)) => {
                (Answer::NotFound { reason: format!("order {id} does not exist") }, None)
            }
            Err(CommandError::KeyReused) => (Answer::KeyReused, None),
            Err(CommandError::Load(e)) => return Err(e.into()),
            Err(CommandError::Store(e)) => return Err(e.into()),
            Err(CommandError::Contention(s)) => return Err(HandlerError::conflicts(s, API_CONFLICT_RETRIES)),
        };
        let answer =
            traced(messages::answer_event(forwarded, command.key(), &source, answer), trace.as_ref());
        let mut request = AppendRequest::default();
        if let Some(p) = effect {
            request = request.and(p.stream, p.expected, p.events);
        }
        let request = request
            .and(messages::answers_stream(command.key()), ExpectedVersion::Any, vec![answer])
            .with_checkpoint(checkpoint.0.clone(), checkpoint.1);
        match store.append(request).await {
            Ok(_) => return Ok(()),
            // Answered before (a redelivery): nothing more to do.
            Err(event_store::Error::EventIdReused { .. })
                if store.find_event(answer_id_of(forwarded, &source))?.is_some() =>
            {
                return Ok(())
            }
            Err(event_store::Error::Conflict { .. } | event_store::Error::EventIdReused { .. }) => {
                tokio::time::sleep(backoff.mul_f64(0.5 + rand::random::<f64>())).await;
                backoff = (backoff * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(HandlerError::conflicts(
        format!("the streams of forwarded command {}", forwarded.stream_id),
        API_CONFLICT_RETRIES,
    ))
}

fn answer_id_of(forwarded: &RecordedEvent, source: &str) -> Uuid {
    messages::answer_id(forwarded.event_id, source)
}

/// Most forwarded commands waiting for their answers at once on a node; past it a forwarded
/// command is answered 202 at once (accepted, outcome not awaited).
pub const MAX_ANSWER_WAITERS: usize = 10_000;

/// The waiters, by answer id; each with its own token, so a waiter that leaves (its answer
/// came, it timed out, its client went away) removes itself and no one else.
#[derive(Debug, Default)]
struct Waiters {
    by_id: std::collections::HashMap<Uuid, Vec<(u64, tokio::sync::oneshot::Sender<Answer>)>>,
    count: usize,
    next_token: u64,
}

/// The answers to the commands this node forwarded, as they reach its log (replicated from the
/// owners): [`Answers::wait`] waits for one, [`Answers::run`] hands them out.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    waiting: std::sync::Arc<std::sync::Mutex<Waiters>>,
}

fn decode_answer(e: &RecordedEvent) -> Option<Answer> {
    serde_json::from_slice::<messages::CommandAnswered>(&e.payload).ok().map(|a| a.answer)
}

/// One waiter's place in [`Answers`]; dropping it (on every way out of [`Answers::wait`],
/// a dropped request future included) gives the place back.
struct Registration<'a> {
    answers: &'a Answers,
    answer_id: Uuid,
    token: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut guard = self.answers.lock();
        let w = &mut *guard;
        let Some(senders) = w.by_id.get_mut(&self.answer_id) else { return };
        if let Some(i) = senders.iter().position(|(t, _)| *t == self.token) {
            senders.swap_remove(i);
            w.count -= 1;
        }
        if senders.is_empty() {
            w.by_id.remove(&self.answer_id);
        }
    }
}

impl Answers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many requests wait for an answer now.
    pub fn waiting(&self) -> usize {
        self.lock().count
    }

    /// Waits up to `timeout` for the answer with id `answer_id` (`None`: not in time, or too
    /// many waiting already).
    pub async fn wait<S: Storage>(
        &self,
        store: &EventStore<S>,
        answer_id: Uuid,
        timeout: std::time::Duration,
    ) -> Result<Option<Answer>, event_store::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _registration = {
            let mut w = self.lock();
            if w.count >= MAX_ANSWER_WAITERS {
                return Ok(None);
            }
            w.next_token += 1;
            let token = w.next_token;
            w.by_id.entry(answer_id).or_default().push((token, tx));
            w.count += 1;
            Registration { answers: self, answer_id, token }
        };
        // Registered first, then looked up: an answer that arrives in between is not missed.
        if let Some(e) = store.find_event(answer_id)? {
            return Ok(decode_answer(&e));
        }
        Ok(tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok))
    }

    /// Hands out the answers that reach the log from now on, until `shutdown`.
    pub async fn run<S: Storage>(
        self,
        store: EventStore<S>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), event_store::Error> {
        let mut sub = store.subscribe_categories(&["answers"], store.head());
        loop {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return Ok(()) },
                next = sub.next() => {
                    let Some(e) = next else { return Ok(()) };
                    let e = e?;
                    let senders = {
                        let mut w = self.lock();
                        let senders = w.by_id.remove(&e.event_id).unwrap_or_default();
                        w.count -= senders.len();
                        senders
                    };
                    if let Some(answer) = decode_answer(&e) {
                        for (_, s) in senders {
                            let _ = s.send(answer.clone());
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::{ExpectedVersion, MemoryStorage, NewEvent, StoreConfig};
    use std::time::Duration;

    fn answered(answer_id: Uuid) -> NewEvent {
        let body = messages::CommandAnswered {
            key: Uuid::nil(),
            command: "ApiPlaceOrder".into(),
            to: "causeway://query-0".into(),
            answer: Answer::Done {},
        };
        NewEvent::json(messages::ANSWER_TYPE, serde_json::to_vec(&body).expect("json")).with_id(answer_id)
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_takes_only_its_own_place() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        let answers = Answers::default();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let runner = tokio::spawn(answers.clone().run(store.clone(), rx));
        let id = Uuid::now_v7();
        let long = Duration::from_secs(30);
        // Two requests wait for one answer; one client goes away.
        let (a, s) = (answers.clone(), store.clone());
        let stays = tokio::spawn(async move { a.wait(&s, id, long).await });
        let (a, s) = (answers.clone(), store.clone());
        let leaves = tokio::spawn(async move { a.wait(&s, id, long).await });
        until("two waiters", || answers.waiting() == 2).await;
        leaves.abort();
        let _ = leaves.await;
        assert_eq!(answers.waiting(), 1, "the aborted request gave its place back, and only its own");
        // The other one still gets the answer when it reaches the log.
        store
            .append_to(&messages::answers_stream(Uuid::nil()), ExpectedVersion::Any, vec![answered(id)])
            .await
            .expect("append");
        let got = stays.await.expect("join").expect("wait");
        assert_eq!(got, Some(Answer::Done {}));
        assert_eq!(answers.waiting(), 0);
        // Found in the log at once: nothing stays registered, nor for a waiter that timed out.
        assert_eq!(answers.wait(&store, id, long).await.expect("wait"), Some(Answer::Done {}));
        assert_eq!(
            answers.wait(&store, Uuid::now_v7(), Duration::from_millis(10)).await.expect("wait"),
            None
        );
        assert_eq!(answers.waiting(), 0);
        let _ = stop.send(true);
        let _ = runner.await;
    }
}
