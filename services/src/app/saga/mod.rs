//! The saga process manager: runs the pure saga state machine ([`aggregates::saga`]) against the
//! log.
//!
//! Inputs are `OrderPlaced` (start), `OrderCancelled` by the customer, and `CommandReplied`
//! events, plus a timer for deadlines. For each input the runner loads the saga, decides, and
//! appends in ONE atomic write the saga's new events, the commands they ask for (to
//! `<service>_commands-<order>`), and its checkpoint. Commands are then delivered from the log
//! by the services' consumers, never sent before they are recorded.
//!
//! Only in-flight sagas are kept in memory: a saga leaves the cache when it ends. Deadlines live
//! in the saga's own events (`StepRequested.deadline_ns`). The runner persists a low-water mark
//! (the position where the oldest in-flight saga started), and on start it rebuilds the in-flight
//! sagas and their deadlines from the saga streams after that mark.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aggregates::codec::DomainEvent;
use aggregates::order::{CancelReason, OrderEvent};
use aggregates::saga::{OperatorAction, RetryPolicy, Saga, SagaInput, SagaLine, SagaState, SagaStatus};
use aggregates::{Decider, OrderId};
use event_store::{time_to_nanos, AppendRequest, EventStore, ExpectedVersion, RecordedEvent, Storage};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::app::aggregate::{load_from, MAX_CONFLICT_RETRIES};
use crate::app::consumer::{Handler, Source};
use crate::app::error::{HandlerError, Poison};
use crate::app::messages::{self, derived_id, CommandReplied, REPLY_TYPE};
use crate::app::telemetry;
use crate::app::trace::{traced, TraceContext};

pub mod replay;
mod timer;

use timer::RetryBudget;
pub use timer::{
    BACKLOG_HOLD, MAX_BACKLOG_HOLD, MAX_RETRY_TOKENS, MIN_RETRIES_PER_SEC, RETRY_TOKENS_PER_SAGA,
};

/// The consumer name of the saga manager.
pub const NAME: &str = "saga-manager";
const LOW_WATER: &str = "saga-manager.low-water";
const STRIPES: usize = 64;

struct Active {
    saga: Saga,
    version: u64,
    started_at: u64,
    /// The trace context its first event recorded (that of the order that started it).
    trace: Option<TraceContext>,
}

/// The saga process manager.
pub struct SagaRunner<S: Storage> {
    store: EventStore<S>,
    policy: RetryPolicy,
    active: Mutex<HashMap<OrderId, Active>>,
    deadlines: Mutex<BTreeSet<(u64, OrderId)>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// In a distributed node: the relay that carries this saga's commands to the services.
    transport: std::sync::OnceLock<std::sync::Arc<dyn crate::app::gateway::DeliveryHealth>>,
    /// How far behind the inputs are: (when the newest input was handled, how old it was then).
    input_delay: Mutex<(Option<std::time::Instant>, Duration)>,
    /// Since when deadlines have been held for the backlog, without a break.
    held_since: Mutex<Option<std::time::Instant>>,
    /// Retries (deadlines that fire) allowed: earned by sagas started, spent by retries.
    budget: Mutex<RetryBudget>,
}

impl<S: Storage> std::fmt::Debug for SagaRunner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaRunner").field("in_flight", &self.in_flight()).finish()
    }
}

pub(super) fn now_ns() -> u64 {
    time_to_nanos(OffsetDateTime::now_utc())
}

fn key_of(order: OrderId) -> u64 {
    messages::key_hash(&order)
}

/// The span of one saga step: an input (`kind`: a log event, a deadline, an operator's action)
/// decided and its events and commands appended; `decided` names the events.
fn step_span(order: OrderId, cause: uuid::Uuid, kind: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: "spans",
        "saga.step",
        order_id = %order,
        correlation_id = %order,
        cause = %cause,
        input = kind,
        decided = tracing::field::Empty,
    )
}

impl<S: Storage> SagaRunner<S> {
    /// A runner over `store`; call [`SagaRunner::recover`] before consuming.
    pub fn new(store: EventStore<S>, policy: RetryPolicy) -> Self {
        Self {
            store,
            policy,
            active: Mutex::new(HashMap::new()),
            deadlines: Mutex::new(BTreeSet::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            transport: std::sync::OnceLock::new(),
            input_delay: Mutex::new((None, Duration::ZERO)),
            held_since: Mutex::new(None),
            budget: Mutex::new(RetryBudget {
                tokens: MAX_RETRY_TOKENS / 4.0,
                refilled: std::time::Instant::now(),
            }),
        }
    }

    /// Sagas in flight (in memory).
    pub fn in_flight(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Rebuilds in-flight sagas and their deadlines from the saga streams after the low-water mark.
    pub fn recover(&self) -> Result<usize, HandlerError> {
        let from = self.store.checkpoint(LOW_WATER)?.unwrap_or(0);
        tracing::info!(from_position = from, head = self.store.head(), "recovering in-flight sagas");
        let mut first_seen: BTreeMap<String, u64> = BTreeMap::new();
        for e in self.store.read_category("saga", from) {
            let e = e?;
            first_seen.entry(e.stream_id.clone()).or_insert(e.position);
        }
        let mut recovered = 0;
        let mut definitions: BTreeMap<u32, usize> = BTreeMap::new();
        for (stream, position) in first_seen {
            let stream = event_store::StreamId::new(stream)?;
            let (saga, version) = load_from::<S, Saga>(&self.store, &stream, Saga::default(), 0)?;
            let Some(order) = saga.order_id else { continue };
            if !matches!(saga.status, SagaStatus::Completed | SagaStatus::Compensated) {
                // Not ended (parked ones too: an operator may move them on).
                *definitions.entry(saga.definition).or_default() += 1;
            }
            if saga.is_parked() {
                continue;
            }
            let trace = self.recorded_trace(&stream)?;
            self.remember(order, saga, version, position, trace);
            recovered += 1;
        }
        let foreign: Vec<String> = definitions
            .iter()
            .filter(|(d, _)| !aggregates::saga::CARRIED.contains(d))
            .map(|(d, n)| format!("definition {d}: {n} saga(s)"))
            .collect();
        if !foreign.is_empty() {
            return Err(HandlerError::Poison(Poison::NotHere(format!(
                "sagas in flight were started under saga definitions this build does not carry ({}); it carries {:?}: \
                 run a build that carries them until they end (causeway sagas list shows them), or roll forward",
                foreign.join(", "),
                aggregates::saga::CARRIED
            ))));
        }
        Ok(recovered)
    }

    /// Reads a saga afresh from its stream (after a conflict, or an input decided before) and
    /// keeps it, with its deadline, exactly as the log has it: a saga in flight never leaves the
    /// cache while its deadline stays behind, or the low-water mark could pass it by.
    fn reload(&self, order: OrderId) -> Result<(), HandlerError> {
        let stream = messages::saga_stream(order);
        let (saga, version) = load_from::<S, Saga>(&self.store, &stream, Saga::default(), 0)?;
        let (started_at, trace) =
            match self.store.read_stream(&stream, 1, event_store::Direction::Forward).next() {
                Some(first) => {
                    let first = first?;
                    (first.position, TraceContext::of_event(&first))
                }
                None => (0, None),
            };
        if version == 0 {
            self.forget(order);
        } else {
            self.remember(order, saga, version, started_at, trace);
        }
        Ok(())
    }

    /// The trace context a saga's first event recorded.
    fn recorded_trace(&self, stream: &event_store::StreamId) -> Result<Option<TraceContext>, HandlerError> {
        Ok(match self.store.read_stream(stream, 1, event_store::Direction::Forward).next() {
            Some(first) => TraceContext::of_event(&first?),
            None => None,
        })
    }

    /// The trace context of a saga's events: the one its first event recorded, or, for a saga not
    /// started yet (or recorded before traces), `hint` (the input's).
    fn trace_of(
        &self,
        order: OrderId,
        hint: Option<TraceContext>,
    ) -> Result<Option<TraceContext>, HandlerError> {
        let cached = {
            let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            active.get(&order).map(|a| a.trace.clone())
        };
        let recorded = match cached {
            Some(t) => t,
            None => self.recorded_trace(&messages::saga_stream(order))?,
        };
        Ok(recorded.or(hint))
    }

    /// Drops a saga from the cache together with its deadline.
    fn forget(&self, order: OrderId) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = active.remove(&order).and_then(|a| a.saga.next_deadline_ns()) {
            deadlines.remove(&(old, order));
        }
    }

    fn remember(
        &self,
        order: OrderId,
        saga: Saga,
        version: u64,
        started_at: u64,
        trace: Option<TraceContext>,
    ) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = active.get(&order).and_then(|a| a.saga.next_deadline_ns()) {
            deadlines.remove(&(old, order));
        }
        if saga.is_parked() {
            // Ended or quarantined: nothing moves it on by itself, so it holds no memory and no
            // low-water mark (an input that does comes loads it from its stream).
            active.remove(&order);
            return;
        }
        if let Some(d) = saga.next_deadline_ns() {
            deadlines.insert((d, order));
        }
        active.insert(order, Active { saga, version, started_at, trace });
    }

    fn low_water(&self) -> u64 {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().map(|a| a.started_at).min().map_or(self.store.head(), |p| p.saturating_sub(1))
    }

    /// Carries out an operator's action on the saga of `order` (this node runs its saga manager):
    /// the audit record and its effects in one write. The action's id is its idempotency key: an
    /// action the saga has recorded is not carried out again (`Acted::repeated`).
    pub async fn act(&self, order: OrderId, action: &OperatorRequest) -> Result<Acted, ActError> {
        self.act_answering(order, action, None, None).await
    }

    /// [`SagaRunner::act`], with `answer` (the answer to the node that forwarded the action, made
    /// from the saga's state and version after it) and `checkpoint` appended in the same write as
    /// the action when it is carried out.
    async fn act_answering(
        &self,
        order: OrderId,
        action: &OperatorRequest,
        answer: Option<&AnswerFn<'_>>,
        checkpoint: Option<(String, u64)>,
    ) -> Result<Acted, ActError> {
        let OperatorRequest { action, action_id, ref operator, ref reason, expected_version } = *action;
        let _guard = self.stripes[(key_of(order) % STRIPES as u64) as usize].lock().await;
        let stream = messages::saga_stream(order);
        let (saga, version) = load_from::<S, Saga>(&self.store, &stream, Saga::default(), 0)?;
        if saga.order_id.is_none() {
            return Err(ActError::NotFound(order));
        }
        if !aggregates::saga::CARRIED.contains(&saga.definition) {
            return Err(ActError::NotCarried { definition: saga.definition });
        }
        if saga.has_acted(action_id) {
            // The same key again: the same action, or a client that reused its key for another.
            if let Some(recorded) = self.recorded_action(&stream, action_id)? {
                if recorded.action != action || recorded.operator != *operator || recorded.reason != *reason {
                    return Err(ActError::KeyReused { action: recorded.action, operator: recorded.operator });
                }
            }
            return Ok(Acted { state: saga.state(), version, repeated: true });
        }
        if let Some(expected) = expected_version.filter(|v| *v != version) {
            return Err(ActError::Moved { state: saga.state(), version, expected });
        }
        let input = SagaInput::Operator {
            action,
            action_id,
            operator: operator.to_owned(),
            reason: reason.to_owned(),
            now_ns: now_ns(),
            policy: self.policy,
        };
        if let Err(error) = saga.decide(input.clone()) {
            return Err(ActError::Refused { state: saga.state(), version, error });
        }
        // Decided again on the state `apply_locked` holds (the cache's, as fresh: the stripe is
        // ours), and appended with ids derived from the action's.
        let trace = self.trace_of(order, None)?;
        let span = step_span(order, action_id, "operator");
        telemetry::follow(&span, trace.as_ref());
        let appended = self
            .apply_locked(order, |_| Some(input.clone()), action_id, checkpoint, answer, trace)
            .instrument(span)
            .await?;
        let (saga, version) = load_from::<S, Saga>(&self.store, &stream, Saga::default(), 0)?;
        if appended {
            metrics::counter!("causeway_saga_operator_actions_total", "action" => action.name()).increment(1);
        }
        // Nothing appended: the log held the action already (its writes derive from its id).
        Ok(Acted { state: saga.state(), version, repeated: !appended })
    }

    /// The `OperatorActed` the saga recorded for `action_id`.
    fn recorded_action(
        &self,
        stream: &event_store::StreamId,
        action_id: uuid::Uuid,
    ) -> Result<Option<aggregates::saga::OperatorActed>, ActError> {
        use aggregates::saga::SagaEvent;
        // Newest first: an action is looked up soon after it.
        let last = self.store.stream_version(stream).map_err(HandlerError::from)?;
        for e in self.store.read_stream(stream, last, event_store::Direction::Backward) {
            let e = e.map_err(HandlerError::from)?;
            if e.event_type != "OperatorActed" {
                continue;
            }
            let decoded =
                SagaEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|error| {
                    crate::app::error::LoadError::Undecodable {
                        stream: stream.to_string(),
                        version: e.version,
                        error,
                    }
                })?;
            if let SagaEvent::OperatorActed(a) = decoded {
                if a.action_id == action_id {
                    return Ok(Some(a));
                }
            }
        }
        Ok(None)
    }

    /// Applies one input to a saga (the timer's deadlines: its span says `deadline`): load, decide,
    /// append saga events + commands (+ checkpoint).
    pub async fn apply(
        &self,
        order: OrderId,
        input: impl Fn(&Saga) -> Option<SagaInput>,
        cause: uuid::Uuid,
        checkpoint: Option<(String, u64)>,
    ) -> Result<(), HandlerError> {
        self.apply_traced(order, input, cause, checkpoint, None, "deadline").await
    }

    /// [`SagaRunner::apply`] of an input that recorded the trace context `hint` (a saga takes its
    /// first input's, and keeps it).
    async fn apply_traced(
        &self,
        order: OrderId,
        input: impl Fn(&Saga) -> Option<SagaInput>,
        cause: uuid::Uuid,
        checkpoint: Option<(String, u64)>,
        hint: Option<TraceContext>,
        kind: &'static str,
    ) -> Result<(), HandlerError> {
        let _guard = self.stripes[(key_of(order) % STRIPES as u64) as usize].lock().await;
        let trace = self.trace_of(order, hint)?;
        let span = step_span(order, cause, kind);
        telemetry::follow(&span, trace.as_ref());
        self.apply_locked(order, input, cause, checkpoint, None, trace).instrument(span).await.map(|_| ())
    }

    /// [`SagaRunner::apply`], its stripe held; `answer` (made from the saga's state and version
    /// after the decision) is appended in the same write when the decision appends anything.
    /// `trace` is the saga's context ([`SagaRunner::trace_of`]), which its events record.
    async fn apply_locked(
        &self,
        order: OrderId,
        input: impl Fn(&Saga) -> Option<SagaInput>,
        cause: uuid::Uuid,
        checkpoint: Option<(String, u64)>,
        answer: Option<&AnswerFn<'_>>,
        trace: Option<TraceContext>,
    ) -> Result<bool, HandlerError> {
        let stream = messages::saga_stream(order);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let cached = {
                let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
                active.get(&order).map(|a| (a.saga.clone(), a.version, a.started_at))
            };
            let (saga, version, started_at) = match cached {
                Some(c) => c,
                None => {
                    let (s, v) = load_from::<S, Saga>(&self.store, &stream, Saga::default(), 0)?;
                    (s, v, 0)
                }
            };
            if saga.status != SagaStatus::NotStarted && !aggregates::saga::CARRIED.contains(&saga.definition)
            {
                // Started by a build whose definition this one does not carry: not decided here.
                return Err(HandlerError::Poison(Poison::NotHere(format!(
                    "saga {order} runs definition {}, which this build does not carry ({:?})",
                    saga.definition,
                    aggregates::saga::CARRIED
                ))));
            }
            let Some(input) = input(&saga) else { return Ok(false) };
            let events =
                saga.decide(input).map_err(|e| HandlerError::Poison(Poison::Refused(e.to_string())))?;
            if events.is_empty() {
                return Ok(false);
            }
            let span = tracing::Span::current();
            if !span.is_disabled() {
                let names: Vec<&str> = events.iter().map(DomainEvent::event_type).collect();
                span.record("decided", names.join(",").as_str());
            }
            let mut state = saga.clone();
            let mut saga_events = Vec::with_capacity(events.len());
            // Commands by stream: one stream may carry several (an order's per-SKU commands all go
            // to their SKUs' streams, but two sends to one stream in one decision are one write).
            let mut commands: Vec<(event_store::StreamId, Vec<event_store::NewEvent>)> = Vec::new();
            for (i, ev) in events.iter().enumerate() {
                let id = derived_id(cause, &format!("saga/{version}"), i);
                saga_events.push(traced(messages::domain_event(ev, id, order.0, cause), trace.as_ref()));
                state = state.evolve(ev);
                if let Some((command_id, command)) = state.command_of(ev) {
                    let send_id = derived_id(id, "send", 0);
                    let stream = messages::command_stream(&command);
                    let event =
                        traced(messages::command_event(command_id, send_id, id, &command), trace.as_ref());
                    match commands.iter_mut().find(|(s, _)| *s == stream) {
                        Some((_, events)) => events.push(event),
                        None => commands.push((stream, vec![event])),
                    }
                }
            }
            let version_after = version + saga_events.len() as u64;
            let mut request =
                AppendRequest::single(stream.clone(), ExpectedVersion::Exact(version), saga_events);
            for (stream, cmds) in commands {
                request = request.and(stream, ExpectedVersion::Any, cmds);
            }
            if let Some(answer) = answer {
                let (answers, event) = answer(&state, version_after);
                request = request.and(answers, ExpectedVersion::Any, vec![event]);
            }
            if let Some((name, value)) = &checkpoint {
                request = request.with_checkpoint(name.clone(), *value);
            }
            match self.store.append(request).await {
                Ok(r) => {
                    let started_at = if started_at == 0 { r.first_position } else { started_at };
                    record_outcome(&state, &events);
                    self.remember(order, state, r.streams[0].last_version, started_at, trace.clone());
                    return Ok(true);
                }
                Err(event_store::Error::Conflict { .. }) => {
                    // Someone else moved the saga on: decide again on what the log holds.
                    self.reload(order)?;
                    continue;
                }
                Err(event_store::Error::EventIdReused { .. }) => {
                    // Decided before (a redelivered input): carry on from what the log holds.
                    self.reload(order)?;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HandlerError::conflicts(format!("saga {order}"), MAX_CONFLICT_RETRIES))
    }
}

/// Makes the answer to a forwarded action from the saga's state and version after it.
type AnswerFn<'a> = dyn Fn(&Saga, u64) -> (event_store::StreamId, event_store::NewEvent) + Send + Sync + 'a;

/// An operator's action on one saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRequest {
    /// What to do.
    pub action: OperatorAction,
    /// Its idempotency key.
    pub action_id: uuid::Uuid,
    /// Who (as the request names them: whoever holds the admin token may name anyone).
    pub operator: String,
    /// Why.
    pub reason: String,
    /// Carry it out only if the saga's stream is at this version (what the operator looked at).
    pub expected_version: Option<u64>,
}

/// What an operator's action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Acted {
    /// The saga's state after it.
    pub state: SagaState,
    /// The saga stream's version after it.
    pub version: u64,
    /// The action had been carried out before (same action id): nothing was done now.
    pub repeated: bool,
}

/// Why an operator's action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// No saga runs for that order.
    #[error("no saga for order {0}")]
    NotFound(OrderId),
    /// This node does not run the saga manager (the message names where the saga is owned).
    #[error("{0}")]
    NotOwner(String),
    /// The saga's state does not allow it.
    #[error("{error}")]
    Refused {
        /// The saga's state.
        state: SagaState,
        /// The saga stream's version.
        version: u64,
        /// Why.
        error: aggregates::saga::SagaError,
    },
    /// The action id (from the request's `Idempotency-Key` and the action) was used with another
    /// operator or reason.
    #[error("the Idempotency-Key was used before for {} by {operator} on this saga, with another operator or reason", action.name())]
    KeyReused {
        /// The action recorded under that id.
        action: OperatorAction,
        /// Its operator.
        operator: String,
    },
    /// The saga runs a definition this build does not carry.
    #[error("the saga runs definition {definition}, which this build does not carry ({:?}): act on a node that runs one that does", aggregates::saga::CARRIED)]
    NotCarried {
        /// Its definition.
        definition: u32,
    },
    /// The saga moved on since the version the operator saw.
    #[error("the saga is at version {version} ({}), not {expected}: look at it again", state.name())]
    Moved {
        /// The saga's state.
        state: SagaState,
        /// The saga stream's version.
        version: u64,
        /// The version the request expected.
        expected: u64,
    },
    /// Loading or appending failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// The saga's stream cannot be read.
    #[error(transparent)]
    Load(#[from] crate::app::error::LoadError),
}

impl<S: Storage> SagaRunner<S> {
    /// Carries out an operator's action a query node forwarded (this pod owns the order's
    /// partition) and answers it on `answers-<action id>`, addressed to the forwarding node. An
    /// action carried out is answered in the same write as its effects and the consumer's
    /// checkpoint; a refusal in one write with the checkpoint. A forwarded action answered before
    /// (a redelivery, a replay after a restore) is not decided again, so a refused action is never
    /// carried out later by a second reading of it.
    async fn handle_forwarded_action(
        &self,
        e: &RecordedEvent,
        checkpoint: Option<(String, u64)>,
    ) -> Result<(), HandlerError> {
        use crate::app::messages::Answer;
        let Some(forwarded) = messages::SagaAction::decode(e).map_err(HandlerError::bad_message)? else {
            return Ok(());
        };
        let source =
            e.metadata.get(messages::SOURCE_KEY).cloned().unwrap_or_else(|| "causeway://local".to_owned());
        let answer_id = messages::answer_id(e.event_id, &source);
        if self.store.find_event(answer_id)?.is_some() {
            return Ok(());
        }
        let trace = TraceContext::of_event(e);
        let answers = messages::answers_stream(forwarded.action_id);
        let answer_with = |answer: Answer| {
            traced(messages::answer_event(e, forwarded.action_id, &source, answer), trace.as_ref())
        };
        let Some(action) = OperatorAction::from_name(&forwarded.action) else {
            // A newer node's action, say: answered, so that its sender does not wait for ever.
            let reason = format!("{:?} is not an action this saga pod knows", forwarded.action);
            return self
                .answer(answers, answer_with(Answer::Invalid { reason }), answer_id, checkpoint)
                .await;
        };
        let request = OperatorRequest {
            action,
            action_id: forwarded.action_id,
            operator: forwarded.operator.clone(),
            reason: forwarded.reason.clone(),
            expected_version: forwarded.expected_version,
        };
        let acted_answer = |saga: &Saga, version: u64| {
            let answer = Answer::Acted { status: saga.state().name().to_owned(), version, repeated: false };
            (answers.clone(), answer_with(answer))
        };
        let answer = match self
            .act_answering(forwarded.order_id, &request, Some(&acted_answer), checkpoint.clone())
            .await
        {
            Ok(Acted { state, version, repeated }) => {
                if self.store.find_event(answer_id)?.is_some() {
                    // Answered with the action's own write.
                    return Ok(());
                }
                Answer::Acted { status: state.name().to_owned(), version, repeated }
            }
            Err(error) => match answer_of(&error) {
                Some(answer) => answer,
                // The store could not be read or written: the consumer tries again.
                None => {
                    return Err(match error {
                        ActError::Handler(h) => h,
                        ActError::Load(l) => l.into(),
                        other => HandlerError::Poison(crate::app::error::Poison::NotHere(other.to_string())),
                    })
                }
            },
        };
        self.answer(answers, answer_with(answer), answer_id, checkpoint).await
    }

    /// Appends the answer to a forwarded action with the consumer's checkpoint.
    async fn answer(
        &self,
        answers: event_store::StreamId,
        answer: event_store::NewEvent,
        answer_id: uuid::Uuid,
        checkpoint: Option<(String, u64)>,
    ) -> Result<(), HandlerError> {
        let mut request = AppendRequest::single(answers, ExpectedVersion::Any, vec![answer]);
        if let Some((name, value)) = checkpoint {
            request = request.with_checkpoint(name, value);
        }
        match self.store.append(request).await {
            Ok(_) => Ok(()),
            // Answered before (a redelivery of an answered action).
            Err(event_store::Error::EventIdReused { .. }) if self.store.find_event(answer_id)?.is_some() => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// How a refused action is answered to the node that forwarded it (`None`: not an answer, a
/// failure to try again).
fn answer_of(error: &ActError) -> Option<crate::app::messages::Answer> {
    use crate::app::error::Poison;
    use crate::app::messages::Answer;
    let reason = error.to_string();
    Some(match error {
        ActError::NotFound(order) => Answer::NotFound {
            reason: format!("no saga for order {order} on the saga pod that owns its partition"),
        },
        ActError::Refused { error: aggregates::saga::SagaError::ReasonRequired { .. }, .. } => {
            Answer::Invalid { reason }
        }
        ActError::Refused { state, version, .. } | ActError::Moved { state, version, .. } => {
            Answer::Conflict { reason, status: Some(state.name().to_owned()), version: Some(*version) }
        }
        ActError::Handler(HandlerError::Poison(Poison::Refused(_)))
        | ActError::KeyReused { .. }
        | ActError::NotCarried { .. } => Answer::Conflict { reason, status: None, version: None },
        ActError::NotOwner(_) | ActError::Handler(_) | ActError::Load(_) => return None,
    })
}

fn record_outcome(state: &Saga, events: &[aggregates::saga::SagaEvent]) {
    let quarantined = events.iter().any(|e| matches!(e, aggregates::saga::SagaEvent::SagaQuarantined(_)));
    let outcome = match state.status {
        SagaStatus::Completed => "completed",
        SagaStatus::Compensated => "compensated",
        SagaStatus::Failed => "failed",
        _ if quarantined => "quarantined",
        _ => return,
    };
    metrics::counter!("causeway_saga_outcomes_total", "outcome" => outcome).increment(1);
}

impl<S: Storage> Handler for SagaRunner<S> {
    fn name(&self) -> &str {
        NAME
    }

    fn source(&self) -> Source {
        // Only order events and replies are inputs: other records are skipped by their stream
        // id without being decoded.
        Source::Categories(vec!["order".into(), "replies".into(), messages::SAGA_COMMANDS.into()])
    }

    fn accepts(&self, e: &RecordedEvent) -> bool {
        match e.category() {
            "order" => e.event_type == "OrderPlaced" || e.event_type == "OrderCancelled",
            "replies" => e.event_type == REPLY_TYPE,
            messages::SAGA_COMMANDS => e.event_type == messages::SAGA_ACTION_TYPE,
            _ => false,
        }
    }

    fn partition_key(&self, e: &RecordedEvent) -> u64 {
        messages::key_hash(&e.correlation_id)
    }

    async fn handle(&self, e: &RecordedEvent, checkpoint: (String, u64)) -> Result<(), HandlerError> {
        let policy = self.policy;
        let now = now_ns();
        let checkpoint = Some(checkpoint);
        if e.category() == messages::SAGA_COMMANDS {
            // Not an input of the sagas' own flow: it says nothing of how far behind they are.
            return self.handle_forwarded_action(e, checkpoint).await;
        }
        self.saw_input(e);
        let Some((order, input)) = input_of(e, now, policy)? else { return Ok(()) };
        if matches!(input, SagaInput::Start { .. }) {
            self.budget.lock().unwrap_or_else(|p| p.into_inner()).earn(RETRY_TOKENS_PER_SAGA);
        }
        let input = move |_: &Saga| Some(input.clone());
        self.apply_traced(order, input, e.event_id, checkpoint, TraceContext::of_event(e), "event").await
    }
}

/// What a log event is to the saga of its order: `OrderPlaced` starts it, a customer's
/// `OrderCancelled` cancels it, a `CommandReplied` answers one of its commands (decided at
/// `now_ns` under `policy`). `None`: not an input of the saga (another order event).
pub fn input_of(
    e: &RecordedEvent,
    now_ns: u64,
    policy: RetryPolicy,
) -> Result<Option<(OrderId, SagaInput)>, HandlerError> {
    if e.category() == "replies" {
        let reply: CommandReplied = serde_json::from_slice(&e.payload)
            .map_err(|err| HandlerError::bad_message(format!("bad reply: {err}")))?;
        let input = SagaInput::Reply {
            command_id: reply.command_id,
            outcome: reply.outcome,
            detail: reply.detail,
            now_ns,
            policy,
        };
        return Ok(Some((reply.order_id, input)));
    }
    if e.category() != "order" {
        return Ok(None);
    }
    let event = OrderEvent::decode(&e.event_type, e.schema_version, &e.payload)
        .map_err(|err| HandlerError::bad_message(err.to_string()))?;
    Ok(match event {
        OrderEvent::OrderPlaced(p) => {
            let lines: Vec<SagaLine> = p
                .items
                .iter()
                .map(|l| SagaLine { sku: l.sku.clone(), quantity: u64::from(l.quantity) })
                .collect();
            let input = SagaInput::Start {
                order_id: p.order_id,
                lines,
                amount: p.total,
                address: p.shipping_address,
                now_ns,
                policy,
            };
            Some((p.order_id, input))
        }
        OrderEvent::OrderCancelled(c) if c.reason == CancelReason::CustomerRequest => {
            Some((c.order_id, SagaInput::CustomerCancelled { now_ns, policy }))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aggregates::saga::{Outcome, SagaCommand, SagaEvent, Step, StepSucceeded};
    use aggregates::Sku;
    use event_store::{MemoryStorage, StoreConfig};

    fn runner() -> SagaRunner<MemoryStorage> {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        SagaRunner::new(store, RetryPolicy::default())
    }

    fn start(order: OrderId, now_ns: u64) -> impl Fn(&Saga) -> Option<SagaInput> {
        move |_| {
            Some(SagaInput::Start {
                order_id: order,
                lines: vec![SagaLine { sku: Sku::from("A"), quantity: 1 }],
                amount: aggregates::Money(1),
                address: None,
                now_ns,
                policy: RetryPolicy::default(),
            })
        }
    }

    /// The reply that SKU A of the order's stock is reserved.
    fn stock_reserved(order: OrderId) -> impl Fn(&Saga) -> Option<SagaInput> {
        move |_| {
            Some(SagaInput::Reply {
                command_id: aggregates::saga::part_command_id(
                    order,
                    "step/reserve_stock",
                    Some(&Sku::from("A")),
                ),
                outcome: Outcome::Succeeded,
                detail: None,
                now_ns: 2_000,
                policy: RetryPolicy::default(),
            })
        }
    }

    /// The runner's view of a saga: cached version, and its deadline entries.
    fn tracked(r: &SagaRunner<MemoryStorage>, order: OrderId) -> (Option<u64>, Vec<u64>) {
        let version = r.active.lock().expect("lock").get(&order).map(|a| a.version);
        let deadlines =
            r.deadlines.lock().expect("lock").iter().filter(|(_, o)| *o == order).map(|(d, _)| *d).collect();
        (version, deadlines)
    }

    fn the_log_says(r: &SagaRunner<MemoryStorage>, order: OrderId) -> (u64, Option<u64>) {
        let (saga, version) =
            load_from::<MemoryStorage, Saga>(&r.store, &messages::saga_stream(order), Saga::default(), 0)
                .expect("load");
        (version, saga.next_deadline_ns())
    }

    #[tokio::test]
    async fn a_conflict_leaves_the_saga_cached_as_the_log_has_it_with_one_deadline() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        // Another writer moves the saga on behind the runner's back: its cache is stale.
        let part = SagaEvent::StepSucceeded(StepSucceeded {
            step: Step::ReserveStock,
            detail: None,
            sku: Some(Sku::from("A")),
        });
        let e = messages::domain_event(&part, uuid::Uuid::now_v7(), order.0, order.0);
        r.store
            .append_to(&messages::saga_stream(order), ExpectedVersion::Exact(2), vec![e])
            .await
            .expect("append");
        // An input that decides nothing on the fresh state: the conflict, then a reload.
        r.apply(order, stock_reserved(order), uuid::Uuid::now_v7(), None).await.expect("apply");
        let (version, deadline) = the_log_says(&r, order);
        assert_eq!(tracked(&r, order), (Some(version), deadline.into_iter().collect()));
        assert!(r.low_water() < r.store.head(), "the low-water mark stays before the saga");
    }

    #[tokio::test]
    async fn an_input_decided_before_leaves_the_saga_cached_as_the_log_has_it() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        let cause = uuid::Uuid::now_v7();
        r.apply(order, start(order, 1_000), cause, None).await.expect("start");
        let (version, deadline) = the_log_says(&r, order);
        // The cache is behind (it lost the saga's events) and the same input comes again, read
        // a moment later: the same event ids with other deadlines, which the store refuses as
        // reused ids.
        r.forget(order);
        r.remember(order, Saga::default(), 0, 1, None);
        r.apply(order, start(order, 5_000), cause, None).await.expect("redelivered");
        assert_eq!(tracked(&r, order), (Some(version), deadline.into_iter().collect()));
        assert!(r.low_water() < r.store.head());
    }

    fn reply(
        order: OrderId,
        name: &str,
        sku: Option<&Sku>,
        now_ns: u64,
    ) -> impl Fn(&Saga) -> Option<SagaInput> {
        let command_id = aggregates::saga::part_command_id(order, name, sku);
        move |_| {
            Some(SagaInput::Reply {
                command_id,
                outcome: Outcome::Succeeded,
                detail: None,
                now_ns,
                policy: RetryPolicy::default(),
            })
        }
    }

    #[tokio::test]
    async fn a_parked_saga_leaves_memory_and_a_late_reply_brings_it_back_with_its_deadline() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        let a = Sku::from("A");
        r.apply(order, reply(order, "step/reserve_stock", Some(&a), 2_000), uuid::Uuid::now_v7(), None)
            .await
            .expect("reserved");
        // The fraud check (the step after the stock) gets no reply: every tick past its deadline
        // sends it again, until the attempts run out and the saga is quarantined.
        let mut now = 1_000_000_000_000_000_000u64;
        for _ in 0..RetryPolicy::default().max_attempts {
            let tick = move |_: &Saga| {
                Some(SagaInput::Tick { now_ns: now, jitter: 0.0, policy: RetryPolicy::default() })
            };
            r.apply(order, tick, uuid::Uuid::now_v7(), None).await.expect("tick");
            now += 1_000_000_000_000;
        }
        let (saga, _) =
            load_from::<MemoryStorage, Saga>(&r.store, &messages::saga_stream(order), Saga::default(), 0)
                .expect("load");
        assert_eq!(saga.state(), SagaState::Quarantined, "{saga:?}");
        assert_eq!(tracked(&r, order), (None, vec![]), "parked: not in memory, no deadline");
        assert_eq!(r.low_water(), r.store.head(), "a parked saga holds no low-water mark");
        // A late reply to the check takes it out of quarantine: cached again, with the next
        // step's deadline, exactly as the log has it.
        r.apply(order, reply(order, "step/check_fraud", None, now), uuid::Uuid::now_v7(), None)
            .await
            .expect("late reply");
        let (version, deadline) = the_log_says(&r, order);
        assert!(deadline.is_some());
        assert_eq!(tracked(&r, order), (Some(version), deadline.into_iter().collect()));
        assert!(r.low_water() < r.store.head());
    }

    #[tokio::test]
    async fn deadlines_wait_while_the_inputs_are_behind_and_while_the_retry_budget_is_spent() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        // Started "in 1970": its first deadline is long due.
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        let before = the_log_says(&r, order).0;
        // The manager handles an input that waited 5 s: it is behind, so nothing fires.
        let mut old = r.store.read_event(1).expect("read").expect("present");
        old.recorded_at_ns = now_ns() - 5_000_000_000;
        r.saw_input(&old);
        assert!(r.backlogged());
        assert_eq!(r.tick().await, 0);
        assert_eq!(the_log_says(&r, order).0, before, "held: no retry was sent");
        // Caught up (an input that did not wait): deadlines fire again, but not past the budget.
        let fresh = r.store.read_event(1).expect("read").expect("present");
        let mut fresh = fresh;
        fresh.recorded_at_ns = now_ns();
        r.saw_input(&fresh);
        assert!(!r.backlogged());
        // (Refilled "in the future": no token accrues while the test runs, however slow the box.)
        let later = std::time::Instant::now() + Duration::from_secs(3600);
        *r.budget.lock().expect("lock") = RetryBudget { tokens: 0.0, refilled: later };
        assert_eq!(r.tick().await, 0, "no budget: the retry waits");
        assert_eq!(the_log_says(&r, order).0, before);
        r.budget.lock().expect("lock").tokens = RETRY_TOKENS_PER_SAGA;
        assert_eq!(r.tick().await, 1);
        assert!(the_log_says(&r, order).0 > before, "the retry was sent");
    }

    /// Appends an operator's action as the query node `query` forwards it (as the Kafka consumer
    /// hands it over: the forwarding node's source in the metadata) and reads it back.
    async fn forwarded_by(
        r: &SagaRunner<MemoryStorage>,
        action: &messages::SagaAction,
        query: &str,
    ) -> RecordedEvent {
        let event = action.to_event(None).with_metadata(messages::SOURCE_KEY, query);
        let stream = messages::saga_commands_stream(action.order_id);
        r.store.append_to(&stream, ExpectedVersion::Any, vec![event]).await.expect("append");
        let version = r.store.stream_version(&stream).expect("version");
        r.store
            .read_stream(&stream, version, event_store::Direction::Forward)
            .next()
            .expect("one")
            .expect("read")
    }

    async fn forwarded(r: &SagaRunner<MemoryStorage>, action: &messages::SagaAction) -> RecordedEvent {
        forwarded_by(r, action, "causeway://query-0").await
    }

    fn answer_to(r: &SagaRunner<MemoryStorage>, e: &RecordedEvent) -> messages::CommandAnswered {
        let id = messages::answer_id(e.event_id, &e.metadata[messages::SOURCE_KEY]);
        let stored = r.store.find_event(id).expect("find").expect("an answer");
        serde_json::from_slice::<messages::CommandAnswered>(&stored.payload).expect("answer")
    }

    fn acted_events(r: &SagaRunner<MemoryStorage>, order: OrderId) -> usize {
        r.store
            .read_stream(&messages::saga_stream(order), 1, event_store::Direction::Forward)
            .filter(|e| e.as_ref().is_ok_and(|e| e.event_type == "OperatorActed"))
            .count()
    }

    fn an_action(name: &str, order_id: OrderId, expected_version: Option<u64>) -> messages::SagaAction {
        messages::SagaAction {
            order_id,
            action: name.into(),
            action_id: uuid::Uuid::now_v7(),
            operator: "ops".into(),
            reason: "the customer called".into(),
            expected_version,
        }
    }

    /// Moves the saga on: its stock is reserved, the payment is requested (two events).
    async fn move_on(r: &SagaRunner<MemoryStorage>, order: OrderId) {
        r.apply(order, stock_reserved(order), uuid::Uuid::now_v7(), None).await.expect("reply");
    }

    #[tokio::test]
    async fn a_forwarded_action_is_carried_out_once_and_answered_in_its_own_write() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        let version = the_log_says(&r, order).0;
        let action = an_action("compensate", order, Some(version));
        let e = forwarded(&r, &action).await;
        assert!(r.accepts(&e));
        r.handle(&e, (NAME.into(), 7)).await.expect("handle");
        let after = the_log_says(&r, order).0;
        let answer = answer_to(&r, &e);
        assert_eq!(
            answer.answer,
            messages::Answer::Acted { status: "compensating".into(), version: after, repeated: false }
        );
        assert_eq!(answer.to, "causeway://query-0");
        // The answer follows the action's events (it is written with them).
        let answered = r
            .store
            .find_event(messages::answer_id(e.event_id, "causeway://query-0"))
            .expect("find")
            .expect("answer");
        let acted = r
            .store
            .read_stream(&messages::saga_stream(order), version + 1, event_store::Direction::Forward)
            .next()
            .expect("the audit record")
            .expect("read");
        assert_eq!(acted.event_type, "OperatorActed");
        assert!(answered.position > acted.position && answered.position <= r.store.head());
        assert_eq!(r.store.checkpoint(NAME).expect("checkpoint"), Some(7));
        // Delivered again (a crash before the checkpoint, a rebalance, a restore): nothing more.
        r.handle(&e, (NAME.into(), 7)).await.expect("again");
        assert_eq!(acted_events(&r, order), 1);
        assert_eq!(the_log_says(&r, order).0, after);
        // The same request through another query node: done before, and said so to that node.
        let other = forwarded_by(&r, &action, "causeway://query-1").await;
        r.handle(&other, (NAME.into(), 8)).await.expect("handle");
        let answer = answer_to(&r, &other);
        assert_eq!(
            answer.answer,
            messages::Answer::Acted { status: "compensating".into(), version: after, repeated: true }
        );
        assert_eq!(answer.to, "causeway://query-1");
        // The same key for another request: refused, on any node.
        let reused = messages::SagaAction { operator: "someone-else".into(), ..action.clone() };
        let e = forwarded_by(&r, &reused, "causeway://query-1").await;
        r.handle(&e, (NAME.into(), 9)).await.expect("handle");
        assert!(
            matches!(answer_to(&r, &e).answer, messages::Answer::Conflict { reason, .. } if reason.contains("Idempotency-Key"))
        );
        assert_eq!(acted_events(&r, order), 1);
    }

    #[tokio::test]
    async fn an_action_carried_out_before_it_was_answered_is_answered_as_a_repeat() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        let action = an_action("compensate", order, None);
        // Carried out (the answer's write lost, as by a crash between two writes)...
        let request = OperatorRequest {
            action: OperatorAction::Compensate,
            action_id: action.action_id,
            operator: action.operator.clone(),
            reason: action.reason.clone(),
            expected_version: None,
        };
        r.act(order, &request).await.expect("act");
        // ... then the forwarded action is read: answered, not carried out again.
        let e = forwarded(&r, &action).await;
        r.handle(&e, (NAME.into(), 1)).await.expect("handle");
        assert!(matches!(answer_to(&r, &e).answer, messages::Answer::Acted { repeated: true, .. }));
        assert_eq!(acted_events(&r, order), 1);
    }

    #[tokio::test]
    async fn a_forwarded_action_that_cannot_be_carried_out_is_answered_with_why_and_never_later() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        r.apply(order, start(order, 1_000), uuid::Uuid::now_v7(), None).await.expect("start");
        let version = the_log_says(&r, order).0;
        // A version the saga has not reached: refused with where the saga is.
        let early = forwarded(&r, &an_action("compensate", order, Some(version + 2))).await;
        r.handle(&early, (NAME.into(), 1)).await.expect("handle");
        assert!(matches!(
            answer_to(&r, &early).answer,
            messages::Answer::Conflict { status: Some(s), version: Some(v), .. } if s == "running" && v == version
        ));
        // The saga reaches that version; the refused action is read again (a redelivery, a replay
        // after a restore): it stays refused.
        move_on(&r, order).await;
        assert_eq!(the_log_says(&r, order).0, version + 2);
        r.handle(&early, (NAME.into(), 1)).await.expect("again");
        assert_eq!(acted_events(&r, order), 0, "a refused action was carried out later");
        // Not allowed in its state (a running saga cannot be resumed).
        let e = forwarded(&r, &an_action("resume", order, None)).await;
        r.handle(&e, (NAME.into(), 2)).await.expect("handle");
        assert!(
            matches!(answer_to(&r, &e).answer, messages::Answer::Conflict { status: Some(s), .. } if s == "running")
        );
        // No such saga.
        let e = forwarded(&r, &an_action("retry", OrderId(uuid::Uuid::now_v7()), None)).await;
        r.handle(&e, (NAME.into(), 3)).await.expect("handle");
        assert!(matches!(answer_to(&r, &e).answer, messages::Answer::NotFound { .. }));
        // A compensation marked done without a reason.
        let e = forwarded(
            &r,
            &messages::SagaAction {
                reason: String::new(),
                ..an_action("mark-compensation-done", order, Some(version + 2))
            },
        )
        .await;
        r.handle(&e, (NAME.into(), 4)).await.expect("handle");
        assert!(
            matches!(answer_to(&r, &e).answer, messages::Answer::Invalid { .. }),
            "{:?}",
            answer_to(&r, &e)
        );
        assert_eq!(acted_events(&r, order), 0);
        assert_eq!(the_log_says(&r, order).0, version + 2, "nothing was done");
        // An action this pod does not know: answered as invalid. Not readable, or on another
        // order's stream: a poison message (dead-lettered), not an answer.
        let e = forwarded(&r, &an_action("reboot", order, None)).await;
        r.handle(&e, (NAME.into(), 5)).await.expect("answered");
        assert!(
            matches!(answer_to(&r, &e).answer, messages::Answer::Invalid { reason } if reason.contains("reboot"))
        );
        let valid = forwarded(&r, &an_action("compensate", order, None)).await;
        let mut bad = valid.clone();
        bad.payload = b"{".to_vec();
        assert!(matches!(r.handle(&bad, (NAME.into(), 5)).await, Err(HandlerError::Poison(_))));
        let mut elsewhere = valid;
        elsewhere.stream_id = messages::saga_commands_stream(OrderId(uuid::Uuid::now_v7())).to_string();
        assert!(matches!(r.handle(&elsewhere, (NAME.into(), 5)).await, Err(HandlerError::Poison(_))));
        assert_eq!(acted_events(&r, order), 0);
    }

    #[tokio::test]
    async fn a_saga_in_flight_under_a_definition_this_build_does_not_carry_stops_the_start() {
        let r = runner();
        let order = OrderId(uuid::Uuid::now_v7());
        let started = SagaEvent::SagaStarted(aggregates::saga::SagaStarted {
            order_id: order,
            lines: vec![SagaLine { sku: Sku::from("A"), quantity: 1 }],
            amount: aggregates::Money(1),
            address: None,
            definition: 99,
            policy: None,
        });
        let e = messages::domain_event(&started, uuid::Uuid::now_v7(), order.0, order.0);
        r.store
            .append_to(&messages::saga_stream(order), ExpectedVersion::NoStream, vec![e])
            .await
            .expect("append");
        let err = SagaRunner::new(r.store.clone(), RetryPolicy::default()).recover().expect_err("refused");
        assert!(err.to_string().contains("definition 99: 1 saga"), "{err}");
        // Ended, it holds nothing back.
        let ended = SagaEvent::SagaCompensated(aggregates::saga::SagaCompensated {
            order_id: order,
            reason: "x".into(),
        });
        let e = messages::domain_event(&ended, uuid::Uuid::now_v7(), order.0, order.0);
        r.store
            .append_to(&messages::saga_stream(order), ExpectedVersion::Exact(1), vec![e])
            .await
            .expect("append");
        SagaRunner::new(r.store.clone(), RetryPolicy::default()).recover().expect("starts");
    }

    /// The reviewer's case: a reply R, the same reply again R' (a service answering a
    /// redelivery), then a deadline decided before the manager took R (the manager lagged). R'
    /// decided nothing; the replay must try it on the states after R's decision, not before the
    /// deadline's, where it would still decide the step done.
    #[tokio::test]
    async fn an_input_that_decided_nothing_is_tried_where_it_was_taken_not_before_a_deadline() {
        use crate::app::consumer::Handler;
        use aggregates::order::{LineItem, OrderCommand};
        let policy = RetryPolicy { step_timeout_ms: 1, ..RetryPolicy::default() };
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        let r = SagaRunner::new(store, policy);
        let (_, placed) = crate::app::commands::place_order(
            &r.store,
            uuid::Uuid::now_v7(),
            OrderCommand::Place {
                order_id: OrderId(uuid::Uuid::now_v7()),
                customer_id: aggregates::CustomerId("c".into()),
                items: vec![LineItem { sku: Sku::from("A"), quantity: 1, unit_price: aggregates::Money(5) }],
                currency: aggregates::Currency::from("EUR"),
                shipping_address: None,
            },
            None,
        )
        .await
        .expect("place");
        let read = |p: u64| r.store.read_all(p).next().expect("an event").expect("read");
        let order_placed = read(placed.first_position);
        let order = OrderId(order_placed.correlation_id);
        r.handle(&order_placed, ("consumer.saga-manager".into(), 0)).await.expect("start");
        let sku = Sku::from("A");
        let command_id = aggregates::saga::part_command_id(order, "step/reserve_stock", Some(&sku));
        let command =
            SagaCommand::ReserveStock { order_id: order, lines: vec![SagaLine { sku, quantity: 1 }] };
        let command_event = r
            .store
            .read_stream(&messages::command_stream(&command), 1, event_store::Direction::Forward)
            .map(|e| e.expect("read"))
            .find(|e| e.correlation_id == order.0)
            .expect("the reserve command");
        let reply =
            messages::reply_event(command_id, &command, Outcome::Succeeded, None, command_event.event_id);
        let replies = messages::replies_stream(order);
        let p1 =
            r.store.append_to(&replies, ExpectedVersion::Any, vec![reply]).await.expect("R").first_position;
        let first = read(p1);
        let again = messages::resent_reply(&first, &command_event);
        r.store.append_to(&replies, ExpectedVersion::Any, vec![again]).await.expect("R'");
        // The deadline (a millisecond), decided before R was taken: the reservation is sent again.
        let (_, deadline) = the_log_says(&r, order);
        let deadline = deadline.expect("a deadline");
        while now_ns() <= deadline {
            tokio::task::yield_now().await;
        }
        let tick = move |_: &Saga| Some(SagaInput::Tick { now_ns: now_ns(), jitter: 0.0, policy });
        r.apply(order, tick, uuid::Uuid::now_v7(), None).await.expect("tick");
        assert_eq!(r.store.stream_version(&messages::saga_stream(order)).expect("version"), 3, "sent again");
        // Then R: the step is done and the next one requested. R' decides nothing after it.
        r.handle(&first, ("consumer.saga-manager".into(), 0)).await.expect("R");
        r.store.save_checkpoint("consumer.saga-manager", r.store.head()).await.expect("checkpoint");
        let replayed = replay::replay(&r.store, policy, 1).expect("replay");
        assert!(replayed.divergences.is_empty(), "{:#?}", replayed.divergences);
        assert_eq!((replayed.decisions, replayed.idle_inputs), (3, 1));
    }
}
