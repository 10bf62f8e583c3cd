//! The order saga's own state: a pure state machine (stream `saga-<order id>`).
//!
//! Steps run in order: reserve stock → take payment → create shipment → commit stock → confirm
//! the order. Each step is a [`Stage`] of one or more commands ([`Part`]s), each identified by a
//! deterministic command id (its idempotency key, the same on every retry). The stock steps have
//! one part per SKU (the inventory service is sharded by SKU, so each SKU answers for itself);
//! the others have one part. The saga advances when every part of the stage has succeeded.
//! Compensation releases the stock of exactly the SKUs whose reservation was not refused. A rejected step, a step whose retries run out, or a customer cancellation starts
//! compensation: the done (or in-flight) steps are undone in reverse, one at a time (cancel the
//! shipment, refund, release the stock, cancel the order). Compensations are idempotent, so
//! undoing an in-flight step that never took effect is harmless.
//!
//! Time comes in as input (`now_ns`, and a jitter fraction for backoff): the runner reads the
//! clock and the random source, the decider does not.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::Upcast;
use crate::order::CancelReason;
use crate::shipping::Address;
use crate::{domain_events, Decider, Money, OrderId, Sku};

/// A forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ReserveStock,
    /// Fraud screening of the order's amount by the payment service, before any money moves
    /// (definition 2 on).
    CheckFraud,
    TakePayment,
    CreateShipment,
    CommitStock,
    ConfirmOrder,
}

impl Step {
    /// All steps, in the order of the newest definition's path (its own constant: a later
    /// definition that adds a step changes this list, never an earlier path).
    pub const ALL: [Step; 6] = SECOND_PATH;

    /// The step after this one on the path of `definition` ([`path`]); `Ok(None)` after the last.
    /// A step that is not on the path (a definition this build does not carry) is an error, never
    /// the end of the saga.
    fn next_on(self, definition: u32) -> Result<Option<Step>, SagaError> {
        let path = path(definition);
        let i =
            path.iter().position(|s| *s == self).ok_or(SagaError::NotOnPath { step: self, definition })?;
        Ok(path.get(i + 1).copied())
    }

    /// What undoes this step, if anything.
    pub fn compensation(self) -> Option<Compensation> {
        match self {
            Step::ReserveStock => Some(Compensation::ReleaseStock),
            Step::TakePayment => Some(Compensation::RefundPayment),
            Step::CreateShipment => Some(Compensation::CancelShipment),
            // Releasing the stock (above) also puts committed stock back: until the order is
            // confirmed its shipment is cancellable, so the goods have not left. Confirming is
            // the last step.
            Step::CommitStock | Step::ConfirmOrder => None,
            // A verdict: nothing happened that needs undoing.
            Step::CheckFraud => None,
        }
    }
}

/// A compensating action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compensation {
    CancelShipment,
    RefundPayment,
    ReleaseStock,
    CancelOrder,
}

/// Which service a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    Order,
    Inventory,
    Payment,
    Shipping,
}

impl Service {
    /// Lower-case name (`inventory`, ...), used in stream and topic names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
            Service::Shipping => "shipping",
        }
    }
}

/// One line the saga needs: what and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaLine {
    pub sku: Sku,
    pub quantity: u64,
}

/// A command the saga sends to a service. Serialised as the payload of a command event whose
/// type is [`SagaCommand::name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SagaCommand {
    ReserveStock {
        order_id: OrderId,
        lines: Vec<SagaLine>,
    },
    /// Screen the order's amount for fraud (definition 2 on): answered with a verdict, nothing
    /// else changes.
    CheckFraud {
        order_id: OrderId,
        amount: Money,
    },
    TakePayment {
        order_id: OrderId,
        amount: Money,
    },
    CreateShipment {
        order_id: OrderId,
        address: Option<Address>,
    },
    CommitStock {
        order_id: OrderId,
        lines: Vec<SagaLine>,
    },
    ConfirmOrder {
        order_id: OrderId,
        /// The shipment's tracking number, from the shipping service's reply (absent in commands
        /// recorded before it was carried).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_number: Option<String>,
    },
    CancelShipment {
        order_id: OrderId,
        reason: String,
    },
    RefundPayment {
        order_id: OrderId,
        reason: String,
    },
    ReleaseStock {
        order_id: OrderId,
        lines: Vec<SagaLine>,
    },
    CancelOrder {
        order_id: OrderId,
        reason: CancelReason,
    },
}

impl SagaCommand {
    /// The stable command name.
    pub fn name(&self) -> &'static str {
        match self {
            SagaCommand::ReserveStock { .. } => "ReserveStock",
            SagaCommand::CheckFraud { .. } => "CheckFraud",
            SagaCommand::TakePayment { .. } => "TakePayment",
            SagaCommand::CreateShipment { .. } => "CreateShipment",
            SagaCommand::CommitStock { .. } => "CommitStock",
            SagaCommand::ConfirmOrder { .. } => "ConfirmOrder",
            SagaCommand::CancelShipment { .. } => "CancelShipment",
            SagaCommand::RefundPayment { .. } => "RefundPayment",
            SagaCommand::ReleaseStock { .. } => "ReleaseStock",
            SagaCommand::CancelOrder { .. } => "CancelOrder",
        }
    }

    /// The service that handles it.
    pub fn service(&self) -> Service {
        match self {
            SagaCommand::ReserveStock { .. }
            | SagaCommand::CommitStock { .. }
            | SagaCommand::ReleaseStock { .. } => Service::Inventory,
            SagaCommand::CheckFraud { .. }
            | SagaCommand::TakePayment { .. }
            | SagaCommand::RefundPayment { .. } => Service::Payment,
            SagaCommand::CreateShipment { .. } | SagaCommand::CancelShipment { .. } => Service::Shipping,
            SagaCommand::ConfirmOrder { .. } | SagaCommand::CancelOrder { .. } => Service::Order,
        }
    }

    /// The order it concerns.
    pub fn order_id(&self) -> OrderId {
        match self {
            SagaCommand::ReserveStock { order_id, .. }
            | SagaCommand::CheckFraud { order_id, .. }
            | SagaCommand::TakePayment { order_id, .. }
            | SagaCommand::CreateShipment { order_id, .. }
            | SagaCommand::CommitStock { order_id, .. }
            | SagaCommand::ConfirmOrder { order_id, .. }
            | SagaCommand::CancelShipment { order_id, .. }
            | SagaCommand::RefundPayment { order_id, .. }
            | SagaCommand::ReleaseStock { order_id, .. }
            | SagaCommand::CancelOrder { order_id, .. } => *order_id,
        }
    }
}

/// How a service answered a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Done (or already done: commands are idempotent).
    Succeeded,
    /// Refused for a business reason (out of stock, declined, undeliverable).
    Rejected { reason: String },
}

/// Retry and timeout policy (configuration, passed in with each input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// How long a step may take before it is retried.
    pub step_timeout_ms: u64,
    /// First backoff.
    pub backoff_base_ms: u64,
    /// Largest backoff.
    pub backoff_cap_ms: u64,
    /// Attempts per step (the first one included).
    pub max_attempts: u32,
    /// What a step whose attempts run out does.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            step_timeout_ms: 5_000,
            backoff_base_ms: 200,
            backoff_cap_ms: 10_000,
            max_attempts: 4,
            on_exhausted: OnExhausted::default(),
        }
    }
}

/// What a saga does when a step (or a compensation) gets no reply after all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Park the saga (`SagaQuarantined`): it waits, visible and counted, for an operator to retry,
    /// resume, compensate or finish it by hand. It holds nothing else up. Confirming the order is
    /// parked too, instead of being sent for ever.
    #[default]
    Quarantine,
    /// A forward step gives up and compensates (the order is cancelled for a timeout), a
    /// compensation that runs out fails the saga (`SagaFailed`), and confirming the order is sent
    /// until it is answered.
    Compensate,
}

/// An operator's action on one saga (each recorded as [`OperatorActed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// Send the commands of the step (or compensation) in flight again now, with a fresh budget of
    /// attempts. A running, compensating or quarantined saga.
    Retry,
    /// Take a quarantined saga out of quarantine: its step is sent again with a fresh budget.
    Resume,
    /// Abort a running (or quarantined) saga on its forward path: undo what was done and cancel
    /// the order. Not while the order is being confirmed (it may be confirmed already).
    Compensate,
    /// Record the compensation in flight (or the one a failed saga stopped at) as done by hand,
    /// with a reason (a refund made outside the system), and go on with the rest.
    MarkCompensationDone,
}

impl OperatorAction {
    /// All actions.
    pub const ALL: [OperatorAction; 4] = [
        OperatorAction::Retry,
        OperatorAction::Resume,
        OperatorAction::Compensate,
        OperatorAction::MarkCompensationDone,
    ];

    /// Its name in routes and on the command line (`retry`, `resume`, `compensate`,
    /// `mark-compensation-done`).
    pub fn name(self) -> &'static str {
        match self {
            OperatorAction::Retry => "retry",
            OperatorAction::Resume => "resume",
            OperatorAction::Compensate => "compensate",
            OperatorAction::MarkCompensationDone => "mark-compensation-done",
        }
    }

    /// The action of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1`: exponential, capped, with "equal jitter"
    /// (half fixed, half scaled by `jitter` in `[0, 1]`).
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = self.backoff_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        let capped = exp.min(self.backoff_cap_ms);
        let j = jitter.clamp(0.0, 1.0);
        capped / 2 + ((capped / 2) as f64 * j) as u64
    }
}

/// What the saga reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaInput {
    /// An order was placed: start.
    Start {
        order_id: OrderId,
        lines: Vec<SagaLine>,
        amount: Money,
        address: Option<Address>,
        now_ns: u64,
        policy: RetryPolicy,
    },
    /// A service answered a command.
    Reply { command_id: Uuid, outcome: Outcome, detail: Option<String>, now_ns: u64, policy: RetryPolicy },
    /// The customer cancelled the order (the order is already cancelled).
    CustomerCancelled { now_ns: u64, policy: RetryPolicy },
    /// Time passed: retry or give up on overdue commands.
    Tick { now_ns: u64, jitter: f64, policy: RetryPolicy },
    /// An operator acted on the saga. `action_id` makes the action idempotent: an action whose
    /// id the saga has recorded decides nothing.
    Operator {
        action: OperatorAction,
        action_id: Uuid,
        operator: String,
        reason: String,
        now_ns: u64,
        policy: RetryPolicy,
    },
}

// ----- events -----

/// `SagaStarted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStarted {
    pub order_id: OrderId,
    pub lines: Vec<SagaLine>,
    pub amount: Money,
    pub address: Option<Address>,
    /// The version of the saga's definition that started it ([`DEFINITION`]); sagas recorded
    /// before the field were started by definition 1.
    #[serde(default = "first_definition")]
    pub definition: u32,
    /// The retry policy the saga manager started it under (absent in sagas recorded before it
    /// was kept): what `causeway verify` replays the saga's deadlines with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RetryPolicy>,
}

fn first_definition() -> u32 {
    1
}

/// The version of the saga's definition (its steps, their order, and what a reply, a deadline
/// or an operator's action decides at each) that this build starts new sagas with.
///
/// How each change of the definition treats the sagas already running, decided per change and
/// written here (ARCHITECTURE.md, "Changing the saga", says how to make one):
///
/// | version | change | sagas started under older versions |
/// |---|---|---|
/// | 1 | the first recorded definition | (none) |
/// | 2 | a fraud check (the payment service screens the amount) between reserving stock and taking the payment | carried to their end on definition 1's path: nothing they recorded changes meaning, and their next steps are the ones they would have taken |
pub const DEFINITION: u32 = 2;

/// The definitions this build carries to their end: a saga in flight under any other (started
/// by a newer build, or by one whose path this build has dropped) makes the saga manager refuse
/// to start, naming the versions in flight and how many sagas each has.
pub const CARRIED: &[u32] = &[1, 2];

/// Definition 2's path: the fraud check between the stock and the payment.
const SECOND_PATH: [Step; 6] = [
    Step::ReserveStock,
    Step::CheckFraud,
    Step::TakePayment,
    Step::CreateShipment,
    Step::CommitStock,
    Step::ConfirmOrder,
];

/// The forward steps of a definition, in order (a definition this build does not carry has no
/// path: such a saga is refused before it is decided).
pub fn path(definition: u32) -> &'static [Step] {
    const FIRST: [Step; 5] =
        [Step::ReserveStock, Step::TakePayment, Step::CreateShipment, Step::CommitStock, Step::ConfirmOrder];
    match definition {
        1 => &FIRST,
        2 => &SECOND_PATH,
        _ => &[],
    }
}
impl Upcast for SagaStarted {}

/// `StepRequested`: a command of a step was issued (or re-issued on retry) with a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequested {
    pub step: Step,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
    /// The SKU this part of a stock step is for (absent: the whole step, as recorded before the
    /// stock steps were split per SKU, and for every other step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
}
impl Upcast for StepRequested {}

/// `StepSucceeded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSucceeded {
    pub step: Step,
    /// What the service answered with (the tracking number of a shipment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The part that succeeded (its SKU; absent for a whole step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
}
impl Upcast for StepSucceeded {}

/// `StepFailed`: the forward path stops and compensation begins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailed {
    pub step: Step,
    pub reason: String,
    /// Whether the step may still have taken effect (timed out or interrupted, as opposed to
    /// refused), so it must be undone too.
    pub may_have_applied: bool,
    /// The customer cancelled (the order is already cancelled: no `CancelOrder` needed).
    pub by_customer: bool,
    /// The SKU whose reservation was refused, when one part of a per-SKU reservation was: its
    /// stock is not released, every other SKU's is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
}
impl Upcast for StepFailed {}

/// `CompensationRequested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationRequested {
    pub compensation: Compensation,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
    /// The SKU this part of a stock release is for (absent: the whole compensation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
}
impl Upcast for CompensationRequested {}

/// `CompensationDone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationDone {
    pub compensation: Compensation,
    /// The part that is done (its SKU; absent for a whole compensation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
    /// Done by hand, outside the system (an operator said so); the service never confirmed it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_hand: bool,
}
impl Upcast for CompensationDone {}

/// `SagaCompleted`: the order is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCompleted {
    pub order_id: OrderId,
}
impl Upcast for SagaCompleted {}

/// `SagaCompensated`: everything done was undone; the order is cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCompensated {
    pub order_id: OrderId,
    pub reason: String,
}
impl Upcast for SagaCompensated {}

/// `SagaFailed`: a compensation could not be completed; an operator must look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaFailed {
    pub order_id: OrderId,
    pub reason: String,
}
impl Upcast for SagaFailed {}

/// `SagaQuarantined`: a step (or compensation) got no reply after all its attempts; the saga is
/// parked until an operator acts (or a late reply to the part moves it on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaQuarantined {
    /// Why (`step/take_payment: no reply after 4 attempts`).
    pub reason: String,
    /// It stopped while compensating (otherwise on its forward path).
    pub in_compensation: bool,
    /// The part that ran out (its SKU; absent for a whole step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
    /// When (UTC ns).
    pub at_ns: u64,
}
impl Upcast for SagaQuarantined {}

/// `OperatorActed`: the audit record of an operator's action, appended before its effects in the
/// same write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorActed {
    pub action: OperatorAction,
    /// The action's idempotency key.
    pub action_id: Uuid,
    /// Who (as the request named them).
    pub operator: String,
    /// Why.
    pub reason: String,
    /// When (UTC ns).
    pub at_ns: u64,
}
impl Upcast for OperatorActed {}

domain_events! {
    /// Events.
    pub enum SagaEvent {
    SagaStarted(SagaStarted),
    StepRequested(StepRequested),
    StepSucceeded(StepSucceeded),
    StepFailed(StepFailed),
    CompensationRequested(CompensationRequested),
    CompensationDone(CompensationDone),
    SagaCompleted(SagaCompleted),
    SagaCompensated(SagaCompensated),
    SagaFailed(SagaFailed),
    SagaQuarantined(SagaQuarantined),
    OperatorActed(OperatorActed),
}
}

/// Why an input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("the saga has not started")]
    NotStarted,
    #[error("an order needs at least one line")]
    NoLines,
    /// The saga's state does not allow the operator's action.
    #[error("cannot {action} a saga that is {state}: {why}", action = action.name(), state = state.name())]
    NotAllowed { action: OperatorAction, state: SagaState, why: &'static str },
    /// An operator's action without a reason where one is required.
    #[error("{} needs a reason", action.name())]
    ReasonRequired { action: OperatorAction },
    /// A step the saga's definition does not have (a definition this build does not carry).
    #[error("{} is not a step of saga definition {definition}", step_name(*step))]
    NotOnPath { step: Step, definition: u32 },
}

/// Where a saga is, as an operator sees it (lists and filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    NotStarted,
    /// On its forward path, every command on its first attempt.
    Running,
    /// On its forward path, a command sent again after no reply.
    Retrying,
    /// Undoing what was done.
    Compensating,
    /// Parked after a step ran out of attempts; waits for an operator.
    Quarantined,
    /// A compensation was refused (or ran out under `OnExhausted::Compensate`); an operator must
    /// finish it by hand.
    Failed,
    Completed,
    Compensated,
}

impl SagaState {
    /// All states, in the order a list shows them.
    pub const ALL: [SagaState; 8] = [
        SagaState::NotStarted,
        SagaState::Running,
        SagaState::Retrying,
        SagaState::Compensating,
        SagaState::Quarantined,
        SagaState::Failed,
        SagaState::Completed,
        SagaState::Compensated,
    ];

    /// Its snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            SagaState::NotStarted => "not_started",
            SagaState::Running => "running",
            SagaState::Retrying => "retrying",
            SagaState::Compensating => "compensating",
            SagaState::Quarantined => "quarantined",
            SagaState::Failed => "failed",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
        }
    }

    /// The state of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

// ----- state -----

/// Where the saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    #[default]
    NotStarted,
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl SagaStatus {
    /// Whether the saga has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed)
    }
}

/// How a part of a stage has been answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Sent, no reply yet.
    #[default]
    Waiting,
    /// Done.
    Succeeded,
    /// Refused.
    Rejected,
}

/// One command of a stage, awaiting its reply (or answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The SKU of a per-SKU stock command; `None` for a whole step or compensation.
    pub sku: Option<Sku>,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
    pub answer: Answer,
    /// The attempt the current budget of attempts began with (1; an operator's retry starts a
    /// new budget).
    #[serde(default)]
    pub budget_from: u32,
}

impl Part {
    /// The next attempt and its deadline, or `None` when the attempts are used up.
    fn retry(&self, now_ns: u64, jitter: f64, policy: &RetryPolicy) -> Option<(u32, u64)> {
        let used = self.attempt.saturating_sub(self.budget_from).saturating_add(1);
        (used < policy.max_attempts).then(|| self.retry_anyway(now_ns, jitter, policy))
    }

    /// The next attempt even past the policy's count (a step that must not give up).
    fn retry_anyway(&self, now_ns: u64, jitter: f64, policy: &RetryPolicy) -> (u32, u64) {
        let delay = policy.step_timeout_ms + policy.backoff_ms(self.attempt, jitter);
        (self.attempt.saturating_add(1), now_ns.saturating_add(ms(delay)))
    }

    fn overdue(&self, now_ns: u64) -> bool {
        self.answer == Answer::Waiting && self.deadline_ns <= now_ns
    }
}

/// A step or a compensation in flight: its commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage<T> {
    pub what: T,
    pub parts: Vec<Part>,
}

impl<T> Stage<T> {
    /// The part awaiting the reply to `command_id`.
    fn waiting_for(&self, command_id: Uuid) -> Option<&Part> {
        self.parts.iter().find(|p| p.command_id == command_id && p.answer == Answer::Waiting)
    }

    /// Whether every part but the one of `command_id` has succeeded.
    fn done_but(&self, command_id: Uuid) -> bool {
        self.parts.iter().all(|p| p.command_id == command_id || p.answer == Answer::Succeeded)
    }

    fn all_succeeded(&self) -> bool {
        self.parts.iter().all(|p| p.answer == Answer::Succeeded)
    }

    /// Records a request of one of its parts (a new part, or a retry of one).
    fn request(&mut self, sku: Option<Sku>, command_id: Uuid, attempt: u32, deadline_ns: u64) {
        match self.parts.iter_mut().find(|p| p.command_id == command_id) {
            Some(p) => {
                p.attempt = attempt;
                p.deadline_ns = deadline_ns;
            }
            None => self.parts.push(Part {
                sku,
                command_id,
                attempt,
                deadline_ns,
                answer: Answer::Waiting,
                budget_from: attempt,
            }),
        }
    }

    fn answer(&mut self, sku: &Option<Sku>, answer: Answer) {
        if let Some(p) = self.parts.iter_mut().find(|p| p.sku == *sku) {
            p.answer = answer;
        }
    }

    /// The earliest deadline of a part still waiting.
    fn next_deadline_ns(&self) -> Option<u64> {
        self.parts.iter().filter(|p| p.answer == Answer::Waiting).map(|p| p.deadline_ns).min()
    }
}

/// The saga's state (serialisable, so a read model can keep it folded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Saga {
    pub order_id: Option<OrderId>,
    pub lines: Vec<SagaLine>,
    pub amount: Money,
    pub address: Option<Address>,
    pub status: SagaStatus,
    /// Steps that succeeded, in order.
    pub done: Vec<Step>,
    /// The forward step in flight.
    pub step: Option<Stage<Step>>,
    /// The compensation in flight.
    pub compensation: Option<Stage<Compensation>>,
    /// Compensations still to run after the current one, in order.
    pub to_compensate: Vec<Compensation>,
    /// Why compensation started.
    pub failure: Option<String>,
    /// The step that failed.
    pub failed_step: Option<Step>,
    /// The SKU whose reservation was refused (its stock is not released).
    pub refused_sku: Option<Sku>,
    /// It failed by running out of time (not by a refusal or a cancellation).
    pub timed_out: bool,
    /// The customer cancelled (the order is already cancelled).
    pub cancelled_by_customer: bool,
    /// The shipment's tracking number, once created.
    pub tracking_number: Option<String>,
    /// Parked: why, and where.
    pub quarantined: Option<SagaQuarantined>,
    /// An operator aborted it (the order is cancelled for that reason).
    pub aborted: bool,
    /// Compensations an operator marked done by hand (the services never confirmed them).
    pub by_hand: Vec<Compensation>,
    /// The ids of the newest operator actions (at most [`MAX_REMEMBERED_ACTIONS`]), so a repeated
    /// action decides nothing.
    pub actions: Vec<Uuid>,
    /// The version of the definition that started it (0 before it started).
    #[serde(default = "first_definition")]
    pub definition: u32,
    /// The retry policy it started under, when recorded.
    #[serde(default)]
    pub policy: Option<RetryPolicy>,
}

/// Operator actions a saga remembers the ids of.
pub const MAX_REMEMBERED_ACTIONS: usize = 32;

/// The deterministic id of a command: the same for every retry of the same step, different for
/// every step and saga.
pub fn command_id(order_id: OrderId, what: &str) -> Uuid {
    Uuid::new_v5(&order_id.0, what.as_bytes())
}

/// The name of a step (`step/reserve_stock`, ...), the root of its command ids.
pub fn step_name(s: Step) -> &'static str {
    match s {
        Step::ReserveStock => "step/reserve_stock",
        Step::CheckFraud => "step/check_fraud",
        Step::TakePayment => "step/take_payment",
        Step::CreateShipment => "step/create_shipment",
        Step::CommitStock => "step/commit_stock",
        Step::ConfirmOrder => "step/confirm_order",
    }
}

/// The name of a compensation, the root of its command ids.
pub fn compensation_name(c: Compensation) -> &'static str {
    match c {
        Compensation::CancelShipment => "compensation/cancel_shipment",
        Compensation::RefundPayment => "compensation/refund_payment",
        Compensation::ReleaseStock => "compensation/release_stock",
        Compensation::CancelOrder => "compensation/cancel_order",
    }
}

/// The command id of a part: `<name>` for a whole step, `<name>/<sku>` for one SKU.
pub fn part_command_id(order_id: OrderId, name: &str, sku: Option<&Sku>) -> Uuid {
    match sku {
        None => command_id(order_id, name),
        Some(sku) => command_id(order_id, &format!("{name}/{sku}")),
    }
}

fn ms(n: u64) -> u64 {
    n.saturating_mul(1_000_000)
}

/// Whether a step's commands go one per SKU.
fn per_sku(step: Step) -> bool {
    matches!(step, Step::ReserveStock | Step::CommitStock)
}

impl Saga {
    fn oid(&self) -> Result<OrderId, SagaError> {
        self.order_id.ok_or(SagaError::NotStarted)
    }

    /// The order's quantity per SKU, in SKU order (an order may list a SKU twice).
    pub fn skus(&self) -> Vec<SagaLine> {
        let mut merged: std::collections::BTreeMap<&Sku, u64> = std::collections::BTreeMap::new();
        for l in &self.lines {
            let q = merged.entry(&l.sku).or_insert(0);
            *q = q.saturating_add(l.quantity);
        }
        merged.into_iter().map(|(sku, quantity)| SagaLine { sku: sku.clone(), quantity }).collect()
    }

    /// The lines a stock command covers: one SKU's, or all of them (a whole-step command).
    fn lines_for(&self, sku: Option<&Sku>) -> Vec<SagaLine> {
        match sku {
            None => self.lines.clone(),
            Some(sku) => self.skus().into_iter().filter(|l| l.sku == *sku).collect(),
        }
    }

    /// The command a step (or one SKU's part of it) sends.
    pub fn step_command(&self, step: Step, sku: Option<&Sku>) -> Option<SagaCommand> {
        let order_id = self.order_id?;
        Some(match step {
            Step::ReserveStock => SagaCommand::ReserveStock { order_id, lines: self.lines_for(sku) },
            Step::CheckFraud => SagaCommand::CheckFraud { order_id, amount: self.amount },
            Step::TakePayment => SagaCommand::TakePayment { order_id, amount: self.amount },
            Step::CreateShipment => SagaCommand::CreateShipment { order_id, address: self.address.clone() },
            Step::CommitStock => SagaCommand::CommitStock { order_id, lines: self.lines_for(sku) },
            Step::ConfirmOrder => {
                SagaCommand::ConfirmOrder { order_id, tracking_number: self.tracking_number.clone() }
            }
        })
    }

    /// The command a compensation (or one SKU's part of it) sends.
    pub fn compensation_command(&self, c: Compensation, sku: Option<&Sku>) -> Option<SagaCommand> {
        let order_id = self.order_id?;
        let reason = self.failure.clone().unwrap_or_else(|| "compensation".into());
        Some(match c {
            Compensation::CancelShipment => SagaCommand::CancelShipment { order_id, reason },
            Compensation::RefundPayment => SagaCommand::RefundPayment { order_id, reason },
            Compensation::ReleaseStock => SagaCommand::ReleaseStock { order_id, lines: self.lines_for(sku) },
            Compensation::CancelOrder => SagaCommand::CancelOrder { order_id, reason: self.cancel_reason() },
        })
    }

    /// The command a saga event asks to send, if any.
    pub fn command_of(&self, event: &SagaEvent) -> Option<(Uuid, SagaCommand)> {
        match event {
            SagaEvent::StepRequested(e) => {
                self.step_command(e.step, e.sku.as_ref()).map(|c| (e.command_id, c))
            }
            SagaEvent::CompensationRequested(e) => {
                self.compensation_command(e.compensation, e.sku.as_ref()).map(|c| (e.command_id, c))
            }
            _ => None,
        }
    }

    /// The earliest deadline of a command in flight (none for a parked or ended saga).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.is_parked() {
            return None;
        }
        let a = self.step.as_ref().and_then(Stage::next_deadline_ns);
        let b = self.compensation.as_ref().and_then(Stage::next_deadline_ns);
        a.into_iter().chain(b).min()
    }

    /// Where the saga is, as an operator sees it.
    pub fn state(&self) -> SagaState {
        match self.status {
            SagaStatus::NotStarted => SagaState::NotStarted,
            SagaStatus::Completed => SagaState::Completed,
            SagaStatus::Compensated => SagaState::Compensated,
            SagaStatus::Failed => SagaState::Failed,
            _ if self.quarantined.is_some() => SagaState::Quarantined,
            SagaStatus::Compensating => SagaState::Compensating,
            SagaStatus::Running => {
                let retrying = self
                    .step
                    .iter()
                    .flat_map(|s| &s.parts)
                    .any(|p| p.answer == Answer::Waiting && p.attempt > 1);
                if retrying {
                    SagaState::Retrying
                } else {
                    SagaState::Running
                }
            }
        }
    }

    /// Ended, or waiting for an operator: nothing moves it on by itself but a late reply (or,
    /// when failed, an operator's hand).
    pub fn is_parked(&self) -> bool {
        self.status.is_terminal() || self.quarantined.is_some()
    }

    /// Whether the saga has decided an action of this id already.
    pub fn has_acted(&self, action_id: Uuid) -> bool {
        self.actions.contains(&action_id)
    }

    /// The operator's action: the audit record, then its effects.
    fn operate(
        &self,
        action: OperatorAction,
        acted: OperatorActed,
        now_ns: u64,
        p: &RetryPolicy,
    ) -> Result<Vec<SagaEvent>, SagaError> {
        let order_id = self.oid()?;
        let state = self.state();
        let refuse = |why: &'static str| Err(SagaError::NotAllowed { action, state, why });
        let acted = SagaEvent::OperatorActed(acted);
        let after = self.clone().evolve(&acted);
        let mut out = vec![acted];
        match action {
            OperatorAction::Retry | OperatorAction::Resume => {
                if action == OperatorAction::Resume && state != SagaState::Quarantined {
                    return refuse("only a quarantined saga is resumed");
                }
                let reopens = self.status == SagaStatus::Failed && self.compensation.is_some();
                if self.status.is_terminal() && !reopens {
                    return refuse("it has ended");
                }
                let resent = after.resend_waiting(now_ns, p);
                if resent.is_empty() {
                    return refuse("no command of it is waiting for a reply");
                }
                out.extend(resent);
            }
            OperatorAction::Compensate => {
                if self.status != SagaStatus::Running {
                    return refuse("only a saga on its forward path is compensated");
                }
                let Some(step) = self.step.as_ref().map(|s| s.what) else {
                    return refuse("no step is in flight");
                };
                if step == Step::ConfirmOrder {
                    return refuse("the order is being confirmed and may be confirmed already; retry it");
                }
                let OperatorActed { operator, reason, .. } = match &out[0] {
                    SagaEvent::OperatorActed(a) => a.clone(),
                    _ => return refuse("no audit record"),
                };
                let failed = StepFailed {
                    step,
                    reason: format!("aborted by {operator}: {reason}"),
                    may_have_applied: true,
                    by_customer: false,
                    sku: None,
                };
                out.extend(after.fail(order_id, failed, now_ns, p));
            }
            OperatorAction::MarkCompensationDone => {
                let stuck = matches!(self.status, SagaStatus::Compensating | SagaStatus::Failed);
                let Some(stage) = self.compensation.as_ref().filter(|_| stuck) else {
                    return refuse("no compensation is in flight or stopped");
                };
                let mut state = after.clone();
                for part in stage.parts.iter().filter(|p| p.answer != Answer::Succeeded) {
                    let done = SagaEvent::CompensationDone(CompensationDone {
                        compensation: stage.what,
                        sku: part.sku.clone(),
                        by_hand: true,
                    });
                    state = state.evolve(&done);
                    out.push(done);
                }
                match state.to_compensate.first() {
                    Some(next) => out.extend(state.request_compensation(order_id, *next, now_ns, p)),
                    None => out.push(SagaEvent::SagaCompensated(SagaCompensated {
                        order_id,
                        reason: state.failure.clone().unwrap_or_default(),
                    })),
                }
            }
        }
        Ok(out)
    }

    /// The stage in flight's waiting commands, sent again now (the budget was reset by the
    /// operator's action).
    fn resend_waiting(&self, now_ns: u64, p: &RetryPolicy) -> Vec<SagaEvent> {
        let deadline_ns = now_ns.saturating_add(ms(p.step_timeout_ms));
        let waiting = |parts: &[Part]| -> Vec<(Uuid, u32, Option<Sku>)> {
            parts
                .iter()
                .filter(|part| part.answer == Answer::Waiting)
                .map(|part| (part.command_id, part.attempt.saturating_add(1), part.sku.clone()))
                .collect()
        };
        if let Some(stage) = &self.step {
            return waiting(&stage.parts)
                .into_iter()
                .map(|(command_id, attempt, sku)| {
                    let step = stage.what;
                    SagaEvent::StepRequested(StepRequested { step, command_id, attempt, deadline_ns, sku })
                })
                .collect();
        }
        let Some(stage) = &self.compensation else { return Vec::new() };
        waiting(&stage.parts)
            .into_iter()
            .map(|(command_id, attempt, sku)| {
                let compensation = stage.what;
                SagaEvent::CompensationRequested(CompensationRequested {
                    compensation,
                    command_id,
                    attempt,
                    deadline_ns,
                    sku,
                })
            })
            .collect()
    }

    fn cancel_reason(&self) -> CancelReason {
        match self.failed_step {
            _ if self.cancelled_by_customer => CancelReason::CustomerRequest,
            _ if self.aborted => CancelReason::Operator,
            _ if self.timed_out => CancelReason::Timeout,
            Some(Step::ReserveStock) => CancelReason::OutOfStock,
            Some(Step::CheckFraud | Step::TakePayment) => CancelReason::PaymentDeclined,
            Some(Step::CreateShipment) => CancelReason::ShipmentFailed,
            _ => CancelReason::Timeout,
        }
    }

    /// The requests of a step: one per SKU for the stock steps, one otherwise.
    fn request_step(&self, order_id: OrderId, step: Step, now_ns: u64, p: &RetryPolicy) -> Vec<SagaEvent> {
        let deadline_ns = now_ns.saturating_add(ms(p.step_timeout_ms));
        let skus: Vec<Option<Sku>> =
            if per_sku(step) { self.skus().into_iter().map(|l| Some(l.sku)).collect() } else { vec![None] };
        skus.into_iter()
            .map(|sku| {
                SagaEvent::StepRequested(StepRequested {
                    step,
                    command_id: part_command_id(order_id, step_name(step), sku.as_ref()),
                    attempt: 1,
                    deadline_ns,
                    sku,
                })
            })
            .collect()
    }

    /// The SKUs whose stock a release gives back: every SKU but the one whose reservation was
    /// refused (a reservation in flight may still take effect, so it is released too).
    fn release_skus(&self) -> Vec<Sku> {
        self.skus().into_iter().map(|l| l.sku).filter(|s| Some(s) != self.refused_sku.as_ref()).collect()
    }

    /// The requests of a compensation: one per released SKU for the stock release, one
    /// otherwise.
    fn request_compensation(
        &self,
        order_id: OrderId,
        c: Compensation,
        now_ns: u64,
        p: &RetryPolicy,
    ) -> Vec<SagaEvent> {
        let deadline_ns = now_ns.saturating_add(ms(p.step_timeout_ms));
        let skus: Vec<Option<Sku>> = if c == Compensation::ReleaseStock {
            self.release_skus().into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        skus.into_iter()
            .map(|sku| {
                SagaEvent::CompensationRequested(CompensationRequested {
                    compensation: c,
                    command_id: part_command_id(order_id, compensation_name(c), sku.as_ref()),
                    attempt: 1,
                    deadline_ns,
                    sku,
                })
            })
            .collect()
    }

    /// Compensations, in order, for a failure of the step in flight.
    fn compensation_plan(&self, failed: &StepFailed) -> Vec<Compensation> {
        let mut steps: Vec<Step> = self.done.clone();
        if failed.may_have_applied {
            steps.push(failed.step);
        } else if failed.step == Step::ReserveStock && failed.sku.is_some() {
            // One SKU refused: the other SKUs' reservations (granted, or still in flight) are
            // released.
            let others = self.skus().iter().any(|l| Some(&l.sku) != failed.sku.as_ref());
            if others {
                steps.push(Step::ReserveStock);
            }
        }
        let mut plan: Vec<Compensation> = steps.iter().rev().filter_map(|s| s.compensation()).collect();
        if !failed.by_customer {
            plan.push(Compensation::CancelOrder);
        }
        plan
    }

    /// `StepFailed`, then the first compensation (or the end when there is nothing to undo).
    fn fail(&self, order_id: OrderId, failed: StepFailed, now_ns: u64, p: &RetryPolicy) -> Vec<SagaEvent> {
        let failed = SagaEvent::StepFailed(failed);
        let after = self.clone().evolve(&failed);
        let mut out = vec![failed];
        match after.to_compensate.first() {
            Some(first) => out.extend(after.request_compensation(order_id, *first, now_ns, p)),
            None => out.push(SagaEvent::SagaCompensated(SagaCompensated {
                order_id,
                reason: after.failure.clone().unwrap_or_default(),
            })),
        }
        out
    }
}

impl Decider for Saga {
    type Command = SagaInput;
    type Event = SagaEvent;
    type Error = SagaError;

    fn decide(&self, input: SagaInput) -> Result<Vec<SagaEvent>, SagaError> {
        match input {
            SagaInput::Start { order_id, lines, amount, address, now_ns, policy } => {
                if self.status != SagaStatus::NotStarted {
                    return Ok(vec![]); // a redelivered OrderPlaced
                }
                if lines.is_empty() {
                    return Err(SagaError::NoLines);
                }
                let started = SagaEvent::SagaStarted(SagaStarted {
                    order_id,
                    lines,
                    amount,
                    address,
                    definition: DEFINITION,
                    policy: Some(policy),
                });
                let after = self.clone().evolve(&started);
                let mut out = vec![started];
                out.extend(after.request_step(order_id, Step::ReserveStock, now_ns, &policy));
                Ok(out)
            }
            SagaInput::Reply { command_id, outcome, detail, now_ns, policy } => {
                let order_id = self.oid()?;
                if self.status.is_terminal() {
                    return Ok(vec![]);
                }
                // A part of the forward step in flight.
                if let Some(stage) = &self.step {
                    if let Some(part) = stage.waiting_for(command_id) {
                        let (step, sku) = (stage.what, part.sku.clone());
                        return Ok(match outcome {
                            Outcome::Succeeded => {
                                let mut out =
                                    vec![SagaEvent::StepSucceeded(StepSucceeded { step, detail, sku })];
                                if stage.done_but(command_id) {
                                    let after = out.iter().fold(self.clone(), |s, e| s.evolve(e));
                                    match step.next_on(self.definition)? {
                                        Some(next) => {
                                            out.extend(after.request_step(order_id, next, now_ns, &policy))
                                        }
                                        None => {
                                            out.push(SagaEvent::SagaCompleted(SagaCompleted { order_id }))
                                        }
                                    }
                                }
                                out
                            }
                            Outcome::Rejected { reason } => self.fail(
                                order_id,
                                StepFailed {
                                    step,
                                    reason: format!("{}: {reason}", step_name(step)),
                                    may_have_applied: false,
                                    by_customer: false,
                                    sku,
                                },
                                now_ns,
                                &policy,
                            ),
                        });
                    }
                }
                // A part of the compensation in flight.
                if let Some(stage) = &self.compensation {
                    if let Some(part) = stage.waiting_for(command_id) {
                        let (done, sku) = (stage.what, part.sku.clone());
                        return Ok(match outcome {
                            Outcome::Succeeded => {
                                let mut out = vec![SagaEvent::CompensationDone(CompensationDone {
                                    compensation: done,
                                    sku,
                                    by_hand: false,
                                })];
                                if stage.done_but(command_id) {
                                    match self.to_compensate.first() {
                                        Some(next) => out.extend(
                                            self.request_compensation(order_id, *next, now_ns, &policy),
                                        ),
                                        None => out.push(SagaEvent::SagaCompensated(SagaCompensated {
                                            order_id,
                                            reason: self.failure.clone().unwrap_or_default(),
                                        })),
                                    }
                                }
                                out
                            }
                            Outcome::Rejected { reason } => vec![SagaEvent::SagaFailed(SagaFailed {
                                order_id,
                                reason: format!(
                                    "{} refused: {reason}",
                                    part_name(compensation_name(done), &sku)
                                ),
                            })],
                        });
                    }
                }
                // A reply to something no longer awaited (a duplicate, a late answer): ignore.
                Ok(vec![])
            }
            SagaInput::CustomerCancelled { now_ns, policy } => {
                let order_id = self.oid()?;
                if self.status != SagaStatus::Running {
                    return Ok(vec![]);
                }
                let Some(step) = self.step.as_ref().map(|p| p.what) else {
                    return Ok(vec![]);
                };
                let failed = StepFailed {
                    step,
                    reason: "cancelled by the customer".into(),
                    may_have_applied: true,
                    by_customer: true,
                    sku: None,
                };
                Ok(self.fail(order_id, failed, now_ns, &policy))
            }
            SagaInput::Operator { action, action_id, operator, reason, now_ns, policy } => {
                self.oid()?;
                if self.has_acted(action_id) {
                    return Ok(vec![]);
                }
                if action == OperatorAction::MarkCompensationDone && reason.trim().is_empty() {
                    return Err(SagaError::ReasonRequired { action });
                }
                let acted = OperatorActed { action, action_id, operator, reason, at_ns: now_ns };
                self.operate(action, acted, now_ns, &policy)
            }
            SagaInput::Tick { now_ns, jitter, policy } => {
                let order_id = self.oid()?;
                if self.is_parked() {
                    return Ok(vec![]);
                }
                if let Some(stage) = &self.step {
                    let overdue: Vec<&Part> = stage.parts.iter().filter(|p| p.overdue(now_ns)).collect();
                    // Confirming is past the point of no return: the stock, the money and the
                    // shipment are undone only while the order is not confirmed, and a confirm
                    // that timed out may have been applied. So it is sent until answered (a
                    // cancelled order answers it with a refusal, which compensates).
                    let quarantine = policy.on_exhausted == OnExhausted::Quarantine;
                    let gives_up = quarantine || stage.what != Step::ConfirmOrder;
                    if let Some(exhausted) =
                        overdue.iter().find(|p| gives_up && p.retry(now_ns, jitter, &policy).is_none())
                    {
                        let why = format!(
                            "{}: no reply after {} attempts",
                            part_name(step_name(stage.what), &exhausted.sku),
                            exhausted.attempt
                        );
                        if quarantine {
                            return Ok(vec![SagaEvent::SagaQuarantined(SagaQuarantined {
                                reason: why,
                                in_compensation: false,
                                sku: exhausted.sku.clone(),
                                at_ns: now_ns,
                            })]);
                        }
                        let failed = StepFailed {
                            step: stage.what,
                            reason: format!(
                                "{}: no reply after {} attempts",
                                part_name(step_name(stage.what), &exhausted.sku),
                                exhausted.attempt
                            ),
                            may_have_applied: true,
                            by_customer: false,
                            sku: None,
                        };
                        return Ok(self.fail(order_id, failed, now_ns, &policy));
                    }
                    if !overdue.is_empty() {
                        return Ok(overdue
                            .iter()
                            .map(|p| {
                                let (attempt, deadline_ns) = p.retry_anyway(now_ns, jitter, &policy);
                                SagaEvent::StepRequested(StepRequested {
                                    step: stage.what,
                                    command_id: p.command_id,
                                    attempt,
                                    deadline_ns,
                                    sku: p.sku.clone(),
                                })
                            })
                            .collect());
                    }
                }
                if let Some(stage) = &self.compensation {
                    let overdue: Vec<&Part> = stage.parts.iter().filter(|p| p.overdue(now_ns)).collect();
                    if let Some(exhausted) =
                        overdue.iter().find(|p| p.retry(now_ns, jitter, &policy).is_none())
                    {
                        let reason = format!(
                            "{}: no reply after {} attempts",
                            part_name(compensation_name(stage.what), &exhausted.sku),
                            exhausted.attempt
                        );
                        if policy.on_exhausted == OnExhausted::Quarantine {
                            return Ok(vec![SagaEvent::SagaQuarantined(SagaQuarantined {
                                reason,
                                in_compensation: true,
                                sku: exhausted.sku.clone(),
                                at_ns: now_ns,
                            })]);
                        }
                        return Ok(vec![SagaEvent::SagaFailed(SagaFailed { order_id, reason })]);
                    }
                    return Ok(overdue
                        .iter()
                        .filter_map(|p| {
                            let (attempt, deadline_ns) = p.retry(now_ns, jitter, &policy)?;
                            Some(SagaEvent::CompensationRequested(CompensationRequested {
                                compensation: stage.what,
                                command_id: p.command_id,
                                attempt,
                                deadline_ns,
                                sku: p.sku.clone(),
                            }))
                        })
                        .collect());
                }
                Ok(vec![])
            }
        }
    }

    fn evolve(mut self, event: &SagaEvent) -> Self {
        match event {
            SagaEvent::SagaStarted(e) => {
                self.definition = e.definition;
                self.policy = e.policy;
                self.order_id = Some(e.order_id);
                self.lines = e.lines.clone();
                self.amount = e.amount;
                self.address = e.address.clone();
                self.status = SagaStatus::Running;
            }
            SagaEvent::StepRequested(e) => {
                let stage = match self.step.take() {
                    Some(stage) if stage.what == e.step => stage,
                    _ => Stage { what: e.step, parts: Vec::new() },
                };
                let mut stage = stage;
                stage.request(e.sku.clone(), e.command_id, e.attempt, e.deadline_ns);
                self.step = Some(stage);
            }
            SagaEvent::StepSucceeded(e) => {
                if e.step == Step::CreateShipment {
                    self.tracking_number.clone_from(&e.detail);
                }
                if let Some(stage) = self.step.as_mut().filter(|s| s.what == e.step) {
                    stage.answer(&e.sku, Answer::Succeeded);
                    if stage.all_succeeded() {
                        self.done.push(e.step);
                        self.step = None;
                    }
                    self.unpark_if_answered(false, &e.sku);
                }
            }
            SagaEvent::StepFailed(e) => {
                if e.step == Step::ReserveStock && !e.may_have_applied {
                    self.refused_sku.clone_from(&e.sku);
                }
                self.to_compensate = self.compensation_plan(e);
                self.failure = Some(e.reason.clone());
                self.failed_step = Some(e.step);
                self.cancelled_by_customer = e.by_customer;
                self.timed_out = e.may_have_applied && !e.by_customer;
                self.step = None;
                self.status = SagaStatus::Compensating;
                self.quarantined = None;
            }
            SagaEvent::CompensationRequested(e) => {
                self.status = SagaStatus::Compensating;
                self.to_compensate.retain(|c| *c != e.compensation);
                let stage = match self.compensation.take() {
                    Some(stage) if stage.what == e.compensation => stage,
                    _ => Stage { what: e.compensation, parts: Vec::new() },
                };
                let mut stage = stage;
                stage.request(e.sku.clone(), e.command_id, e.attempt, e.deadline_ns);
                self.compensation = Some(stage);
            }
            SagaEvent::CompensationDone(e) => {
                if e.by_hand && !self.by_hand.contains(&e.compensation) {
                    self.by_hand.push(e.compensation);
                }
                if let Some(stage) = self.compensation.as_mut().filter(|s| s.what == e.compensation) {
                    stage.answer(&e.sku, Answer::Succeeded);
                    if stage.all_succeeded() {
                        self.compensation = None;
                    }
                    self.unpark_if_answered(true, &e.sku);
                }
            }
            SagaEvent::SagaCompleted(_) => {
                self.status = SagaStatus::Completed;
                self.step = None;
                self.quarantined = None;
            }
            SagaEvent::SagaCompensated(_) => {
                self.status = SagaStatus::Compensated;
                self.compensation = None;
                self.quarantined = None;
            }
            SagaEvent::SagaFailed(_) => {
                // The compensation it stopped at stays, for an operator to finish by hand.
                self.status = SagaStatus::Failed;
                self.step = None;
                self.quarantined = None;
            }
            SagaEvent::SagaQuarantined(e) => {
                self.quarantined = Some(e.clone());
            }
            SagaEvent::OperatorActed(e) => {
                if self.actions.len() >= MAX_REMEMBERED_ACTIONS {
                    self.actions.remove(0);
                }
                self.actions.push(e.action_id);
                match e.action {
                    OperatorAction::Retry | OperatorAction::Resume => {
                        self.quarantined = None;
                        if self.status == SagaStatus::Failed {
                            // The compensation it stopped at is sent again.
                            self.status = SagaStatus::Compensating;
                        }
                        let stages = self.step.iter_mut().flat_map(|s| &mut s.parts);
                        for part in stages.chain(self.compensation.iter_mut().flat_map(|s| &mut s.parts)) {
                            if part.answer == Answer::Waiting {
                                part.budget_from = part.attempt.saturating_add(1);
                            }
                        }
                    }
                    OperatorAction::Compensate => {
                        self.quarantined = None;
                        self.aborted = true;
                    }
                    OperatorAction::MarkCompensationDone => {
                        self.quarantined = None;
                        if self.status == SagaStatus::Failed {
                            self.status = SagaStatus::Compensating;
                        }
                    }
                }
            }
        }
        self
    }
}

impl Saga {
    /// A reply to the part a quarantine stopped at takes the saga out of it.
    fn unpark_if_answered(&mut self, in_compensation: bool, sku: &Option<Sku>) {
        if self.quarantined.as_ref().is_some_and(|q| q.in_compensation == in_compensation && q.sku == *sku) {
            self.quarantined = None;
        }
    }
}

/// `<name>` or `<name>/<sku>`, for messages.
fn part_name(name: &str, sku: &Option<Sku>) -> String {
    match sku {
        None => name.to_owned(),
        Some(sku) => format!("{name}/{sku}"),
    }
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
