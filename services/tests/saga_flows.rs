//! Every saga path end to end in one process (embedded runtime on an in-memory store), asserting
//! the events written, the final states and the system invariants.

use std::time::{Duration, Instant};

use aggregates::inventory::Inventory;
use aggregates::order::{CancelReason, LineItem, Order, OrderCommand, OrderStatus};
use aggregates::payment::{Payment, PaymentStatus};
use aggregates::saga::{OnExhausted, OperatorAction, RetryPolicy, Saga, SagaCommand, SagaState, SagaStatus};
use aggregates::shipping::{Address, Shipment, ShipmentStatus};
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use event_store::{Direction, EventStore, ExpectedVersion, MemoryStorage, NewEvent, StoreConfig, StreamId};
use services::app::aggregate::load;
use services::app::command_consumer::CommandConsumer;
use services::app::commands;
use services::app::consumer::{self, ConsumerConfig};
use services::app::gateway::{BreakerConfig, BreakerState, SimulatedGateway, SimulatedGatewayConfig};
use services::app::handlers::load_inventory;
use services::app::invariants;
use services::app::messages;
use services::node::{Runtime, RuntimeConfig};
use uuid::Uuid;

type Rt = Runtime<MemoryStorage, SimulatedGateway>;

fn config() -> RuntimeConfig {
    RuntimeConfig {
        consumer: ConsumerConfig { workers: 8, max_attempts: 3, retry_base: Duration::from_millis(5) },
        policy: RetryPolicy {
            step_timeout_ms: 2_000,
            backoff_base_ms: 50,
            backoff_cap_ms: 200,
            max_attempts: 3,
            on_exhausted: OnExhausted::Quarantine,
        },
        breaker: BreakerConfig { failure_threshold: 3, open_for: Duration::from_millis(200) },
        timer_interval: Duration::from_millis(20),
        ..RuntimeConfig::default()
    }
}

fn start_with(store: EventStore<MemoryStorage>, gw: SimulatedGatewayConfig, config: RuntimeConfig) -> Rt {
    Runtime::start(store, SimulatedGateway::new(gw), config).expect("start runtime")
}

fn start(gw: SimulatedGatewayConfig) -> Rt {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    start_with(store, gw, config())
}

fn addr(country: &str) -> Address {
    Address {
        line1: "1 Main St".into(),
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: country.into(),
    }
}

async fn stock(rt: &Rt, sku: &str, qty: u64) {
    commands::add_stock(rt.store(), Uuid::now_v7(), Sku::from(sku), qty, None).await.expect("add stock");
}

async fn place(rt: &Rt, lines: &[(&str, u32, u64)], country: &str) -> OrderId {
    let order_id = OrderId(Uuid::now_v7());
    let cmd = OrderCommand::Place {
        order_id,
        customer_id: CustomerId("alice".into()),
        items: lines
            .iter()
            .map(|(s, q, p)| LineItem { sku: Sku::from(*s), quantity: *q, unit_price: Money(*p) })
            .collect(),
        currency: Currency::from("EUR"),
        shipping_address: Some(addr(country)),
    };
    commands::place_order(rt.store(), Uuid::now_v7(), cmd, None).await.expect("place order");
    order_id
}

fn saga_of(rt: &Rt, order: OrderId) -> Saga {
    load::<_, Saga>(rt.store(), &messages::saga_stream(order)).expect("load saga").0
}

async fn wait_terminal(rt: &Rt, order: OrderId) -> Saga {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let saga = saga_of(rt, order);
        if saga.status.is_terminal() {
            return saga;
        }
        assert!(Instant::now() < deadline, "saga of {order} did not end: {saga:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn types(rt: &Rt, stream: &StreamId) -> Vec<String> {
    rt.store().read_stream(stream, 1, Direction::Forward).map(|e| e.expect("read").event_type).collect()
}

fn inventory(rt: &Rt, sku: &str) -> Inventory {
    load_inventory(rt.store(), &messages::inventory_stream(&Sku::from(sku)).expect("sku"))
        .expect("inventory")
        .0
}

fn order(rt: &Rt, id: OrderId) -> Order {
    load::<_, Order>(rt.store(), &messages::order_stream(id)).expect("order").0
}

fn payment(rt: &Rt, id: OrderId) -> Payment {
    load::<_, Payment>(rt.store(), &messages::payment_stream(id)).expect("payment").0
}

fn shipment(rt: &Rt, id: OrderId) -> Shipment {
    load::<_, Shipment>(rt.store(), &messages::shipment_stream(id)).expect("shipment").0
}

fn assert_invariants(rt: &Rt) -> invariants::Report {
    let report = invariants::check(rt.store()).expect("check");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.unfinished.is_empty(), "unfinished sagas: {:?}", report.unfinished);
    assert!(report.quarantined.is_empty(), "quarantined sagas: {:?}", report.quarantined);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_confirms_the_order() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "A", 10).await;
    stock(&rt, "B", 5).await;
    let id = place(&rt, &[("A", 2, 1999), ("B", 1, 500)], "DE").await;
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(
        types(&rt, &messages::saga_stream(id)),
        [
            "SagaStarted",
            "StepRequested", // reserve A
            "StepRequested", // reserve B
            "StepSucceeded",
            "StepSucceeded",
            "StepRequested", // fraud check
            "StepSucceeded",
            "StepRequested", // payment
            "StepSucceeded",
            "StepRequested", // shipment
            "StepSucceeded",
            "StepRequested", // commit A
            "StepRequested", // commit B
            "StepSucceeded",
            "StepSucceeded",
            "StepRequested", // confirm
            "StepSucceeded",
            "SagaCompleted"
        ]
    );
    // One stock command per SKU, on that SKU's command stream (the inventory role shards by SKU).
    for sku in ["A", "B"] {
        let stream = StreamId::new(format!("inventory_commands-{sku}")).expect("stream");
        let mine: Vec<String> = rt
            .store()
            .read_stream(&stream, 1, Direction::Forward)
            .map(|e| e.expect("read"))
            .filter(|e| e.correlation_id == id.0)
            .map(|e| e.event_type)
            .collect();
        assert_eq!(mine, ["ReserveStock", "CommitStock"], "{sku}");
    }
    let o = order(&rt, id);
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert!(o.tracking_number.as_deref().is_some_and(|t| t.starts_with("TRK-")));
    assert_eq!(types(&rt, &messages::payment_stream(id)), ["PaymentAuthorized", "PaymentCaptured"]);
    assert_eq!(payment(&rt, id).captured, Money(4498));
    assert_eq!(shipment(&rt, id).status, ShipmentStatus::Created);
    let a = inventory(&rt, "A");
    assert_eq!((a.available, a.reserved_total(), a.shipped), (8, 0, 2));
    // Every event of the order carries the order id as correlation id.
    for s in [messages::order_stream(id), messages::payment_stream(id), messages::saga_stream(id)] {
        for e in rt.store().read_stream(&s, 1, Direction::Forward) {
            assert_eq!(e.expect("read").correlation_id, id.0, "{s}");
        }
    }
    let report = assert_invariants(&rt);
    assert_eq!(report.completed, 1);
    // The read models follow.
    use projections::models::{
        OrderSummaries, OrderSummary, SagaTimeline, SagaTimelines, StockLevel, StockLevels,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while [OrderSummaries::NAME, StockLevels::NAME, SagaTimelines::NAME]
        .iter()
        .any(|n| rt.models().lag(n).expect("lag") > 0)
    {
        assert!(Instant::now() < deadline, "read models did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary: OrderSummary =
        rt.models().get(OrderSummaries::NAME, &OrderSummaries::order_key(id)).expect("get").expect("present");
    assert_eq!(summary.status, OrderStatus::Confirmed);
    assert_eq!(summary.tracking_number, o.tracking_number);
    let level: StockLevel =
        rt.models().get(StockLevels::NAME, &StockLevels::key("A")).expect("get").expect("present");
    assert_eq!(
        (level.available, level.reserved, level.shipped),
        (a.available, a.reserved_total(), a.shipped)
    );
    let timeline: SagaTimeline =
        rt.models().get(SagaTimelines::NAME, &SagaTimelines::key(id)).expect("get").expect("present");
    assert_eq!(timeline.status, "completed");
    assert_eq!(timeline.steps.len(), 18, "one entry per saga event");
    use projections::models::{OrderPayments, PaymentLedger};
    while rt.models().lag(PaymentLedger::NAME).expect("lag") > 0 {
        assert!(Instant::now() < deadline, "ledger did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let money: OrderPayments =
        rt.models().get(PaymentLedger::NAME, &PaymentLedger::order_key(id)).expect("get").expect("present");
    assert_eq!(
        (money.authorized, money.captured, money.refunded, money.entries),
        (Money(4498), Money(4498), Money::ZERO, 2)
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_cancels_the_order() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "A", 10).await;
    stock(&rt, "B", 1).await;
    let id = place(&rt, &[("A", 2, 100), ("B", 3, 100)], "DE").await;
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(order(&rt, id).cancel_reason, Some(CancelReason::OutOfStock));
    // All or nothing: A was not reserved either.
    assert_eq!(inventory(&rt, "A").available, 10);
    assert_eq!(
        types(&rt, &messages::inventory_stream(&Sku::from("B")).expect("sku")),
        ["StockAdded", "StockReservationRejected"]
    );
    assert!(types(&rt, &messages::payment_stream(id)).is_empty());
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_releases_stock_and_cancels() {
    let rt = start(SimulatedGatewayConfig { decline_above: Some(10_000), ..Default::default() });
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 3, 5_000)], "DE").await;
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(order(&rt, id).cancel_reason, Some(CancelReason::PaymentDeclined));
    assert_eq!(payment(&rt, id).status, PaymentStatus::Declined);
    assert_eq!(
        types(&rt, &messages::inventory_stream(&Sku::from("A")).expect("sku")),
        ["StockAdded", "StockReserved", "StockReleased"]
    );
    assert_eq!(inventory(&rt, "A").available, 10);
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_shipment_refunds_releases_and_cancels() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 1, 700)], "XX").await;
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(order(&rt, id).cancel_reason, Some(CancelReason::ShipmentFailed));
    assert_eq!(shipment(&rt, id).status, ShipmentStatus::Failed);
    assert_eq!(
        types(&rt, &messages::payment_stream(id)),
        ["PaymentAuthorized", "PaymentCaptured", "PaymentRefunded"]
    );
    assert_eq!(inventory(&rt, "A").available, 10);
    // Compensation ran in reverse: refund, then release, then cancel.
    let replies: Vec<String> = rt
        .store()
        .read_stream(&messages::replies_stream(id), 1, Direction::Forward)
        .map(|e| {
            serde_json::from_slice::<messages::CommandReplied>(&e.expect("e").payload).expect("reply").command
        })
        .collect();
    assert_eq!(
        replies,
        [
            "ReserveStock",
            "CheckFraud",
            "TakePayment",
            "CreateShipment",
            "RefundPayment",
            "ReleaseStock",
            "CancelOrder"
        ]
    );
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_cancel_mid_saga_compensates_what_was_done() {
    // A slow gateway keeps the saga in the payment step while the customer cancels.
    // A second is wide enough for the cancel to land inside it on a loaded CI machine.
    let rt = start(SimulatedGatewayConfig { latency: Duration::from_millis(1000), ..Default::default() });
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 4, 100)], "DE").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while saga_of(&rt, id).done.is_empty() {
        assert!(Instant::now() < deadline, "reservation did not happen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    commands::cancel_order(rt.store(), Uuid::now_v7(), id, None).await.expect("cancel");
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert!(saga.cancelled_by_customer);
    assert_eq!(order(&rt, id).cancel_reason, Some(CancelReason::CustomerRequest));
    assert_eq!(inventory(&rt, "A").available, 10, "stock released");
    let p = payment(&rt, id);
    assert!(matches!(p.status, PaymentStatus::Refunded | PaymentStatus::None), "{p:?}");
    assert_eq!(p.captured, Money::ZERO);
    assert_invariants(&rt);
    // Cancelling a confirmed order is refused.
    let done = place(&rt, &[("A", 1, 100)], "DE").await;
    assert_eq!(wait_terminal(&rt, done).await.status, SagaStatus::Completed);
    assert!(matches!(
        commands::cancel_order(rt.store(), Uuid::now_v7(), done, None).await,
        Err(commands::CommandError::Rejected(_))
    ));
    rt.shutdown().await.expect("shutdown");
}

/// Short steps, two attempts: a gateway outage runs a step out of attempts in well under a second.
fn outage_config(on_exhausted: OnExhausted) -> RuntimeConfig {
    let mut cfg = config();
    cfg.policy = RetryPolicy {
        step_timeout_ms: 300,
        backoff_base_ms: 20,
        backoff_cap_ms: 50,
        max_attempts: 2,
        on_exhausted,
    };
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_outage_quarantines_the_saga_and_a_retry_after_it_completes_the_order() {
    let cfg = outage_config(OnExhausted::Quarantine);
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = start_with(store, SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() }, cfg);
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 2, 100)], "DE").await;
    let stream = messages::saga_stream(id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let (saga, _) = load::<MemoryStorage, Saga>(rt.store(), &stream).expect("load");
        if saga.state() == SagaState::Quarantined {
            break saga;
        }
        assert!(Instant::now() < deadline, "never quarantined: {saga:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(parked.step.as_ref().map(|s| s.what), Some(aggregates::saga::Step::TakePayment));
    assert_eq!(inventory(&rt, "A").available, 8, "a parked saga keeps its reservation");
    // Parked, it holds nothing: not in memory, no deadline; time does not move it.
    let saga = rt.saga().expect("saga manager");
    let deadline = Instant::now() + Duration::from_secs(10);
    while saga.in_flight() > 0 {
        assert!(Instant::now() < deadline, "a parked saga stays in memory");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = rt.store().stream_version(&stream).expect("version");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rt.store().stream_version(&stream).expect("version"), before, "no retry while parked");
    // The gateway recovers; the operator retries.
    rt.handlers().gateway().inner().reconfigure(SimulatedGatewayConfig::default());
    let retry = services::app::saga::OperatorRequest {
        action: OperatorAction::Retry,
        action_id: Uuid::now_v7(),
        operator: "ops".into(),
        reason: "gateway back".into(),
        expected_version: None,
    };
    let acted = saga.act(id, &retry).await.expect("act");
    assert!(!acted.repeated);
    let again = saga.act(id, &retry).await.expect("act");
    assert!(again.repeated, "the same action id is not carried out twice");
    let done = wait_terminal(&rt, id).await;
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(order(&rt, id).status, aggregates::order::OrderStatus::Confirmed);
    assert_eq!(payment(&rt, id).captured, Money(200));
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_outage_opens_the_breaker_times_out_and_compensates() {
    let cfg = outage_config(OnExhausted::Compensate);
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = start_with(store, SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() }, cfg);
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 1, 100)], "DE").await;
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(order(&rt, id).cancel_reason, Some(CancelReason::Timeout));
    assert!(saga.failure.as_deref().is_some_and(|f| f.contains("no reply after 2 attempts")), "{saga:?}");
    assert!(matches!(rt.handlers().gateway().state(), BreakerState::Open { .. } | BreakerState::HalfOpen));
    // The payment commands it could not process are in the dead letters, with the reason.
    let letters = consumer::list_dead_letters(rt.store(), "payment-service").expect("letters");
    assert!(!letters.is_empty());
    assert!(letters
        .iter()
        .all(|l| l.letter.reason.contains("retries exhausted") && l.letter.event_type == "TakePayment"));
    assert_eq!(inventory(&rt, "A").available, 10);
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_have_no_second_effect() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 2, 100)], "DE").await;
    assert_eq!(wait_terminal(&rt, id).await.status, SagaStatus::Completed);
    let saga_events_before = types(&rt, &messages::saga_stream(id));
    // Deliver every command of the saga again (same idempotency keys, new sends), out of order.
    let saga = saga_of(&rt, id);
    let mut commands: Vec<(Uuid, SagaCommand)> = aggregates::saga::Step::ALL
        .iter()
        .map(|s| {
            let sku = matches!(s, aggregates::saga::Step::ReserveStock | aggregates::saga::Step::CommitStock)
                .then(|| Sku::from("A"));
            let name = format!("step/{}", step_slug(*s));
            (
                aggregates::saga::part_command_id(id, &name, sku.as_ref()),
                saga.step_command(*s, sku.as_ref()).expect("cmd"),
            )
        })
        .collect();
    commands.reverse();
    let mut sends = Vec::new();
    for (command_id, command) in &commands {
        let e = messages::command_event(*command_id, Uuid::now_v7(), Uuid::now_v7(), command);
        sends.push(e.event_id);
        rt.store()
            .append_to(&messages::command_stream(command), ExpectedVersion::Any, vec![e])
            .await
            .expect("resend");
    }
    // And the replies again, to the saga.
    let replies: Vec<_> = rt
        .store()
        .read_stream(&messages::replies_stream(id), 1, Direction::Forward)
        .map(|e| e.expect("e"))
        .collect();
    let mut last = 0;
    for r in replies {
        let mut copy = NewEvent::json(r.event_type.clone(), r.payload.clone())
            .caused_by(r.correlation_id, r.causation_id);
        copy.metadata = r.metadata.clone();
        last = rt
            .store()
            .append_to(&messages::replies_stream(id), ExpectedVersion::Any, vec![copy])
            .await
            .expect("resend reply")
            .last_position;
    }
    // Each service handled its redelivered command: it answered with its recorded reply again
    // (so the consumers really ran), and the saga manager got past the redelivered replies.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resent: Vec<Uuid> = rt
            .store()
            .read_stream(&messages::replies_stream(id), 1, Direction::Forward)
            .map(|e| e.expect("e"))
            .filter(|e| e.metadata.contains_key(messages::RESENT_OF))
            .map(|e| e.causation_id)
            .collect();
        let saga_done = rt.store().checkpoint("consumer.saga-manager").expect("cp").unwrap_or(0) >= last;
        if sends.iter().all(|s| resent.contains(s)) && saga_done {
            break;
        }
        assert!(Instant::now() < deadline, "the redeliveries were not all handled: {resent:?} of {sends:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No second effect anywhere: stock, payment, shipment, order and saga are as they were.
    let a = inventory(&rt, "A");
    assert_eq!((a.available, a.shipped), (8, 2));
    assert_eq!(types(&rt, &messages::payment_stream(id)), ["PaymentAuthorized", "PaymentCaptured"]);
    assert_eq!(types(&rt, &messages::shipment_stream(id)), ["ShipmentCreated"]);
    assert_eq!(types(&rt, &messages::order_stream(id)), ["OrderPlaced", "OrderConfirmed"]);
    assert_eq!(types(&rt, &messages::saga_stream(id)), saga_events_before);
    assert_eq!(saga_of(&rt, id).status, SagaStatus::Completed);
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

fn step_slug(s: aggregates::saga::Step) -> &'static str {
    use aggregates::saga::Step::*;
    match s {
        ReserveStock => "reserve_stock",
        CheckFraud => "check_fraud",
        TakePayment => "take_payment",
        CreateShipment => "create_shipment",
        CommitStock => "commit_stock",
        ConfirmOrder => "confirm_order",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_command_is_dead_lettered_and_can_be_redriven() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "A", 10).await;
    let bad_order = OrderId(Uuid::now_v7());
    let bad = NewEvent::json("ReserveStock", b"{not json".to_vec())
        .with_metadata(messages::COMMAND_ID, Uuid::now_v7().to_string());
    let bad_id = bad.event_id;
    rt.store()
        .append_to(
            &messages::commands_stream(aggregates::saga::Service::Inventory, bad_order),
            ExpectedVersion::Any,
            vec![bad],
        )
        .await
        .expect("append");
    // The consumer keeps going: a real order still completes.
    let id = place(&rt, &[("A", 1, 100)], "DE").await;
    assert_eq!(wait_terminal(&rt, id).await.status, SagaStatus::Completed);
    let letters = consumer::list_dead_letters(rt.store(), "inventory-service").expect("letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].letter.event_id, bad_id);
    assert!(letters[0].letter.reason.contains("bad command payload"), "{}", letters[0].letter.reason);
    assert_eq!(letters[0].letter.payload, "{not json");
    // The dead-letter read model shows it too.
    use projections::models::{DeadLetterView, DeadLetters};
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.models().lag(DeadLetters::NAME).expect("lag") > 0 {
        assert!(Instant::now() < deadline, "dead-letter model did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let views: Vec<(String, DeadLetterView)> = rt
        .models()
        .scan(DeadLetters::NAME, &DeadLetters::prefix(Some("inventory-service")), None, 10)
        .expect("scan");
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].1.event_id, views[0].1.resolved), (bad_id, false));
    // Re-driving a poison message fails again and it stays unresolved.
    let c = CommandConsumer::new(rt.handlers().clone(), aggregates::saga::Service::Inventory);
    assert!(consumer::redrive(rt.store(), &c, bad_id).await.expect("store").is_err());
    assert!(!consumer::list_dead_letters(rt.store(), "inventory-service").expect("letters")[0].resolved);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_from_an_outage_can_be_redriven_after_it() {
    let mut cfg = config();
    cfg.policy = RetryPolicy { step_timeout_ms: 60_000, max_attempts: 2, ..cfg.policy };
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = start_with(store, SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() }, cfg);
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 1, 100)], "DE").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let letter = loop {
        if let Some(l) =
            consumer::list_dead_letters(rt.store(), "payment-service").expect("letters").into_iter().next()
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    rt.handlers().gateway().inner().reconfigure(SimulatedGatewayConfig::default());
    tokio::time::sleep(Duration::from_millis(250)).await; // let the breaker half-open
    let c = CommandConsumer::new(rt.handlers().clone(), aggregates::saga::Service::Payment);
    consumer::redrive(rt.store(), &c, letter.letter.event_id)
        .await
        .expect("store")
        .expect("redrive succeeds");
    assert!(consumer::list_dead_letters(rt.store(), "payment-service").expect("letters")[0].resolved);
    // The dead-letter read model follows the resolution.
    use projections::models::{DeadLetterView, DeadLetters};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let views: Vec<(String, DeadLetterView)> = rt
            .models()
            .scan(DeadLetters::NAME, &DeadLetters::prefix(Some("payment-service")), None, 10)
            .expect("scan");
        if views.iter().any(|(_, v)| v.event_id == letter.letter.event_id && v.resolved) {
            break;
        }
        assert!(Instant::now() < deadline, "resolution not projected: {views:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(wait_terminal(&rt, id).await.status, SagaStatus::Completed);
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runtime_finishes_every_saga() {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    // The first node's payment gateway is down: every saga gets as far as the payment step and
    // waits there (its deadline is seconds away; the failed payments are dead-lettered) when the
    // node stops. Only the recovered deadline can move them on.
    let mut cfg = config();
    cfg.policy.step_timeout_ms = 4_000;
    let rt =
        start_with(store.clone(), SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() }, cfg);
    stock(&rt, "A", 1000).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(place(&rt, &[("A", 1, 100 + i)], if i % 7 == 0 { "XX" } else { "DE" }).await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &ids {
        while saga_of(&rt, *id).step.as_ref().map(|s| s.what) != Some(aggregates::saga::Step::TakePayment) {
            assert!(Instant::now() < deadline, "saga {id} never reached the payment step");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    rt.shutdown().await.expect("graceful shutdown");
    let unfinished = ids
        .iter()
        .filter(|id| {
            !load::<_, Saga>(&store, &messages::saga_stream(**id)).expect("saga").0.status.is_terminal()
        })
        .count();
    assert_eq!(unfinished, ids.len(), "every saga was in flight when the first node stopped");
    // A second node on the same log (gateway healthy, short deadlines) knows nothing in memory:
    // it recovers the sagas and their deadlines from the log and finishes every one.
    let rt = start_with(store, SimulatedGatewayConfig::default(), config());
    for id in &ids {
        wait_terminal(&rt, *id).await;
    }
    let report = assert_invariants(&rt);
    let undeliverable = (0..60).filter(|i| i % 7 == 0).count();
    assert_eq!((report.completed, report.compensated), (ids.len() - undeliverable, undeliverable));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_orders_with_failure_injection_keep_the_invariants() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let gw = SimulatedGatewayConfig {
        failure_rate: 0.05,
        decline_rate: 0.1,
        decline_above: Some(40_000),
        ..Default::default()
    };
    let rt = start(gw);
    let skus = ["S1", "S2", "S3", "S4", "S5"];
    for s in skus {
        stock(&rt, s, rng.gen_range(50..400)).await;
    }
    let mut ids = Vec::new();
    for i in 0..2000u32 {
        let n = rng.gen_range(1..=3);
        let lines: Vec<(&str, u32, u64)> = (0..n)
            .map(|_| (skus[rng.gen_range(0..skus.len())], rng.gen_range(1..4), rng.gen_range(100..20_000)))
            .collect();
        let country = if rng.gen_bool(0.05) { "XX" } else { "DE" };
        let id = place(&rt, &lines, country).await;
        if rng.gen_bool(0.05) {
            let _ = commands::cancel_order(rt.store(), Uuid::now_v7(), id, None).await;
        }
        if i % 97 == 0 {
            stock(&rt, skus[rng.gen_range(0..skus.len())], 20).await;
        }
        ids.push(id);
    }
    for id in &ids {
        wait_terminal(&rt, *id).await;
    }
    let report = assert_invariants(&rt);
    assert_eq!(report.completed + report.compensated + report.failed, ids.len());
    assert!(report.completed > 100 && report.compensated > 100, "{report:?}");
    rt.shutdown().await.expect("shutdown");
}

/// Memory storage whose writes can be made to fail, to kill a consumer.
#[derive(Debug, Clone, Default)]
struct BreakableStorage {
    inner: MemoryStorage,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl event_store::Storage for BreakableStorage {
    type Value = <MemoryStorage as event_store::Storage>::Value;
    type Iter = <MemoryStorage as event_store::Storage>::Iter;
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, event_store::StorageError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        self.inner.range(start, end, reverse)
    }
    fn apply(&self, batch: event_store::storage::WriteBatch) -> Result<(), event_store::StorageError> {
        self.inner.apply(batch)
    }
    fn sync(&self) -> Result<(), event_store::StorageError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(event_store::StorageError("disk gone (injected)".into()));
        }
        Ok(())
    }
    fn flush_to_os(&self) -> Result<(), event_store::StorageError> {
        self.sync()
    }
    fn size_on_disk(&self) -> Result<u64, event_store::StorageError> {
        Ok(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_fails_stops_with_an_error() {
    let storage = BreakableStorage::default();
    let broken = storage.broken.clone();
    let store = EventStore::open(storage, StoreConfig::default()).expect("store");
    let rt =
        Runtime::start(store.clone(), SimulatedGateway::new(SimulatedGatewayConfig::default()), config())
            .expect("start");
    commands::add_stock(&store, Uuid::now_v7(), Sku::from("A"), 5, None).await.expect("stock");
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    // The next checkpoint save fails, the store is poisoned, and the node stops by itself.
    let _ = commands::add_stock(&store, Uuid::now_v7(), Sku::from("A"), 5, None).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), rt.run_until(std::future::pending())).await;
    let err = outcome.expect("the node stopped by itself").expect_err("with an error");
    assert!(matches!(err, services::node::NodeError::Store { .. }), "a task on the store failed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_survives_a_restart() {
    // The payment gateway is down, so the payment step waits for its deadline; the node stops
    // before the deadline and a new node (gateway healthy) must retry the step when it is due.
    let mut cfg = config();
    cfg.policy = RetryPolicy {
        step_timeout_ms: 700,
        backoff_base_ms: 20,
        backoff_cap_ms: 50,
        max_attempts: 3,
        ..cfg.policy
    };
    cfg.consumer.max_attempts = 1; // dead-letter the failed payment at once; only the deadline can retry it
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = start_with(
        store.clone(),
        SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() },
        cfg.clone(),
    );
    stock(&rt, "A", 10).await;
    let id = place(&rt, &[("A", 1, 100)], "DE").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer::list_dead_letters(rt.store(), "payment-service").expect("letters").is_empty() {
        assert!(Instant::now() < deadline, "the payment never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.shutdown().await.expect("shutdown");
    let saga = saga_of_store(&store, id);
    let pending = saga.step.clone().expect("payment step in flight");
    assert_eq!((pending.what, pending.parts[0].attempt), (aggregates::saga::Step::TakePayment, 1));
    // A new node: it knows nothing in memory; the deadline comes from the log.
    let rt = start_with(store.clone(), SimulatedGatewayConfig::default(), cfg);
    let saga = wait_terminal(&rt, id).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    let attempts: Vec<u32> = rt
        .store()
        .read_stream(&messages::saga_stream(id), 1, Direction::Forward)
        .map(|e| e.expect("e"))
        .filter(|e| e.event_type == "StepRequested")
        .filter_map(|e| serde_json::from_slice::<aggregates::saga::StepRequested>(&e.payload).ok())
        .filter(|r| r.step == aggregates::saga::Step::TakePayment)
        .map(|r| r.attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2], "the payment was retried once, by the restarted node's timer");
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}

fn saga_of_store(store: &EventStore<MemoryStorage>, order: OrderId) -> Saga {
    load::<_, Saga>(store, &messages::saga_stream(order)).expect("load saga").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_skus_stream_is_snapshotted_when_it_reaches_a_hundred_events() {
    let rt = start(SimulatedGatewayConfig::default());
    stock(&rt, "HOT", 1_000).await;
    // Each order reserves and then commits one unit: two inventory events per order.
    let mut orders = Vec::new();
    for _ in 0..60 {
        orders.push(place(&rt, &[("HOT", 1, 100)], "DE").await);
    }
    for id in orders {
        assert_eq!(wait_terminal(&rt, id).await.status, SagaStatus::Completed);
    }
    let stream = messages::inventory_stream(&Sku::from("HOT")).expect("sku");
    let (replayed, version) = load::<_, Inventory>(rt.store(), &stream).expect("replay");
    assert_eq!((version, replayed.available, replayed.shipped), (121, 940, 60));
    let snap = rt.store().load_snapshot(&stream).expect("read").expect("a snapshot past 100 events");
    // Every append to it is one event, so the snapshot is the one taken at the 100th (the next
    // is due at 200).
    assert_eq!(snap.version, 100, "snapshot at {}", snap.version);
    // Loading from the snapshot gives what the whole stream gives.
    assert_eq!(load_inventory(rt.store(), &stream).expect("load"), (replayed, version));
    assert_invariants(&rt);
    rt.shutdown().await.expect("shutdown");
}
