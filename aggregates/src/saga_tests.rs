//! Given/when/then tests of the saga state machine.

use super::*;
use crate::codec::DomainEvent;
use crate::testing::given;

const NOW: u64 = 1_000_000_000_000;

/// The policy of the compensate-on-exhaustion tests.
fn policy() -> RetryPolicy {
    RetryPolicy {
        step_timeout_ms: 1000,
        backoff_base_ms: 100,
        backoff_cap_ms: 800,
        max_attempts: 3,
        on_exhausted: OnExhausted::Compensate,
    }
}

/// The default: a step that runs out of attempts parks the saga.
fn quarantining() -> RetryPolicy {
    RetryPolicy { on_exhausted: OnExhausted::Quarantine, ..policy() }
}

fn operator(action: OperatorAction, action_id: u128, reason: &str, now_ns: u64) -> SagaInput {
    SagaInput::Operator {
        action,
        action_id: Uuid::from_u128(action_id),
        operator: "ops@example.com".into(),
        reason: reason.into(),
        now_ns,
        policy: quarantining(),
    }
}

fn acted(action: OperatorAction, action_id: u128, reason: &str, at_ns: u64) -> SagaEvent {
    SagaEvent::OperatorActed(OperatorActed {
        action,
        action_id: Uuid::from_u128(action_id),
        operator: "ops@example.com".into(),
        reason: reason.into(),
        at_ns,
    })
}

fn oid() -> OrderId {
    OrderId(Uuid::from_u128(42))
}

fn lines() -> Vec<SagaLine> {
    vec![SagaLine { sku: Sku::from("A"), quantity: 2 }]
}

fn started() -> SagaEvent {
    SagaEvent::SagaStarted(SagaStarted {
        order_id: oid(),
        lines: lines(),
        amount: Money(3998),
        address: None,
        definition: DEFINITION,
        policy: Some(policy()),
    })
}

/// The order's start, as its `OrderPlaced` gives it.
fn start_input() -> SagaInput {
    SagaInput::Start {
        order_id: oid(),
        lines: lines(),
        amount: Money(3998),
        address: None,
        now_ns: NOW,
        policy: policy(),
    }
}

/// The SKU of a per-SKU part in these tests (the order has one SKU, `A`).
fn sku_of_step(step: Step) -> Option<Sku> {
    matches!(step, Step::ReserveStock | Step::CommitStock).then(|| Sku::from("A"))
}

fn sku_of_comp(c: Compensation) -> Option<Sku> {
    (c == Compensation::ReleaseStock).then(|| Sku::from("A"))
}

fn cid(step: Step) -> Uuid {
    part_command_id(oid(), step_name(step), sku_of_step(step).as_ref())
}

fn ccid(c: Compensation) -> Uuid {
    part_command_id(oid(), compensation_name(c), sku_of_comp(c).as_ref())
}

fn requested(step: Step, attempt: u32, deadline_ns: u64) -> SagaEvent {
    SagaEvent::StepRequested(StepRequested {
        step,
        command_id: cid(step),
        attempt,
        deadline_ns,
        sku: sku_of_step(step),
    })
}

fn req(step: Step) -> SagaEvent {
    requested(step, 1, NOW + 1_000_000_000)
}

fn succeeded(step: Step) -> SagaEvent {
    SagaEvent::StepSucceeded(StepSucceeded { step, detail: None, sku: sku_of_step(step) })
}

fn comp(c: Compensation) -> SagaEvent {
    SagaEvent::CompensationRequested(CompensationRequested {
        compensation: c,
        command_id: ccid(c),
        attempt: 1,
        deadline_ns: NOW + 1_000_000_000,
        sku: sku_of_comp(c),
    })
}

fn comp_done(c: Compensation) -> SagaEvent {
    SagaEvent::CompensationDone(CompensationDone { compensation: c, sku: sku_of_comp(c), by_hand: false })
}

fn done_by_hand(c: Compensation) -> SagaEvent {
    SagaEvent::CompensationDone(CompensationDone { compensation: c, sku: sku_of_comp(c), by_hand: true })
}

fn ok(command_id: Uuid) -> SagaInput {
    SagaInput::Reply { command_id, outcome: Outcome::Succeeded, detail: None, now_ns: NOW, policy: policy() }
}

fn rejected(command_id: Uuid, reason: &str) -> SagaInput {
    SagaInput::Reply {
        command_id,
        outcome: Outcome::Rejected { reason: reason.into() },
        detail: None,
        now_ns: NOW,
        policy: policy(),
    }
}

fn failed(step: Step, reason: &str, may_have_applied: bool, by_customer: bool) -> SagaEvent {
    // A refusal of a stock step names its SKU.
    let sku = if may_have_applied { None } else { sku_of_step(step) };
    SagaEvent::StepFailed(StepFailed { step, reason: reason.into(), may_have_applied, by_customer, sku })
}

/// History up to (and including) the request of `step`.
fn running_at(step: Step) -> Vec<SagaEvent> {
    let mut h = vec![started()];
    for s in Step::ALL {
        h.push(req(s));
        if s == step {
            break;
        }
        h.push(succeeded(s));
    }
    h
}

#[test]
fn start_requests_the_reservation() {
    let state = given::<Saga>([]).when(start_input()).then([started(), req(Step::ReserveStock)]);
    assert_eq!(state.status, SagaStatus::Running);
    let (id, cmd) = state.command_of(&req(Step::ReserveStock)).expect("a command");
    assert_eq!(id, cid(Step::ReserveStock));
    assert_ne!(id, command_id(oid(), "step/reserve_stock"), "one command per SKU");
    assert_eq!(cmd, SagaCommand::ReserveStock { order_id: oid(), lines: lines() });
    assert_eq!(cmd.service(), Service::Inventory);
    assert_eq!(state.next_deadline_ns(), Some(NOW + 1_000_000_000));
}

#[test]
fn a_redelivered_start_changes_nothing_and_an_empty_order_is_refused() {
    given::<Saga>([started()])
        .when(SagaInput::Start {
            order_id: oid(),
            lines: lines(),
            amount: Money(1),
            address: None,
            now_ns: NOW,
            policy: policy(),
        })
        .then([]);
    given::<Saga>([])
        .when(SagaInput::Start {
            order_id: oid(),
            lines: vec![],
            amount: Money(1),
            address: None,
            now_ns: NOW,
            policy: policy(),
        })
        .then_error(SagaError::NoLines);
    given::<Saga>([]).when(ok(Uuid::nil())).then_error(SagaError::NotStarted);
}

#[test]
fn happy_path_runs_every_step_then_completes() {
    let mut history = vec![started(), req(Step::ReserveStock)];
    for (i, step) in Step::ALL.into_iter().enumerate() {
        let mut expected = vec![succeeded(step)];
        match Step::ALL.get(i + 1) {
            Some(next) => expected.push(req(*next)),
            None => expected.push(SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() })),
        }
        given::<Saga>(history.clone()).when(ok(cid(step))).then(expected.clone());
        history.extend(expected);
    }
    let state = Saga::replay(&history);
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(state.done, Step::ALL.to_vec());
    assert_eq!(state.next_deadline_ns(), None);
    // Every step's command goes to the right service.
    let services: Vec<_> =
        Step::ALL.iter().map(|s| state.step_command(*s, None).expect("cmd").service()).collect();
    assert_eq!(
        services,
        vec![
            Service::Inventory,
            Service::Payment,
            Service::Payment,
            Service::Shipping,
            Service::Inventory,
            Service::Order
        ]
    );
}

#[test]
fn out_of_stock_cancels_the_order_only() {
    let state = given::<Saga>(running_at(Step::ReserveStock))
        .when(rejected(cid(Step::ReserveStock), "SKU A: 1 available"))
        .then([
            failed(Step::ReserveStock, "step/reserve_stock: SKU A: 1 available", false, false),
            comp(Compensation::CancelOrder),
        ]);
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::OutOfStock })
    );
    let state = given::<Saga>(running_at(Step::ReserveStock).into_iter().chain([
        failed(Step::ReserveStock, "step/reserve_stock: x", false, false),
        comp(Compensation::CancelOrder),
    ]))
    .when(ok(ccid(Compensation::CancelOrder)))
    .then([
        comp_done(Compensation::CancelOrder),
        SagaEvent::SagaCompensated(SagaCompensated {
            order_id: oid(),
            reason: "step/reserve_stock: x".into(),
        }),
    ]);
    assert_eq!(state.status, SagaStatus::Compensated);
}

#[test]
fn payment_declined_releases_stock_then_cancels() {
    let h = running_at(Step::TakePayment);
    let state = given::<Saga>(h.clone()).when(rejected(cid(Step::TakePayment), "insufficient funds")).then([
        failed(Step::TakePayment, "step/take_payment: insufficient funds", false, false),
        comp(Compensation::ReleaseStock),
    ]);
    assert_eq!(state.to_compensate, vec![Compensation::CancelOrder]);
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::PaymentDeclined })
    );
    let h: Vec<_> = h
        .into_iter()
        .chain([
            failed(Step::TakePayment, "step/take_payment: insufficient funds", false, false),
            comp(Compensation::ReleaseStock),
        ])
        .collect();
    given::<Saga>(h)
        .when(ok(ccid(Compensation::ReleaseStock)))
        .then([comp_done(Compensation::ReleaseStock), comp(Compensation::CancelOrder)]);
}

#[test]
fn shipment_failure_refunds_releases_and_cancels_in_reverse() {
    let mut h = running_at(Step::CreateShipment);
    let out = [
        failed(Step::CreateShipment, "step/create_shipment: undeliverable", false, false),
        comp(Compensation::RefundPayment),
    ];
    given::<Saga>(h.clone()).when(rejected(cid(Step::CreateShipment), "undeliverable")).then(out.clone());
    h.extend(out);
    let mut order = vec![];
    let mut state = Saga::replay(&h);
    while let Some(p) = state.compensation.clone() {
        order.push(p.what);
        let events = state.decide(ok(p.parts[0].command_id)).expect("decide");
        state = events.iter().fold(state, |s, e| s.evolve(e));
    }
    assert_eq!(
        order,
        vec![Compensation::RefundPayment, Compensation::ReleaseStock, Compensation::CancelOrder]
    );
    assert_eq!(state.status, SagaStatus::Compensated);
}

#[test]
fn customer_cancel_mid_saga_undoes_what_was_done_and_what_is_in_flight() {
    let h = running_at(Step::TakePayment);
    let state = given::<Saga>(h).when(SagaInput::CustomerCancelled { now_ns: NOW, policy: policy() }).then([
        failed(Step::TakePayment, "cancelled by the customer", true, true),
        comp(Compensation::RefundPayment),
    ]);
    // The order is already cancelled by the customer: no CancelOrder.
    assert_eq!(state.to_compensate, vec![Compensation::ReleaseStock]);
    // A customer cancel after the saga ended changes nothing.
    let mut done = running_at(Step::ConfirmOrder);
    done.extend([succeeded(Step::ConfirmOrder), SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() })]);
    given::<Saga>(done).when(SagaInput::CustomerCancelled { now_ns: NOW, policy: policy() }).then([]);
}

#[test]
fn customer_cancel_during_reservation_releases_possible_stock() {
    let state = given::<Saga>(running_at(Step::ReserveStock))
        .when(SagaInput::CustomerCancelled { now_ns: NOW, policy: policy() })
        .then([
            failed(Step::ReserveStock, "cancelled by the customer", true, true),
            comp(Compensation::ReleaseStock),
        ]);
    assert!(state.to_compensate.is_empty());
}

#[test]
fn an_overdue_step_is_retried_with_backoff_then_compensated() {
    let h = running_at(Step::CreateShipment);
    let deadline = NOW + 1_000_000_000;
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: deadline - 1, jitter: 0.5, policy: policy() })
        .then([]);
    // Attempt 2: same command id (the idempotency key), new deadline = timeout + backoff.
    let backoff = policy().backoff_ms(1, 0.0);
    let retry = requested(Step::CreateShipment, 2, deadline + (1000 + backoff) * 1_000_000);
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: deadline, jitter: 0.0, policy: policy() })
        .then([retry.clone()]);
    // Attempt 3 is the last; when it is overdue, compensate, including the step in flight.
    let last = requested(Step::CreateShipment, 3, deadline + 5_000_000_000);
    let mut h = h;
    h.extend([retry, last]);
    let state = given::<Saga>(h)
        .when(SagaInput::Tick { now_ns: deadline + 5_000_000_000, jitter: 0.3, policy: policy() })
        .then([
            failed(Step::CreateShipment, "step/create_shipment: no reply after 3 attempts", true, false),
            SagaEvent::CompensationRequested(CompensationRequested {
                compensation: Compensation::CancelShipment,
                command_id: ccid(Compensation::CancelShipment),
                attempt: 1,
                deadline_ns: deadline + 5_000_000_000 + 1_000_000_000,
                sku: None,
            }),
        ]);
    assert_eq!(
        state.to_compensate,
        vec![Compensation::RefundPayment, Compensation::ReleaseStock, Compensation::CancelOrder]
    );
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::Timeout })
    );
}

#[test]
fn a_compensation_that_never_answers_or_is_refused_fails_the_saga() {
    let mut h = running_at(Step::TakePayment);
    h.extend([
        failed(Step::TakePayment, "step/take_payment: x", false, false),
        comp(Compensation::ReleaseStock),
    ]);
    let late = NOW + 100_000_000_000;
    let retry =
        given::<Saga>(h.clone()).when(SagaInput::Tick { now_ns: late, jitter: 1.0, policy: policy() });
    let state = retry.then([SagaEvent::CompensationRequested(CompensationRequested {
        compensation: Compensation::ReleaseStock,
        command_id: ccid(Compensation::ReleaseStock),
        attempt: 2,
        deadline_ns: late + (1000 + policy().backoff_ms(1, 1.0)) * 1_000_000,
        sku: Some(Sku::from("A")),
    })]);
    assert_eq!(state.compensation.as_ref().map(|p| p.parts[0].attempt), Some(2));
    let mut exhausted = h.clone();
    exhausted.push(SagaEvent::CompensationRequested(CompensationRequested {
        compensation: Compensation::ReleaseStock,
        command_id: ccid(Compensation::ReleaseStock),
        attempt: 3,
        deadline_ns: late,
        sku: Some(Sku::from("A")),
    }));
    let state = given::<Saga>(exhausted)
        .when(SagaInput::Tick { now_ns: late, jitter: 0.0, policy: policy() })
        .then([SagaEvent::SagaFailed(SagaFailed {
            order_id: oid(),
            reason: "compensation/release_stock/A: no reply after 3 attempts".into(),
        })]);
    assert_eq!(state.status, SagaStatus::Failed);
    given::<Saga>(h).when(rejected(ccid(Compensation::ReleaseStock), "no")).then([SagaEvent::SagaFailed(
        SagaFailed { order_id: oid(), reason: "compensation/release_stock/A refused: no".into() },
    )]);
}

#[test]
fn duplicate_and_late_replies_are_ignored() {
    let h = running_at(Step::TakePayment);
    // The reservation's reply arrives again.
    given::<Saga>(h.clone()).when(ok(cid(Step::ReserveStock))).then([]);
    given::<Saga>(h).when(ok(Uuid::from_u128(999))).then([]);
    let mut done = running_at(Step::ConfirmOrder);
    done.extend([succeeded(Step::ConfirmOrder), SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() })]);
    given::<Saga>(done.clone()).when(ok(cid(Step::ConfirmOrder))).then([]);
    given::<Saga>(done).when(SagaInput::Tick { now_ns: u64::MAX, jitter: 0.0, policy: policy() }).then([]);
}

#[test]
fn backoff_is_exponential_capped_and_jittered() {
    let p = policy();
    assert_eq!(p.backoff_ms(1, 0.0), 50);
    assert_eq!(p.backoff_ms(1, 1.0), 100);
    assert_eq!(p.backoff_ms(2, 1.0), 200);
    assert_eq!(p.backoff_ms(3, 1.0), 400);
    assert_eq!(p.backoff_ms(10, 1.0), 800);
    assert_eq!(p.backoff_ms(60, 0.0), 400);
    for j in [0.0, 0.25, 0.5, 1.0, 7.0, -1.0] {
        let b = p.backoff_ms(3, j);
        assert!((200..=400).contains(&b), "{b}");
    }
}

#[test]
fn command_ids_are_stable_and_distinct() {
    assert_eq!(cid(Step::TakePayment), cid(Step::TakePayment));
    assert_ne!(cid(Step::TakePayment), cid(Step::ReserveStock));
    assert_ne!(command_id(OrderId(Uuid::from_u128(1)), "step/take_payment"), cid(Step::TakePayment));
}

#[test]
fn saga_events_round_trip() {
    let events = [
        started(),
        req(Step::TakePayment),
        succeeded(Step::TakePayment),
        failed(Step::CreateShipment, "x", true, false),
        comp(Compensation::RefundPayment),
        comp_done(Compensation::RefundPayment),
        SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() }),
        SagaEvent::SagaCompensated(SagaCompensated { order_id: oid(), reason: "r".into() }),
        SagaEvent::SagaFailed(SagaFailed { order_id: oid(), reason: "r".into() }),
    ];
    for e in events {
        assert_eq!(
            SagaEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode"),
            e
        );
    }
    let cmd = SagaCommand::CreateShipment { order_id: oid(), address: None };
    let json = serde_json::to_vec(&cmd).expect("json");
    assert_eq!(serde_json::from_slice::<SagaCommand>(&json).expect("back"), cmd);
}

#[test]
fn the_tracking_number_from_the_shipment_reply_goes_to_the_order_confirmation() {
    // When the shipping service answers with a tracking number, the saga records it...
    let state = given::<Saga>(running_at(Step::CreateShipment))
        .when(SagaInput::Reply {
            command_id: cid(Step::CreateShipment),
            outcome: Outcome::Succeeded,
            detail: Some("TRK-42".into()),
            now_ns: NOW,
            policy: policy(),
        })
        .then([
            SagaEvent::StepSucceeded(StepSucceeded {
                step: Step::CreateShipment,
                detail: Some("TRK-42".into()),
                sku: None,
            }),
            req(Step::CommitStock),
        ]);
    assert_eq!(state.tracking_number.as_deref(), Some("TRK-42"));
    // ...and the confirmation carries it to the order service, on whichever node that runs.
    let mut history = running_at(Step::CreateShipment);
    history.push(SagaEvent::StepSucceeded(StepSucceeded {
        step: Step::CreateShipment,
        detail: Some("TRK-42".into()),
        sku: None,
    }));
    history.push(req(Step::CommitStock));
    history.push(succeeded(Step::CommitStock));
    history.push(req(Step::ConfirmOrder));
    let given = given::<Saga>(history);
    let (_, cmd) = given.state().command_of(&req(Step::ConfirmOrder)).expect("a command");
    assert_eq!(cmd, SagaCommand::ConfirmOrder { order_id: oid(), tracking_number: Some("TRK-42".into()) });
    // A StepSucceeded recorded before the detail existed reads as none.
    let old: StepSucceeded = serde_json::from_str(r#"{"step":"create_shipment"}"#).expect("old event");
    assert_eq!(old.detail, None);
}

/// Two SKUs, `A` (2 units) and `B` (1 unit, listed twice).
fn two_skus() -> Vec<SagaLine> {
    vec![
        SagaLine { sku: Sku::from("B"), quantity: 1 },
        SagaLine { sku: Sku::from("A"), quantity: 2 },
        SagaLine { sku: Sku::from("B"), quantity: 1 },
    ]
}

fn start_two() -> SagaInput {
    SagaInput::Start {
        order_id: oid(),
        lines: two_skus(),
        amount: Money(100),
        address: None,
        now_ns: NOW,
        policy: policy(),
    }
}

fn part_cid(name: &str, sku: &str) -> Uuid {
    part_command_id(oid(), name, Some(&Sku::from(sku)))
}

fn reply(command_id: Uuid, outcome: Outcome) -> SagaInput {
    SagaInput::Reply { command_id, outcome, detail: None, now_ns: NOW, policy: policy() }
}

/// Applies an input and returns the state after the events it produced.
fn step(state: Saga, input: SagaInput) -> (Saga, Vec<SagaEvent>) {
    let events = state.decide(input).expect("decide");
    (events.iter().fold(state, |s, e| s.evolve(e)), events)
}

#[test]
fn the_stock_steps_send_one_command_per_sku_with_its_merged_quantity() {
    let (state, events) = step(Saga::default(), start_two());
    let parts: Vec<_> = events[1..].iter().map(|e| state.command_of(e).expect("a command")).collect();
    assert_eq!(
        parts,
        vec![
            (
                part_cid("step/reserve_stock", "A"),
                SagaCommand::ReserveStock {
                    order_id: oid(),
                    lines: vec![SagaLine { sku: Sku::from("A"), quantity: 2 }]
                }
            ),
            (
                part_cid("step/reserve_stock", "B"),
                SagaCommand::ReserveStock {
                    order_id: oid(),
                    lines: vec![SagaLine { sku: Sku::from("B"), quantity: 2 }]
                }
            ),
        ]
    );
    // One SKU answered: the step waits for the other.
    let (state, events) = step(state, reply(part_cid("step/reserve_stock", "B"), Outcome::Succeeded));
    assert_eq!(
        events,
        vec![SagaEvent::StepSucceeded(StepSucceeded {
            step: Step::ReserveStock,
            detail: None,
            sku: Some(Sku::from("B"))
        })]
    );
    assert!(state.done.is_empty());
    // A repeated answer of the same SKU changes nothing.
    assert_eq!(state.decide(reply(part_cid("step/reserve_stock", "B"), Outcome::Succeeded)), Ok(vec![]));
    // The last one: the step is done and the fraud check (before the payment) is requested.
    let (state, events) = step(state, reply(part_cid("step/reserve_stock", "A"), Outcome::Succeeded));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(state.done, vec![Step::ReserveStock]);
    assert_eq!(state.step.as_ref().map(|s| s.what), Some(Step::CheckFraud));
}

#[test]
fn a_refused_sku_releases_exactly_the_other_skus() {
    let (state, _) = step(Saga::default(), start_two());
    let (state, _) = step(state, reply(part_cid("step/reserve_stock", "A"), Outcome::Succeeded));
    // B is refused: A (granted) is released, B (refused) is not; then the order is cancelled.
    let (state, events) = step(
        state,
        reply(part_cid("step/reserve_stock", "B"), Outcome::Rejected { reason: "B: 0 available".into() }),
    );
    let releases: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::CompensationRequested(r) => Some((r.compensation, r.sku.clone(), r.command_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        releases,
        vec![(Compensation::ReleaseStock, Some(Sku::from("A")), part_cid("compensation/release_stock", "A"))]
    );
    assert_eq!(state.refused_sku, Some(Sku::from("B")));
    assert_eq!(state.to_compensate, vec![Compensation::CancelOrder]);
    let (state, events) = step(state, reply(part_cid("compensation/release_stock", "A"), Outcome::Succeeded));
    assert!(
        matches!(events.last(), Some(SagaEvent::CompensationRequested(r)) if r.compensation == Compensation::CancelOrder)
    );
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::OutOfStock })
    );
}

#[test]
fn a_refusal_while_another_sku_is_in_flight_releases_the_one_in_flight_too() {
    let (state, _) = step(Saga::default(), start_two());
    // A is refused first, B has not answered: B's reservation may still take effect.
    let (state, events) =
        step(state, reply(part_cid("step/reserve_stock", "A"), Outcome::Rejected { reason: "no".into() }));
    let released: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::CompensationRequested(r) => r.sku.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![Sku::from("B")]);
    // B's late success is not awaited any more.
    assert_eq!(state.decide(reply(part_cid("step/reserve_stock", "B"), Outcome::Succeeded)), Ok(vec![]));
}

#[test]
fn a_single_sku_refused_releases_nothing() {
    let (state, _) = step(
        Saga::default(),
        SagaInput::Start {
            order_id: oid(),
            lines: lines(),
            amount: Money(1),
            address: None,
            now_ns: NOW,
            policy: policy(),
        },
    );
    let (state, events) = step(state, rejected(cid(Step::ReserveStock), "none"));
    assert!(!events.iter().any(
        |e| matches!(e, SagaEvent::CompensationRequested(r) if r.compensation == Compensation::ReleaseStock)
    ));
    assert_eq!(state.compensation.as_ref().map(|c| c.what), Some(Compensation::CancelOrder));
}

#[test]
fn a_release_of_several_skus_ends_when_every_sku_is_released() {
    let (mut state, _) = step(Saga::default(), start_two());
    for sku in ["A", "B"] {
        state = step(state, reply(part_cid("step/reserve_stock", sku), Outcome::Succeeded)).0;
    }
    state = step(state, reply(command_id(oid(), "step/check_fraud"), Outcome::Succeeded)).0;
    // Payment declined: both SKUs are released, in parallel, then the order is cancelled.
    let (state, events) = step(
        state,
        reply(command_id(oid(), "step/take_payment"), Outcome::Rejected { reason: "declined".into() }),
    );
    assert_eq!(events.len(), 3, "StepFailed and a release per SKU: {events:?}");
    let (state, events) = step(state, reply(part_cid("compensation/release_stock", "B"), Outcome::Succeeded));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(state.compensation.as_ref().map(|c| c.what), Some(Compensation::ReleaseStock));
    let (state, events) = step(state, reply(part_cid("compensation/release_stock", "A"), Outcome::Succeeded));
    assert!(
        matches!(events.last(), Some(SagaEvent::CompensationRequested(r)) if r.compensation == Compensation::CancelOrder)
    );
    assert_eq!(state.to_compensate, Vec::<Compensation>::new());
}

#[test]
fn only_the_overdue_sku_is_retried_and_the_step_fails_when_one_runs_out() {
    let (state, _) = step(Saga::default(), start_two());
    let (state, _) = step(state, reply(part_cid("step/reserve_stock", "A"), Outcome::Succeeded));
    let deadline = NOW + 1_000_000_000;
    let (state, events) = step(state, SagaInput::Tick { now_ns: deadline, jitter: 0.0, policy: policy() });
    assert_eq!(
        events,
        vec![SagaEvent::StepRequested(StepRequested {
            step: Step::ReserveStock,
            command_id: part_cid("step/reserve_stock", "B"),
            attempt: 2,
            deadline_ns: deadline + (1000 + policy().backoff_ms(1, 0.0)) * 1_000_000,
            sku: Some(Sku::from("B")),
        })]
    );
    let (state, _) = step(state, SagaInput::Tick { now_ns: u64::MAX / 4, jitter: 0.0, policy: policy() });
    let (state, events) =
        step(state, SagaInput::Tick { now_ns: u64::MAX / 2, jitter: 0.0, policy: policy() });
    assert!(
        matches!(&events[0], SagaEvent::StepFailed(f) if f.may_have_applied && f.reason.contains("reserve_stock/B")),
        "{events:?}"
    );
    // A timed-out reservation may have applied: both SKUs are released.
    let released: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SagaEvent::CompensationRequested(r) => r.sku.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![Sku::from("A"), Sku::from("B")]);
    assert_eq!(state.status, SagaStatus::Compensating);
}

#[test]
fn a_saga_recorded_before_the_per_sku_split_carries_on() {
    // An old history: one reservation command for every line, without a SKU.
    let old = |json: &str| SagaEvent::decode("StepRequested", 1, json.as_bytes()).expect("old event");
    let whole = command_id(oid(), "step/reserve_stock");
    let requested = old(&format!(
        r#"{{"step":"reserve_stock","command_id":"{whole}","attempt":1,"deadline_ns":{}}}"#,
        NOW + 1
    ));
    let h = vec![
        SagaEvent::SagaStarted(SagaStarted {
            order_id: oid(),
            lines: two_skus(),
            amount: Money(1),
            address: None,
            definition: 1,
            policy: None,
        }),
        requested.clone(),
    ];
    let state = Saga::replay(&h);
    assert_eq!(
        state.command_of(&requested).map(|c| c.1),
        Some(SagaCommand::ReserveStock { order_id: oid(), lines: two_skus() })
    );
    // Its reply completes the whole step; commit then goes per SKU.
    let (state, events) = step(state, reply(whole, Outcome::Succeeded));
    assert_eq!(state.done, vec![Step::ReserveStock]);
    assert_eq!(events.len(), 2, "{events:?}");
    // A refusal of the whole (all-or-nothing) reservation releases nothing.
    let (_, events) = step(Saga::replay(&h), reply(whole, Outcome::Rejected { reason: "short".into() }));
    assert!(!events.iter().any(
        |e| matches!(e, SagaEvent::CompensationRequested(r) if r.compensation == Compensation::ReleaseStock)
    ));
}

#[test]
fn a_stock_commit_refused_after_another_sku_committed_compensates_every_sku() {
    let (mut state, _) = step(Saga::default(), start_two());
    for sku in ["A", "B"] {
        state = step(state, reply(part_cid("step/reserve_stock", sku), Outcome::Succeeded)).0;
    }
    state = step(state, reply(command_id(oid(), "step/check_fraud"), Outcome::Succeeded)).0;
    state = step(state, reply(command_id(oid(), "step/take_payment"), Outcome::Succeeded)).0;
    state = step(state, reply(command_id(oid(), "step/create_shipment"), Outcome::Succeeded)).0;
    assert_eq!(state.step.as_ref().map(|s| s.what), Some(Step::CommitStock));
    // A committed, B's commit is refused: the shipment is cancelled, the money refunded and the
    // stock of both SKUs released (the inventory puts A's committed stock back on the shelf).
    let (state, _) = step(state, reply(part_cid("step/commit_stock", "A"), Outcome::Succeeded));
    let (mut state, events) = step(
        state,
        reply(part_cid("step/commit_stock", "B"), Outcome::Rejected { reason: "no reservation".into() }),
    );
    assert_eq!(state.status, SagaStatus::Compensating);
    assert!(events.iter().any(
        |e| matches!(e, SagaEvent::CompensationRequested(r) if r.compensation == Compensation::CancelShipment)
    ));
    for c in [Compensation::CancelShipment, Compensation::RefundPayment] {
        state = step(state, reply(command_id(oid(), compensation_name(c)), Outcome::Succeeded)).0;
    }
    let released: Vec<Option<String>> = state
        .compensation
        .as_ref()
        .map(|c| c.parts.iter().map(|p| p.sku.as_ref().map(|s| s.to_string())).collect())
        .unwrap_or_default();
    assert_eq!(released, vec![Some("A".to_owned()), Some("B".to_owned())]);
}

#[test]
fn confirming_the_order_is_retried_past_the_attempt_limit_never_compensated() {
    // Attempt 3 of the confirm is the policy's last, and it is overdue: a confirm that timed out
    // may have been applied, so it is sent again instead of undoing stock, money and shipment.
    let deadline = NOW + 1_000_000_000;
    let mut h = running_at(Step::ConfirmOrder);
    h.extend([
        requested(Step::ConfirmOrder, 2, deadline + 2_000_000_000),
        requested(Step::ConfirmOrder, 3, deadline + 5_000_000_000),
    ]);
    let now = deadline + 5_000_000_000;
    let backoff = policy().backoff_ms(3, 0.0);
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: now, jitter: 0.0, policy: policy() })
        .then([requested(Step::ConfirmOrder, 4, now + (1000 + backoff) * 1_000_000)]);
    // Its answer still ends the saga: done, or refused (the customer cancelled first) which
    // compensates.
    h.push(requested(Step::ConfirmOrder, 4, now + 2_000_000_000));
    let waiting = given::<Saga>(h).state().clone();
    assert_eq!(step(waiting.clone(), ok(cid(Step::ConfirmOrder))).0.status, SagaStatus::Completed);
    let (refused, _) = step(waiting, rejected(cid(Step::ConfirmOrder), "cancelled"));
    assert_eq!(refused.status, SagaStatus::Compensating);
}

// ----- quarantine and operator actions -----

/// A saga whose payment got no reply after all 3 attempts, and is quarantined.
fn quarantined_at_payment() -> (Vec<SagaEvent>, u64) {
    let mut h = running_at(Step::TakePayment);
    let late = NOW + 50_000_000_000;
    h.extend([requested(Step::TakePayment, 2, NOW + 3_000_000_000), requested(Step::TakePayment, 3, late)]);
    let state = given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: late, jitter: 0.0, policy: quarantining() })
        .then([SagaEvent::SagaQuarantined(SagaQuarantined {
            reason: "step/take_payment: no reply after 3 attempts".into(),
            in_compensation: false,
            sku: None,
            at_ns: late,
        })]);
    assert_eq!(state.state(), SagaState::Quarantined);
    assert_eq!(state.next_deadline_ns(), None, "a parked saga has no deadline");
    h.push(SagaEvent::SagaQuarantined(SagaQuarantined {
        reason: "step/take_payment: no reply after 3 attempts".into(),
        in_compensation: false,
        sku: None,
        at_ns: late,
    }));
    (h, late)
}

#[test]
fn a_step_out_of_attempts_quarantines_the_saga_and_time_does_not_move_it() {
    let (h, late) = quarantined_at_payment();
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: late + 3_600_000_000_000, jitter: 0.0, policy: quarantining() })
        .then([]);
    // Retrying states: a second attempt shows as retrying.
    let mut retrying = running_at(Step::TakePayment);
    retrying.push(requested(Step::TakePayment, 2, NOW + 3_000_000_000));
    assert_eq!(given::<Saga>(retrying).state().state(), SagaState::Retrying);
    assert_eq!(given::<Saga>(running_at(Step::TakePayment)).state().state(), SagaState::Running);
}

#[test]
fn retrying_a_quarantined_saga_sends_its_step_again_with_a_fresh_budget() {
    let (h, late) = quarantined_at_payment();
    let now = late + 10_000_000_000;
    let deadline = now + 1_000_000_000;
    let state =
        given::<Saga>(h.clone()).when(operator(OperatorAction::Retry, 7, "gateway is back", now)).then([
            acted(OperatorAction::Retry, 7, "gateway is back", now),
            requested(Step::TakePayment, 4, deadline),
        ]);
    assert_eq!(state.state(), SagaState::Retrying);
    assert!(state.has_acted(Uuid::from_u128(7)));
    // A fresh budget: attempt 4 overdue is retried (not quarantined again at once).
    let mut h2 = h.clone();
    h2.extend([
        acted(OperatorAction::Retry, 7, "gateway is back", now),
        requested(Step::TakePayment, 4, deadline),
    ]);
    given::<Saga>(h2.clone())
        .when(SagaInput::Tick { now_ns: deadline, jitter: 0.0, policy: quarantining() })
        .then([requested(
            Step::TakePayment,
            5,
            deadline + (1000 + quarantining().backoff_ms(4, 0.0)) * 1_000_000,
        )]);
    // The same action again (a repeated request) decides nothing.
    given::<Saga>(h2.clone()).when(operator(OperatorAction::Retry, 7, "gateway is back", now)).then([]);
    // And the reply moves it on to the next step.
    let moved = given::<Saga>(h2).state().clone().decide(ok(cid(Step::TakePayment))).expect("decide");
    assert!(matches!(moved.last(), Some(SagaEvent::StepRequested(r)) if r.step == Step::CreateShipment));
    // Resume does the same as retry on a quarantined saga, and is refused on a running one.
    given::<Saga>(h.clone())
        .when(operator(OperatorAction::Resume, 8, "", now))
        .then([acted(OperatorAction::Resume, 8, "", now), requested(Step::TakePayment, 4, deadline)]);
    given::<Saga>(running_at(Step::TakePayment))
        .when(operator(OperatorAction::Resume, 9, "", now))
        .then_error(SagaError::NotAllowed {
            action: OperatorAction::Resume,
            state: SagaState::Running,
            why: "only a quarantined saga is resumed",
        });
}

#[test]
fn a_late_reply_to_the_quarantined_step_takes_the_saga_out_of_quarantine() {
    let (h, _) = quarantined_at_payment();
    let mut state = given::<Saga>(h).state().clone();
    for e in state.clone().decide(ok(cid(Step::TakePayment))).expect("decide") {
        state = state.evolve(&e);
    }
    assert_eq!(state.state(), SagaState::Running);
    assert_eq!(state.step.as_ref().map(|s| s.what), Some(Step::CreateShipment));
}

#[test]
fn an_operator_compensates_a_running_saga_but_not_one_being_confirmed_or_ended() {
    let now = NOW + 5_000_000_000;
    let h = running_at(Step::CreateShipment);
    let state = given::<Saga>(h).when(operator(OperatorAction::Compensate, 1, "fraud", now)).then([
        acted(OperatorAction::Compensate, 1, "fraud", now),
        failed(Step::CreateShipment, "aborted by ops@example.com: fraud", true, false),
        SagaEvent::CompensationRequested(CompensationRequested {
            compensation: Compensation::CancelShipment,
            command_id: ccid(Compensation::CancelShipment),
            attempt: 1,
            deadline_ns: now + 1_000_000_000,
            sku: None,
        }),
    ]);
    assert_eq!(state.state(), SagaState::Compensating);
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::Operator })
    );
    let (quarantined, _) = quarantined_at_payment();
    let state = given::<Saga>(quarantined).state().clone();
    assert!(state.clone().decide(operator(OperatorAction::Compensate, 2, "give up", now)).is_ok());
    given::<Saga>(running_at(Step::ConfirmOrder))
        .when(operator(OperatorAction::Compensate, 3, "x", now))
        .then_error(SagaError::NotAllowed {
            action: OperatorAction::Compensate,
            state: SagaState::Running,
            why: "the order is being confirmed and may be confirmed already; retry it",
        });
    let mut done = running_at(Step::ConfirmOrder);
    done.extend([succeeded(Step::ConfirmOrder), SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() })]);
    for action in OperatorAction::ALL {
        let refused = given::<Saga>(done.clone()).state().clone().decide(operator(action, 4, "why", now));
        assert!(
            matches!(refused, Err(SagaError::NotAllowed { state: SagaState::Completed, .. })),
            "{action:?}: {refused:?}"
        );
    }
}

#[test]
fn a_refused_compensation_is_marked_done_by_hand_and_the_rest_runs() {
    let mut h = running_at(Step::CreateShipment);
    h.extend([
        failed(Step::CreateShipment, "step/create_shipment: nope", false, false),
        comp(Compensation::RefundPayment),
        SagaEvent::SagaFailed(SagaFailed { order_id: oid(), reason: "refund refused".into() }),
    ]);
    assert_eq!(given::<Saga>(h.clone()).state().state(), SagaState::Failed);
    let now = NOW + 9_000_000_000;
    given::<Saga>(h.clone())
        .when(operator(OperatorAction::MarkCompensationDone, 5, "  ", now))
        .then_error(SagaError::ReasonRequired { action: OperatorAction::MarkCompensationDone });
    let state = given::<Saga>(h.clone())
        .when(operator(OperatorAction::MarkCompensationDone, 5, "refunded by bank transfer", now))
        .then([
            acted(OperatorAction::MarkCompensationDone, 5, "refunded by bank transfer", now),
            done_by_hand(Compensation::RefundPayment),
            SagaEvent::CompensationRequested(CompensationRequested {
                compensation: Compensation::ReleaseStock,
                command_id: ccid(Compensation::ReleaseStock),
                attempt: 1,
                deadline_ns: now + 1_000_000_000,
                sku: Some(Sku::from("A")),
            }),
        ]);
    assert_eq!(state.state(), SagaState::Compensating);
    assert_eq!(state.by_hand, vec![Compensation::RefundPayment]);
    // A failed saga's stopped compensation can be sent again instead (the service is back).
    let resent = given::<Saga>(h.clone()).when(operator(OperatorAction::Retry, 15, "", now)).then([
        acted(OperatorAction::Retry, 15, "", now),
        SagaEvent::CompensationRequested(CompensationRequested {
            compensation: Compensation::RefundPayment,
            command_id: ccid(Compensation::RefundPayment),
            attempt: 2,
            deadline_ns: now + 1_000_000_000,
            sku: None,
        }),
    ]);
    assert_eq!(resent.state(), SagaState::Compensating);
    // Nothing to mark on a running saga.
    assert!(matches!(
        given::<Saga>(running_at(Step::TakePayment)).state().clone().decide(operator(
            OperatorAction::MarkCompensationDone,
            6,
            "x",
            now
        )),
        Err(SagaError::NotAllowed { state: SagaState::Running, .. })
    ));
}

#[test]
fn a_compensation_out_of_attempts_quarantines_and_a_retry_sends_it_again() {
    let mut h = running_at(Step::TakePayment);
    let late = NOW + 100_000_000_000;
    h.extend([
        failed(Step::TakePayment, "step/take_payment: x", false, false),
        comp(Compensation::ReleaseStock),
        SagaEvent::CompensationRequested(CompensationRequested {
            compensation: Compensation::ReleaseStock,
            command_id: ccid(Compensation::ReleaseStock),
            attempt: 3,
            deadline_ns: late,
            sku: Some(Sku::from("A")),
        }),
    ]);
    let q = SagaEvent::SagaQuarantined(SagaQuarantined {
        reason: "compensation/release_stock/A: no reply after 3 attempts".into(),
        in_compensation: true,
        sku: Some(Sku::from("A")),
        at_ns: late,
    });
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: late, jitter: 0.0, policy: quarantining() })
        .then([q.clone()]);
    h.push(q);
    assert_eq!(given::<Saga>(h.clone()).state().state(), SagaState::Quarantined);
    given::<Saga>(h.clone()).when(operator(OperatorAction::Retry, 11, "", late)).then([
        acted(OperatorAction::Retry, 11, "", late),
        SagaEvent::CompensationRequested(CompensationRequested {
            compensation: Compensation::ReleaseStock,
            command_id: ccid(Compensation::ReleaseStock),
            attempt: 4,
            deadline_ns: late + 1_000_000_000,
            sku: Some(Sku::from("A")),
        }),
    ]);
    // Forward-path compensation of a compensating saga is refused.
    assert!(matches!(
        given::<Saga>(h).state().clone().decide(operator(OperatorAction::Compensate, 12, "x", late)),
        Err(SagaError::NotAllowed { .. })
    ));
}

#[test]
fn confirming_out_of_attempts_is_quarantined_not_sent_for_ever() {
    let mut h = running_at(Step::ConfirmOrder);
    let late = NOW + 100_000_000_000;
    h.extend([requested(Step::ConfirmOrder, 3, late)]);
    given::<Saga>(h.clone())
        .when(SagaInput::Tick { now_ns: late, jitter: 0.0, policy: quarantining() })
        .then([SagaEvent::SagaQuarantined(SagaQuarantined {
            reason: "step/confirm_order: no reply after 3 attempts".into(),
            in_compensation: false,
            sku: None,
            at_ns: late,
        })]);
    // Under the compensating policy it is sent again.
    let sent = given::<Saga>(h).state().clone().decide(SagaInput::Tick {
        now_ns: late,
        jitter: 0.0,
        policy: policy(),
    });
    assert!(matches!(sent.as_deref(), Ok([SagaEvent::StepRequested(r)]) if r.attempt == 4), "{sent:?}");
}

#[test]
fn operator_events_round_trip_through_the_codec() {
    for e in [
        acted(OperatorAction::MarkCompensationDone, 1, "refunded", 5),
        SagaEvent::SagaQuarantined(SagaQuarantined {
            reason: "r".into(),
            in_compensation: true,
            sku: Some(Sku::from("A")),
            at_ns: 9,
        }),
    ] {
        let decoded = SagaEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode");
        assert_eq!(decoded, e);
    }
}

#[test]
fn a_saga_remembers_its_newest_action_ids_only() {
    let (mut h, late) = quarantined_at_payment();
    for i in 0..(MAX_REMEMBERED_ACTIONS as u128 + 1) {
        h.push(acted(OperatorAction::Retry, 100 + i, "", late));
    }
    let state = given::<Saga>(h).state().clone();
    assert_eq!(state.actions.len(), MAX_REMEMBERED_ACTIONS);
    assert!(!state.has_acted(Uuid::from_u128(100)), "the oldest is forgotten");
    assert!(state.has_acted(Uuid::from_u128(100 + MAX_REMEMBERED_ACTIONS as u128)));
}

#[test]
fn a_compensation_quarantined_or_in_flight_is_marked_done_by_hand() {
    let mut h = running_at(Step::TakePayment);
    h.extend([
        failed(Step::TakePayment, "step/take_payment: x", false, false),
        comp(Compensation::ReleaseStock),
    ]);
    let now = NOW + 3_000_000_000;
    // In flight, not quarantined.
    let state = given::<Saga>(h.clone())
        .when(operator(OperatorAction::MarkCompensationDone, 21, "released by hand", now))
        .then([
            acted(OperatorAction::MarkCompensationDone, 21, "released by hand", now),
            done_by_hand(Compensation::ReleaseStock),
            SagaEvent::CompensationRequested(CompensationRequested {
                compensation: Compensation::CancelOrder,
                command_id: ccid(Compensation::CancelOrder),
                attempt: 1,
                deadline_ns: now + 1_000_000_000,
                sku: None,
            }),
        ]);
    assert_eq!(state.state(), SagaState::Compensating);
    // Quarantined in the compensation: the same, and the quarantine ends.
    h.push(SagaEvent::SagaQuarantined(SagaQuarantined {
        reason: "compensation/release_stock/A: no reply after 3 attempts".into(),
        in_compensation: true,
        sku: Some(Sku::from("A")),
        at_ns: now,
    }));
    let state = given::<Saga>(h).state().clone();
    assert_eq!(state.state(), SagaState::Quarantined);
    let mut after = state.clone();
    for e in state
        .decide(operator(OperatorAction::MarkCompensationDone, 22, "released by hand", now))
        .expect("decide")
    {
        after = after.evolve(&e);
    }
    assert_eq!(after.state(), SagaState::Compensating);
    assert_eq!(after.by_hand, vec![Compensation::ReleaseStock]);
}

#[test]
fn a_saga_records_the_definition_that_started_it_and_older_records_read_as_the_first() {
    let events = Saga::default()
        .decide(SagaInput::Start {
            order_id: oid(),
            lines: lines(),
            amount: Money(1),
            address: None,
            now_ns: NOW,
            policy: RetryPolicy::default(),
        })
        .expect("start");
    assert!(matches!(&events[0], SagaEvent::SagaStarted(s) if s.definition == DEFINITION));
    assert!(CARRIED.contains(&DEFINITION));
    let old = format!(r#"{{"order_id":"{}","lines":[],"amount":1,"address":null}}"#, oid().0);
    let decoded = SagaEvent::decode("SagaStarted", 1, old.as_bytes()).expect("decode");
    assert!(matches!(&decoded, SagaEvent::SagaStarted(s) if s.definition == 1));
    assert_eq!(Saga::default().evolve(&decoded).definition, 1);
}

/// `SagaStarted` as a build of definition 1 (before the fraud check) recorded it.
fn started_under(definition: u32) -> SagaEvent {
    let SagaEvent::SagaStarted(mut e) = started() else { unreachable!("started() is a SagaStarted") };
    e.definition = definition;
    SagaEvent::SagaStarted(e)
}

#[test]
fn a_saga_started_under_definition_1_finishes_on_its_own_path_without_the_fraud_check() {
    assert!(CARRIED.contains(&1) && DEFINITION == 2);
    let mut history = vec![started_under(1), req(Step::ReserveStock)];
    let old_path = path(1);
    assert!(!old_path.contains(&Step::CheckFraud));
    for (i, step) in old_path.iter().enumerate() {
        let mut expected = vec![succeeded(*step)];
        match old_path.get(i + 1) {
            Some(next) => expected.push(req(*next)),
            None => expected.push(SagaEvent::SagaCompleted(SagaCompleted { order_id: oid() })),
        }
        given::<Saga>(history.clone()).when(ok(cid(*step))).then(expected.clone());
        history.extend(expected);
    }
    let state = Saga::replay(&history);
    assert_eq!((state.status, state.definition), (SagaStatus::Completed, 1));
    assert_eq!(state.done, old_path.to_vec());
}

#[test]
fn a_new_saga_is_screened_for_fraud_before_payment_and_a_refusal_moves_no_money() {
    // Started now: the current definition, whose path screens the amount after the stock.
    let (state, events) = step(Saga::default(), start_input());
    assert!(matches!(&events[0], SagaEvent::SagaStarted(s) if s.definition == DEFINITION));
    let (state, _) = step(state, reply(part_cid("step/reserve_stock", "A"), Outcome::Succeeded));
    assert_eq!(state.step.as_ref().map(|s| s.what), Some(Step::CheckFraud));
    assert_eq!(
        state.step_command(Step::CheckFraud, None),
        Some(SagaCommand::CheckFraud { order_id: oid(), amount: Money(3998) })
    );
    // Refused: the stock is released and the order cancelled as a declined payment; there is no
    // payment to refund.
    let (state, events) =
        step(state, reply(cid(Step::CheckFraud), Outcome::Rejected { reason: "over the limit".into() }));
    assert!(
        matches!(&events[0], SagaEvent::StepFailed(f) if f.step == Step::CheckFraud && !f.may_have_applied),
        "{events:?}"
    );
    assert!(!events.iter().any(
        |e| matches!(e, SagaEvent::CompensationRequested(r) if r.compensation == Compensation::RefundPayment)
    ));
    let (state, events) = step(state, reply(part_cid("compensation/release_stock", "A"), Outcome::Succeeded));
    assert!(matches!(
        events.last(),
        Some(SagaEvent::CompensationRequested(r)) if r.compensation == Compensation::CancelOrder
    ));
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder, None),
        Some(SagaCommand::CancelOrder { order_id: oid(), reason: CancelReason::PaymentDeclined })
    );
}
