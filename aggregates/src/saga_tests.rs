//! Given/when/then tests of the saga state machine.

use super::*;
use crate::codec::DomainEvent;
use crate::testing::given;

const NOW: u64 = 1_000_000_000_000;

fn policy() -> RetryPolicy {
    RetryPolicy { step_timeout_ms: 1000, backoff_base_ms: 100, backoff_cap_ms: 800, max_attempts: 3 }
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
    })
}

fn cid(step: Step) -> Uuid {
    command_id(oid(), step_name(step))
}

fn ccid(c: Compensation) -> Uuid {
    command_id(oid(), compensation_name(c))
}

fn requested(step: Step, attempt: u32, deadline_ns: u64) -> SagaEvent {
    SagaEvent::StepRequested(StepRequested { step, command_id: cid(step), attempt, deadline_ns })
}

fn req(step: Step) -> SagaEvent {
    requested(step, 1, NOW + 1_000_000_000)
}

fn succeeded(step: Step) -> SagaEvent {
    SagaEvent::StepSucceeded(StepSucceeded { step, detail: None })
}

fn comp(c: Compensation) -> SagaEvent {
    SagaEvent::CompensationRequested(CompensationRequested {
        compensation: c,
        command_id: ccid(c),
        attempt: 1,
        deadline_ns: NOW + 1_000_000_000,
    })
}

fn comp_done(c: Compensation) -> SagaEvent {
    SagaEvent::CompensationDone(CompensationDone { compensation: c })
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
    SagaEvent::StepFailed(StepFailed { step, reason: reason.into(), may_have_applied, by_customer })
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
    let state = given::<Saga>([])
        .when(SagaInput::Start {
            order_id: oid(),
            lines: lines(),
            amount: Money(3998),
            address: None,
            now_ns: NOW,
            policy: policy(),
        })
        .then([started(), req(Step::ReserveStock)]);
    assert_eq!(state.status, SagaStatus::Running);
    let (id, cmd) = state.command_of(&req(Step::ReserveStock)).expect("a command");
    assert_eq!(id, cid(Step::ReserveStock));
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
    let services: Vec<_> = Step::ALL.iter().map(|s| state.step_command(*s).expect("cmd").service()).collect();
    assert_eq!(
        services,
        vec![Service::Inventory, Service::Payment, Service::Shipping, Service::Inventory, Service::Order]
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
        state.compensation_command(Compensation::CancelOrder),
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
        state.compensation_command(Compensation::CancelOrder),
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
        let events = state.decide(ok(p.command_id)).expect("decide");
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
            }),
        ]);
    assert_eq!(
        state.to_compensate,
        vec![Compensation::RefundPayment, Compensation::ReleaseStock, Compensation::CancelOrder]
    );
    assert_eq!(
        state.compensation_command(Compensation::CancelOrder),
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
    })]);
    assert_eq!(state.compensation.as_ref().map(|p| p.attempt), Some(2));
    let mut exhausted = h.clone();
    exhausted.push(SagaEvent::CompensationRequested(CompensationRequested {
        compensation: Compensation::ReleaseStock,
        command_id: ccid(Compensation::ReleaseStock),
        attempt: 3,
        deadline_ns: late,
    }));
    let state = given::<Saga>(exhausted)
        .when(SagaInput::Tick { now_ns: late, jitter: 0.0, policy: policy() })
        .then([SagaEvent::SagaFailed(SagaFailed {
            order_id: oid(),
            reason: "compensation/release_stock: no reply after 3 attempts".into(),
        })]);
    assert_eq!(state.status, SagaStatus::Failed);
    given::<Saga>(h).when(rejected(ccid(Compensation::ReleaseStock), "no")).then([SagaEvent::SagaFailed(
        SagaFailed { order_id: oid(), reason: "compensation/release_stock refused: no".into() },
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
            }),
            req(Step::CommitStock),
        ]);
    assert_eq!(state.tracking_number.as_deref(), Some("TRK-42"));
    // ...and the confirmation carries it to the order service, on whichever node that runs.
    let mut history = running_at(Step::CreateShipment);
    history.push(SagaEvent::StepSucceeded(StepSucceeded {
        step: Step::CreateShipment,
        detail: Some("TRK-42".into()),
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
