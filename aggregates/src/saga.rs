//! The order saga's own state: a pure state machine (stream `saga-<order id>`).
//!
//! Steps run in order: reserve stock → take payment → create shipment → commit stock → confirm
//! the order. Each step is one command to one service, identified by a deterministic command id
//! (its idempotency key, the same on every retry). The saga advances on the service's reply to
//! that command. A rejected step, a step whose retries run out, or a customer cancellation starts
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
    TakePayment,
    CreateShipment,
    CommitStock,
    ConfirmOrder,
}

impl Step {
    /// All steps, in order.
    pub const ALL: [Step; 5] =
        [Step::ReserveStock, Step::TakePayment, Step::CreateShipment, Step::CommitStock, Step::ConfirmOrder];

    fn next(self) -> Option<Step> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// What undoes this step, if anything.
    pub fn compensation(self) -> Option<Compensation> {
        match self {
            Step::ReserveStock => Some(Compensation::ReleaseStock),
            Step::TakePayment => Some(Compensation::RefundPayment),
            Step::CreateShipment => Some(Compensation::CancelShipment),
            // Committed stock has left the warehouse; confirming is the last step.
            Step::CommitStock | Step::ConfirmOrder => None,
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
            SagaCommand::TakePayment { .. } | SagaCommand::RefundPayment { .. } => Service::Payment,
            SagaCommand::CreateShipment { .. } | SagaCommand::CancelShipment { .. } => Service::Shipping,
            SagaCommand::ConfirmOrder { .. } | SagaCommand::CancelOrder { .. } => Service::Order,
        }
    }

    /// The order it concerns.
    pub fn order_id(&self) -> OrderId {
        match self {
            SagaCommand::ReserveStock { order_id, .. }
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
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { step_timeout_ms: 5_000, backoff_base_ms: 200, backoff_cap_ms: 10_000, max_attempts: 4 }
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
}

// ----- events -----

/// `SagaStarted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStarted {
    pub order_id: OrderId,
    pub lines: Vec<SagaLine>,
    pub amount: Money,
    pub address: Option<Address>,
}
impl Upcast for SagaStarted {}

/// `StepRequested`: a command was issued (or re-issued on retry) with a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequested {
    pub step: Step,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
}
impl Upcast for StepRequested {}

/// `StepSucceeded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSucceeded {
    pub step: Step,
    /// What the service answered with (the tracking number of a shipment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
}
impl Upcast for StepFailed {}

/// `CompensationRequested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationRequested {
    pub compensation: Compensation,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
}
impl Upcast for CompensationRequested {}

/// `CompensationDone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationDone {
    pub compensation: Compensation,
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
}
}

/// Why an input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("the saga has not started")]
    NotStarted,
    #[error("an order needs at least one line")]
    NoLines,
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

/// A command awaiting its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<T> {
    pub what: T,
    pub command_id: Uuid,
    pub attempt: u32,
    pub deadline_ns: u64,
}

impl<T> Pending<T> {
    /// The next attempt and its deadline, or `None` when the attempts are used up.
    fn retry(&self, now_ns: u64, jitter: f64, policy: &RetryPolicy) -> Option<(u32, u64)> {
        (self.attempt < policy.max_attempts).then(|| {
            let delay = policy.step_timeout_ms + policy.backoff_ms(self.attempt, jitter);
            (self.attempt + 1, now_ns.saturating_add(ms(delay)))
        })
    }
}

/// The saga's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saga {
    pub order_id: Option<OrderId>,
    pub lines: Vec<SagaLine>,
    pub amount: Money,
    pub address: Option<Address>,
    pub status: SagaStatus,
    /// Steps that succeeded, in order.
    pub done: Vec<Step>,
    /// The forward step in flight.
    pub step: Option<Pending<Step>>,
    /// The compensation in flight.
    pub compensation: Option<Pending<Compensation>>,
    /// Compensations still to run after the current one, in order.
    pub to_compensate: Vec<Compensation>,
    /// Why compensation started.
    pub failure: Option<String>,
    /// The step that failed.
    pub failed_step: Option<Step>,
    /// It failed by running out of time (not by a refusal or a cancellation).
    pub timed_out: bool,
    /// The customer cancelled (the order is already cancelled).
    pub cancelled_by_customer: bool,
    /// The shipment's tracking number, once created.
    pub tracking_number: Option<String>,
}

/// The deterministic id of a command: the same for every retry of the same step, different for
/// every step and saga.
pub fn command_id(order_id: OrderId, what: &str) -> Uuid {
    Uuid::new_v5(&order_id.0, what.as_bytes())
}

fn step_name(s: Step) -> &'static str {
    match s {
        Step::ReserveStock => "step/reserve_stock",
        Step::TakePayment => "step/take_payment",
        Step::CreateShipment => "step/create_shipment",
        Step::CommitStock => "step/commit_stock",
        Step::ConfirmOrder => "step/confirm_order",
    }
}

fn compensation_name(c: Compensation) -> &'static str {
    match c {
        Compensation::CancelShipment => "compensation/cancel_shipment",
        Compensation::RefundPayment => "compensation/refund_payment",
        Compensation::ReleaseStock => "compensation/release_stock",
        Compensation::CancelOrder => "compensation/cancel_order",
    }
}

fn ms(n: u64) -> u64 {
    n.saturating_mul(1_000_000)
}

impl Saga {
    fn oid(&self) -> Result<OrderId, SagaError> {
        self.order_id.ok_or(SagaError::NotStarted)
    }

    /// The command a step sends.
    pub fn step_command(&self, step: Step) -> Option<SagaCommand> {
        let order_id = self.order_id?;
        Some(match step {
            Step::ReserveStock => SagaCommand::ReserveStock { order_id, lines: self.lines.clone() },
            Step::TakePayment => SagaCommand::TakePayment { order_id, amount: self.amount },
            Step::CreateShipment => SagaCommand::CreateShipment { order_id, address: self.address.clone() },
            Step::CommitStock => SagaCommand::CommitStock { order_id, lines: self.lines.clone() },
            Step::ConfirmOrder => {
                SagaCommand::ConfirmOrder { order_id, tracking_number: self.tracking_number.clone() }
            }
        })
    }

    /// The command a compensation sends.
    pub fn compensation_command(&self, c: Compensation) -> Option<SagaCommand> {
        let order_id = self.order_id?;
        let reason = self.failure.clone().unwrap_or_else(|| "compensation".into());
        Some(match c {
            Compensation::CancelShipment => SagaCommand::CancelShipment { order_id, reason },
            Compensation::RefundPayment => SagaCommand::RefundPayment { order_id, reason },
            Compensation::ReleaseStock => SagaCommand::ReleaseStock { order_id, lines: self.lines.clone() },
            Compensation::CancelOrder => SagaCommand::CancelOrder { order_id, reason: self.cancel_reason() },
        })
    }

    /// The command a saga event asks to send, if any.
    pub fn command_of(&self, event: &SagaEvent) -> Option<(Uuid, SagaCommand)> {
        match event {
            SagaEvent::StepRequested(e) => self.step_command(e.step).map(|c| (e.command_id, c)),
            SagaEvent::CompensationRequested(e) => {
                self.compensation_command(e.compensation).map(|c| (e.command_id, c))
            }
            _ => None,
        }
    }

    /// The earliest deadline of a command in flight.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let a = self.step.as_ref().map(|p| p.deadline_ns);
        let b = self.compensation.as_ref().map(|p| p.deadline_ns);
        a.into_iter().chain(b).min()
    }

    fn cancel_reason(&self) -> CancelReason {
        match self.failed_step {
            _ if self.cancelled_by_customer => CancelReason::CustomerRequest,
            _ if self.timed_out => CancelReason::Timeout,
            Some(Step::ReserveStock) => CancelReason::OutOfStock,
            Some(Step::TakePayment) => CancelReason::PaymentDeclined,
            Some(Step::CreateShipment) => CancelReason::ShipmentFailed,
            _ => CancelReason::Timeout,
        }
    }

    fn request_step(&self, order_id: OrderId, step: Step, now_ns: u64, p: &RetryPolicy) -> SagaEvent {
        SagaEvent::StepRequested(StepRequested {
            step,
            command_id: command_id(order_id, step_name(step)),
            attempt: 1,
            deadline_ns: now_ns.saturating_add(ms(p.step_timeout_ms)),
        })
    }

    fn request_compensation(
        &self,
        order_id: OrderId,
        c: Compensation,
        now_ns: u64,
        p: &RetryPolicy,
    ) -> SagaEvent {
        SagaEvent::CompensationRequested(CompensationRequested {
            compensation: c,
            command_id: command_id(order_id, compensation_name(c)),
            attempt: 1,
            deadline_ns: now_ns.saturating_add(ms(p.step_timeout_ms)),
        })
    }

    /// Compensations, in order, for a failure of the step in flight.
    fn compensation_plan(&self, failed: &StepFailed) -> Vec<Compensation> {
        let mut steps: Vec<Step> = self.done.clone();
        if failed.may_have_applied {
            steps.push(failed.step);
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
        let next = match after.to_compensate.first() {
            Some(first) => after.request_compensation(order_id, *first, now_ns, p),
            None => SagaEvent::SagaCompensated(SagaCompensated {
                order_id,
                reason: after.failure.clone().unwrap_or_default(),
            }),
        };
        vec![failed, next]
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
                let started = SagaEvent::SagaStarted(SagaStarted { order_id, lines, amount, address });
                Ok(vec![started, self.request_step(order_id, Step::ReserveStock, now_ns, &policy)])
            }
            SagaInput::Reply { command_id, outcome, detail, now_ns, policy } => {
                let order_id = self.oid()?;
                if self.status.is_terminal() {
                    return Ok(vec![]);
                }
                // The forward step in flight.
                if let Some(p) = self.step.as_ref().filter(|p| p.command_id == command_id) {
                    let step = p.what;
                    return Ok(match outcome {
                        Outcome::Succeeded => {
                            let mut out = vec![SagaEvent::StepSucceeded(StepSucceeded { step, detail })];
                            match step.next() {
                                Some(next) => out.push(self.request_step(order_id, next, now_ns, &policy)),
                                None => out.push(SagaEvent::SagaCompleted(SagaCompleted { order_id })),
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
                            },
                            now_ns,
                            &policy,
                        ),
                    });
                }
                // The compensation in flight.
                if let Some(p) = self.compensation.as_ref().filter(|p| p.command_id == command_id) {
                    let done = p.what;
                    return Ok(match outcome {
                        Outcome::Succeeded => {
                            let mut out =
                                vec![SagaEvent::CompensationDone(CompensationDone { compensation: done })];
                            match self.to_compensate.first() {
                                Some(next) => {
                                    out.push(self.request_compensation(order_id, *next, now_ns, &policy))
                                }
                                None => out.push(SagaEvent::SagaCompensated(SagaCompensated {
                                    order_id,
                                    reason: self.failure.clone().unwrap_or_default(),
                                })),
                            }
                            out
                        }
                        Outcome::Rejected { reason } => vec![SagaEvent::SagaFailed(SagaFailed {
                            order_id,
                            reason: format!("{} refused: {reason}", compensation_name(done)),
                        })],
                    });
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
                };
                Ok(self.fail(order_id, failed, now_ns, &policy))
            }
            SagaInput::Tick { now_ns, jitter, policy } => {
                let order_id = self.oid()?;
                if let Some(p) = self.step.as_ref().filter(|p| p.deadline_ns <= now_ns) {
                    if let Some((attempt, deadline_ns)) = p.retry(now_ns, jitter, &policy) {
                        return Ok(vec![SagaEvent::StepRequested(StepRequested {
                            step: p.what,
                            command_id: p.command_id,
                            attempt,
                            deadline_ns,
                        })]);
                    }
                    let failed = StepFailed {
                        step: p.what,
                        reason: format!("{}: no reply after {} attempts", step_name(p.what), p.attempt),
                        may_have_applied: true,
                        by_customer: false,
                    };
                    return Ok(self.fail(order_id, failed, now_ns, &policy));
                }
                if let Some(p) = self.compensation.as_ref().filter(|p| p.deadline_ns <= now_ns) {
                    if let Some((attempt, deadline_ns)) = p.retry(now_ns, jitter, &policy) {
                        return Ok(vec![SagaEvent::CompensationRequested(CompensationRequested {
                            compensation: p.what,
                            command_id: p.command_id,
                            attempt,
                            deadline_ns,
                        })]);
                    }
                    return Ok(vec![SagaEvent::SagaFailed(SagaFailed {
                        order_id,
                        reason: format!(
                            "{}: no reply after {} attempts",
                            compensation_name(p.what),
                            p.attempt
                        ),
                    })]);
                }
                Ok(vec![])
            }
        }
    }

    fn evolve(mut self, event: &SagaEvent) -> Self {
        match event {
            SagaEvent::SagaStarted(e) => {
                self.order_id = Some(e.order_id);
                self.lines = e.lines.clone();
                self.amount = e.amount;
                self.address = e.address.clone();
                self.status = SagaStatus::Running;
            }
            SagaEvent::StepRequested(e) => {
                self.step = Some(Pending {
                    what: e.step,
                    command_id: e.command_id,
                    attempt: e.attempt,
                    deadline_ns: e.deadline_ns,
                });
            }
            SagaEvent::StepSucceeded(e) => {
                if e.step == Step::CreateShipment {
                    self.tracking_number.clone_from(&e.detail);
                }
                self.done.push(e.step);
                self.step = None;
            }
            SagaEvent::StepFailed(e) => {
                self.to_compensate = self.compensation_plan(e);
                self.failure = Some(e.reason.clone());
                self.failed_step = Some(e.step);
                self.cancelled_by_customer = e.by_customer;
                self.timed_out = e.may_have_applied && !e.by_customer;
                self.step = None;
                self.status = SagaStatus::Compensating;
            }
            SagaEvent::CompensationRequested(e) => {
                self.status = SagaStatus::Compensating;
                self.to_compensate.retain(|c| *c != e.compensation);
                self.compensation = Some(Pending {
                    what: e.compensation,
                    command_id: e.command_id,
                    attempt: e.attempt,
                    deadline_ns: e.deadline_ns,
                });
            }
            SagaEvent::CompensationDone(_) => self.compensation = None,
            SagaEvent::SagaCompleted(_) => {
                self.status = SagaStatus::Completed;
                self.step = None;
            }
            SagaEvent::SagaCompensated(_) => {
                self.status = SagaStatus::Compensated;
                self.compensation = None;
            }
            SagaEvent::SagaFailed(_) => {
                self.status = SagaStatus::Failed;
                self.step = None;
                self.compensation = None;
            }
        }
        self
    }
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
