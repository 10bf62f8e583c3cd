//! Replaying recorded sagas against the current decider: for each saga, every recorded decision
//! (the saga events one input caused, in one write) is decided again from the same input on the
//! state the events before it fold to, and the two are compared. A difference is a divergence:
//! the current code would decide otherwise for a saga recorded by an earlier build, so a change
//! that shows divergences on a log of running sagas breaks them (`causeway verify` runs this; a
//! test runs it on a fixture log the current release wrote).
//!
//! The input of a decision is found from its events' causation id: an `OrderPlaced`, a customer's
//! `OrderCancelled` or a `CommandReplied` (by event id); an operator's action (the decision holds
//! its `OperatorActed`); otherwise the deadline timer, replayed as a tick at the time the decision
//! was recorded, under the retry policy the saga started with. Times are not compared (deadlines and `at_ns` follow the clock, the retry jitter
//! and the step timeout), everything else is: event types, steps, parts, attempts, command ids,
//! reasons. A tick is replayed at each moment between the deadlines of the parts in flight and
//! the time it was recorded (it was decided at one of them), and matches if one gives the
//! recorded decision.
//!
//! An input can also have decided nothing (a reply to a step that had moved on, a repeat): each
//! of the saga's inputs that no recorded decision names as its cause, and that the saga manager
//! had taken (up to its checkpoint), is decided again at its place among the decisions, and
//! diverges if the current decider would decide something from it. On a log without the saga
//! manager's checkpoint (a query node's copy) those are not checked: an input the manager had not
//! reached yet would look like one that decided nothing.

use aggregates::codec::DomainEvent;
use aggregates::saga::{RetryPolicy, Saga, SagaEvent, SagaInput};
use aggregates::{Decider, OrderId};
use event_store::{EventStore, RecordedEvent, Storage, StreamId};

use crate::app::consumer;
use crate::app::error::{HandlerError, LoadError};
use crate::app::messages;

/// A recorded decision the current decider would not make.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// The saga's order.
    pub order_id: OrderId,
    /// The saga stream's version of the decision's first event.
    pub version: u64,
    /// What caused the decision (an event type, `operator action` or `deadline`).
    pub input: String,
    /// The recorded events (types and fields, times left out).
    pub recorded: String,
    /// What the current decider decides instead.
    pub now: String,
}

/// What a replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Sagas replayed.
    pub sagas: usize,
    /// Decisions compared.
    pub decisions: usize,
    /// Inputs that decided nothing, decided again (none on a log without the saga manager's
    /// checkpoint).
    pub idle_inputs: usize,
    /// The first divergence of each saga that has one.
    pub divergences: Vec<Divergence>,
}

/// Replays the sagas in `store` (every `every`-th saga stream, for a sample; 1 for all), each under
/// the retry policy its `SagaStarted` recorded, or under `policy` (the settings the node ran with)
/// for a saga recorded before the policy was kept. A node restarted with other settings decides
/// its sagas' later deadlines under the new ones, which shows as divergences.
pub fn replay<S: Storage>(
    store: &EventStore<S>,
    policy: RetryPolicy,
    every: usize,
) -> Result<Replayed, HandlerError> {
    let mut streams = std::collections::BTreeSet::new();
    for e in store.read_category("saga", 0) {
        streams.insert(e?.stream_id);
    }
    let manager = messages::ConsumerName::SagaManager.as_str();
    let taken = store.checkpoint(&consumer::checkpoint_name(manager))?;
    let lettered: std::collections::HashSet<uuid::Uuid> = match taken {
        Some(_) => {
            consumer::list_dead_letters(store, manager)?.into_iter().map(|l| l.letter.event_id).collect()
        }
        None => Default::default(),
    };
    let taken = taken.map(|t| (t, &lettered));
    let mut out = Replayed::default();
    for (i, stream) in streams.into_iter().enumerate() {
        if i % every.max(1) != 0 {
            continue;
        }
        out.sagas += 1;
        if let Some(d) = replay_one(store, &StreamId::new(stream)?, policy, taken, &mut out)? {
            out.divergences.push(d);
        }
    }
    Ok(out)
}

/// A saga event as compared: its JSON with the times left out.
fn comparable(e: &SagaEvent) -> serde_json::Value {
    let mut v = serde_json::json!({ "type": e.event_type() });
    if let Ok(serde_json::Value::Object(mut fields)) =
        serde_json::from_slice::<serde_json::Value>(&e.to_payload())
    {
        // Times follow the clock; a start records the definition and the policy of the build
        // and node that decided it, which a later build decides anew (the fold keeps the
        // recorded ones).
        for key in ["deadline_ns", "at_ns", "definition", "policy"] {
            fields.remove(key);
        }
        v["fields"] = serde_json::Value::Object(fields);
    }
    v
}

fn describe(events: &[SagaEvent]) -> String {
    serde_json::Value::Array(events.iter().map(comparable).collect()).to_string()
}

/// The inputs of the saga of `order` up to position `taken` that caused none of `causes`, by
/// position: (position, event type, input).
fn idle_inputs<S: Storage>(
    store: &EventStore<S>,
    order: OrderId,
    causes: &std::collections::HashSet<uuid::Uuid>,
    taken: (u64, &std::collections::HashSet<uuid::Uuid>),
    policy: RetryPolicy,
) -> Result<Vec<Idle>, HandlerError> {
    let (taken, lettered) = taken;
    let mut idle = Vec::new();
    for stream in [messages::order_stream(order), messages::replies_stream(order)] {
        for e in store.read_stream(&stream, 1, event_store::Direction::Forward) {
            let e = e?;
            // A dead-lettered input was not decided on: a letter, not a decision of nothing.
            if e.position > taken || causes.contains(&e.event_id) || lettered.contains(&e.event_id) {
                continue;
            }
            // What the manager could not read then it could not have decided on (a dead letter).
            if let Ok(Some((_, input))) = super::input_of(&e, e.recorded_at_ns, policy) {
                idle.push(Idle {
                    position: e.position,
                    what: e.event_type.clone(),
                    input,
                    quiet: false,
                    now: None,
                });
            }
        }
    }
    idle.sort_by_key(|i| i.position);
    Ok(idle)
}

/// An input that decided nothing, while it is placed among the decisions. It was taken after
/// the last decision of an earlier input and before the first of a later one; deadlines and
/// operators' actions between those two were decided by the clock and by hand, not in log order,
/// so it may have met any of the states they leave: it is quiet if it decides nothing on one.
struct Idle {
    position: u64,
    what: String,
    input: SagaInput,
    /// It decides nothing on a state of its window.
    quiet: bool,
    /// What it decides on the last state it was tried on, when that is something.
    now: Option<Vec<SagaEvent>>,
}

impl Idle {
    fn try_on(&mut self, state: &Saga) {
        match state.decide(self.input.clone()) {
            Ok(now) if !now.is_empty() => self.now = Some(now),
            // Nothing, or refused (dead-lettered then too).
            _ => self.quiet = true,
        }
    }
}

fn replay_one<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
    policy: RetryPolicy,
    taken: Option<(u64, &std::collections::HashSet<uuid::Uuid>)>,
    out: &mut Replayed,
) -> Result<Option<Divergence>, HandlerError> {
    let mut recorded: Vec<(RecordedEvent, SagaEvent)> = Vec::new();
    for e in store.read_stream(stream, 1, event_store::Direction::Forward) {
        let e = e?;
        let decoded = SagaEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|error| {
            LoadError::Undecodable { stream: stream.to_string(), version: e.version, error }
        })?;
        recorded.push((e, decoded));
    }
    // The policy the saga was started under, when it recorded one (the flags' otherwise).
    let policy = match recorded.first() {
        Some((_, SagaEvent::SagaStarted(s))) => s.policy.unwrap_or(policy),
        _ => policy,
    };
    let order = match recorded.first() {
        Some((_, SagaEvent::SagaStarted(s))) => Some(s.order_id),
        _ => None,
    };
    let mut idle = match (order, taken) {
        (Some(order), Some((taken, lettered))) => {
            let causes = recorded.iter().map(|(e, _)| e.causation_id).collect();
            idle_inputs(store, order, &causes, (taken, lettered), policy)?
        }
        _ => Vec::new(),
    };
    // Closes the windows of the idle inputs taken before `before` (all of them at the end): each
    // must have been quiet on one of its states.
    let close = |idle: &mut Vec<Idle>, before: u64, version: u64, out: &mut Replayed| {
        let (closing, open): (Vec<Idle>, Vec<Idle>) = idle.drain(..).partition(|i| i.position < before);
        *idle = open;
        out.idle_inputs += closing.len();
        closing.into_iter().find(|i| !i.quiet).map(|i| Divergence {
            order_id: order.unwrap_or(OrderId(uuid::Uuid::nil())),
            version,
            input: format!("{} (which decided nothing)", i.what),
            recorded: "[]".into(),
            now: i.now.as_deref().map_or_else(|| "[]".into(), describe),
        })
    };
    let mut state = Saga::default();
    idle.iter_mut().for_each(|i| i.try_on(&state));
    let mut at = 0;
    while at < recorded.len() {
        // One decision: the run of events with one cause.
        let cause = recorded[at].0.causation_id;
        let end = recorded[at..]
            .iter()
            .position(|(e, _)| e.causation_id != cause)
            .map_or(recorded.len(), |n| at + n);
        let group = &recorded[at..end];
        let first = &group[0].0;
        let events: Vec<SagaEvent> = group.iter().map(|(_, ev)| ev.clone()).collect();
        let (what, input, taken_at) = input_for(store, first, &events, policy)?;
        // The inputs that decided nothing before this decision's input was taken.
        if let Some(t) = taken_at {
            if let Some(d) = close(&mut idle, t, first.version, out) {
                return Ok(Some(d));
            }
        }
        out.decisions += 1;
        let order = state.order_id.or(match &events[0] {
            SagaEvent::SagaStarted(s) => Some(s.order_id),
            _ => None,
        });
        let diverged = |now: String| Divergence {
            order_id: order.unwrap_or(OrderId(uuid::Uuid::nil())),
            version: first.version,
            input: what.clone(),
            recorded: describe(&events),
            now,
        };
        let Some(input) = input else {
            return Ok(Some(diverged(format!("{what} is not an input the saga takes"))));
        };
        let same = |now: &[SagaEvent]| {
            now.len() == events.len() && now.iter().zip(&events).all(|(a, b)| comparable(a) == comparable(b))
        };
        // A deadline was decided at some moment before it was recorded (how long before depends
        // on the disk and the node's load): it is replayed at each moment in between at which a
        // part fell due, and matches if one of them gives the recorded decision.
        let inputs: Vec<SagaInput> = match input {
            SagaInput::Tick { now_ns, jitter, policy } => {
                let mut moments: Vec<u64> = state
                    .step
                    .iter()
                    .flat_map(|s| s.parts.iter())
                    .chain(state.compensation.iter().flat_map(|c| c.parts.iter()))
                    .map(|p| p.deadline_ns)
                    .filter(|d| *d <= now_ns)
                    .collect();
                moments.sort_unstable();
                moments.dedup();
                moments.push(now_ns);
                moments.into_iter().map(|now_ns| SagaInput::Tick { now_ns, jitter, policy }).collect()
            }
            other => vec![other],
        };
        let mut last = None;
        for input in inputs {
            match state.decide(input) {
                Ok(now) if same(&now) => {
                    last = None;
                    break;
                }
                other => last = Some(other),
            }
        }
        match last {
            None => {}
            Some(Err(e)) => return Ok(Some(diverged(format!("refused: {e}")))),
            Some(Ok(now)) => return Ok(Some(diverged(describe(&now)))),
        }
        state = events.iter().fold(state, |s, e| s.evolve(e));
        at = end;
        // The inputs still open were taken after this decision's input (their windows start
        // here), or meet this state between two decisions of the clock or an operator.
        for i in idle.iter_mut() {
            if taken_at.is_some() {
                i.quiet = false;
                i.now = None;
            }
            i.try_on(&state);
        }
    }
    let next_version = recorded.last().map_or(1, |(e, _)| e.version + 1);
    Ok(close(&mut idle, u64::MAX, next_version, out))
}

/// The input that caused the decision `events` (whose first event is `first`), and the position
/// of the input in the log (`None` for a deadline or an operator's action, which are not taken in
/// log order).
fn input_for<S: Storage>(
    store: &EventStore<S>,
    first: &RecordedEvent,
    events: &[SagaEvent],
    policy: RetryPolicy,
) -> Result<(String, Option<SagaInput>, Option<u64>), HandlerError> {
    let now_ns = first.recorded_at_ns;
    if let Some(SagaEvent::OperatorActed(a)) =
        events.iter().find(|e| matches!(e, SagaEvent::OperatorActed(_)))
    {
        let input = SagaInput::Operator {
            action: a.action,
            action_id: a.action_id,
            operator: a.operator.clone(),
            reason: a.reason.clone(),
            now_ns: a.at_ns,
            policy,
        };
        return Ok(("operator action".into(), Some(input), None));
    }
    match store.find_event(first.causation_id)? {
        Some(cause) => {
            let input = super::input_of(&cause, now_ns, policy)?.map(|(_, input)| input);
            Ok((cause.event_type, input, Some(cause.position)))
        }
        None => Ok(("deadline".into(), Some(SagaInput::Tick { now_ns, jitter: 0.5, policy }), None)),
    }
}
