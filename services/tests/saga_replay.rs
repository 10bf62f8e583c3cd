//! The saga decider against sagas earlier builds recorded: `fixtures/saga-log-v<n>.jsonl` is the
//! log of an embedded node that ran sagas of definition `n` down every path
//! (scripts/saga-fixture.sh). Replaying each must find no divergence: a change to the saga that
//! would decide a recorded saga otherwise (and so break sagas running when the change is
//! deployed) fails here.

use aggregates::saga::{OnExhausted, RetryPolicy};
use event_store::{EventStore, MemoryStorage, RecordedEvent, StoreConfig};
use services::app::saga::replay::{replay, Replayed};

/// The settings the fixture's node ran with.
fn policy() -> RetryPolicy {
    RetryPolicy {
        step_timeout_ms: 400,
        max_attempts: 2,
        on_exhausted: OnExhausted::Quarantine,
        ..RetryPolicy::default()
    }
}

/// An event as `causeway events --json` prints it, back to the record it was.
fn record(line: &str) -> RecordedEvent {
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let text = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {line}")).to_owned();
    let id = |k: &str| text(k).parse::<uuid::Uuid>().expect("a uuid");
    let at =
        time::OffsetDateTime::parse(&text("recorded_at"), &time::format_description::well_known::Rfc3339)
            .expect("an RFC 3339 time");
    RecordedEvent {
        position: v["position"].as_u64().expect("position"),
        stream_id: text("stream_id"),
        version: v["version"].as_u64().expect("version"),
        event_id: id("event_id"),
        event_type: text("event_type"),
        schema_version: v["schema_version"].as_u64().expect("schema version") as u32,
        recorded_at_ns: at.unix_timestamp_nanos() as u64,
        correlation_id: id("correlation_id"),
        causation_id: id("causation_id"),
        metadata: serde_json::from_value(v["metadata"].clone()).expect("metadata"),
        payload: serde_json::to_vec(&v["payload"]).expect("payload"),
        content_type: text("content_type"),
    }
}

/// A store holding `events` exactly as recorded (positions, versions, times).
fn store_of(events: &[RecordedEvent]) -> EventStore<MemoryStorage> {
    let storage = MemoryStorage::new();
    let mut import = event_store::raw::Importer::new(&storage).expect("importer");
    for e in events {
        import.push(e).expect("import");
    }
    import.finish().expect("finish");
    EventStore::open(storage, StoreConfig::default()).expect("store")
}

/// The saga manager's checkpoint, as the node that wrote a fixture left it when it stopped: every
/// input taken.
const TAKEN: &str = "consumer.saga-manager";

/// [`store_of`], with the saga manager's checkpoint at the head (for a test outside a runtime).
fn store_taken(events: &[RecordedEvent]) -> EventStore<MemoryStorage> {
    let store = store_of(events);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(store.save_checkpoint(TAKEN, store.head())).expect("checkpoint");
    store
}

fn parse(log: &str) -> Vec<RecordedEvent> {
    log.lines().filter(|l| !l.trim().is_empty()).map(record).collect()
}

/// The log of the release before definition 2 (the fraud check): sagas of definition 1.
fn fixture() -> Vec<RecordedEvent> {
    parse(include_str!("fixtures/saga-log-v1.jsonl"))
}

/// Every fixture: (definition, its log, its sagas).
fn fixtures() -> [(u32, Vec<RecordedEvent>, usize); 2] {
    [(1, fixture(), 8), (2, parse(include_str!("fixtures/saga-log-v2.jsonl")), 9)]
}

#[test]
fn the_current_decider_decides_every_recorded_saga_as_it_was_recorded() {
    let mut idle = 0;
    for (definition, events, count) in fixtures() {
        let Replayed { sagas, decisions, idle_inputs, divergences } =
            replay(&store_taken(&events), policy(), 1).expect("replay");
        assert!(divergences.is_empty(), "definition {definition}: {divergences:#?}");
        assert_eq!(sagas, count, "definition {definition}");
        // Every kind of decision is in the fixture: starts, replies, deadlines, operators' actions.
        assert!(decisions > 50, "definition {definition}: {decisions}");
        idle += idle_inputs;
        for kind in
            ["SagaQuarantined", "OperatorActed", "CompensationRequested", "SagaCompleted", "SagaCompensated"]
        {
            assert!(events.iter().any(|e| e.event_type == kind), "the fixture of {definition} has no {kind}");
        }
        let started = events.iter().filter(|e| e.event_type == "SagaStarted");
        for e in started {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
            assert_eq!(v["definition"].as_u64().unwrap_or(1), u64::from(definition), "{}", e.stream_id);
        }
    }
    // Inputs that decided nothing were checked to decide nothing still (the newest fixture has
    // one).
    assert!(idle > 0, "no fixture has an input that decided nothing");
    // A reply delivered again after its saga ended decided nothing, and decides nothing now.
    let mut events = fixture();
    let first_reply = events.iter().find(|e| e.event_type == "CommandReplied").expect("a reply").clone();
    let version = events.iter().filter(|e| e.stream_id == first_reply.stream_id).map(|e| e.version).max();
    let last = events.last().expect("events").clone();
    events.push(RecordedEvent {
        event_id: uuid::Uuid::now_v7(),
        position: last.position + 1,
        version: version.unwrap_or(0) + 1,
        recorded_at_ns: last.recorded_at_ns + 1,
        ..first_reply
    });
    let again = replay(&store_taken(&events), policy(), 1).expect("replay");
    assert!(again.divergences.is_empty(), "{:#?}", again.divergences);
    assert_eq!(again.idle_inputs, 1);
    // The newest fixture has every step of the newest definition, the fraud check's refusal too.
    let (_, newest, _) = &fixtures()[1];
    assert!(
        newest
            .iter()
            .any(|e| e.event_type == "StepFailed"
                && String::from_utf8_lossy(&e.payload).contains("check_fraud"))
    );
}

#[test]
fn a_decision_the_current_decider_would_not_make_is_reported() {
    let mut events = fixture();
    // As if an earlier build had sent the payment on its second attempt first: the current
    // decider's first payment is attempt 1.
    let tampered = events
        .iter_mut()
        .find(|e| {
            e.event_type == "StepRequested" && String::from_utf8_lossy(&e.payload).contains("take_payment")
        })
        .expect("a payment step");
    let mut payload: serde_json::Value = serde_json::from_slice(&tampered.payload).expect("json");
    payload["attempt"] = serde_json::json!(2);
    tampered.payload = serde_json::to_vec(&payload).expect("json");
    let (stream, version) = (tampered.stream_id.clone(), tampered.version);
    let replayed = replay(&store_of(&events), policy(), 1).expect("replay");
    assert_eq!(replayed.divergences.len(), 1, "{:#?}", replayed.divergences);
    let d = &replayed.divergences[0];
    assert_eq!(format!("saga-{}", d.order_id), stream);
    assert!(d.version <= version, "{d:?}");
    assert!(d.recorded.contains("\"attempt\":2") && d.now.contains("\"attempt\":1"), "{d:?}");
    // Each saga is replayed under the policy it recorded, whatever the flags say; a saga that
    // recorded none (an older build's) under the flags, where others than the node ran with
    // decide its deadlines otherwise.
    let longer = RetryPolicy { max_attempts: 4, ..policy() };
    assert!(replay(&store_of(&fixture()), longer, 1).expect("replay").divergences.is_empty());
    let mut unrecorded = fixture();
    for e in unrecorded.iter_mut().filter(|e| e.event_type == "SagaStarted") {
        let mut payload: serde_json::Value = serde_json::from_slice(&e.payload).expect("json");
        payload.as_object_mut().expect("object").remove("policy").expect("a recorded policy");
        e.payload = serde_json::to_vec(&payload).expect("json");
    }
    assert!(replay(&store_of(&unrecorded), policy(), 1).expect("replay").divergences.is_empty());
    assert!(!replay(&store_of(&unrecorded), longer, 1).expect("replay").divergences.is_empty());
    // A sample replays a share of the sagas.
    assert_eq!(replay(&store_of(&fixture()), policy(), 3).expect("replay").sagas, 3);
}

/// The example change of ARCHITECTURE.md ("Changing the saga"), carried out: definition 2 puts a
/// fraud check between the stock and the payment. A saga the previous release started (the
/// fixture's log, cut just after one saga's stock was reserved and before it decided its next
/// step) finishes on definition 1's path under this build; an order placed now takes the fraud
/// check; and a screened-out order is cancelled with its stock back and no payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_the_last_release_started_finishes_on_its_path_and_new_sagas_take_the_new_step() {
    use aggregates::order::{LineItem, OrderCommand};
    use aggregates::saga::{path, Saga, SagaStatus, Step, DEFINITION};
    use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
    use services::app::aggregate::load;
    use services::app::gateway::{SimulatedGateway, SimulatedGatewayConfig};
    use services::app::handlers::FraudRules;
    use services::app::{commands, messages};
    use services::node::{Runtime, RuntimeConfig};
    use std::time::{Duration, Instant};

    let events = fixture();
    // The first saga of the fixture that completed, and the reply that finished its stock step.
    let completed = events.iter().find(|e| e.event_type == "SagaCompleted").expect("a completed saga");
    let payment_requested = events
        .iter()
        .find(|e| {
            e.stream_id == completed.stream_id
                && e.event_type == "StepRequested"
                && String::from_utf8_lossy(&e.payload).contains("take_payment")
        })
        .expect("its payment step");
    let reply = events.iter().find(|e| e.event_id == payment_requested.causation_id).expect("its cause");
    assert_eq!(reply.event_type, "CommandReplied");
    let cut: Vec<RecordedEvent> = events.iter().filter(|e| e.position <= reply.position).cloned().collect();
    let store = store_of(&cut);
    let old = OrderId(completed.correlation_id);
    let saga = |store: &EventStore<MemoryStorage>, id: OrderId| {
        load::<_, Saga>(store, &messages::saga_stream(id)).expect("load saga").0
    };
    let before = saga(&store, old);
    assert_eq!((before.definition, before.done.as_slice()), (1, &[][..]), "{before:?}");
    // Had the saga manager taken that reply and decided nothing from it, the replay would say so:
    // this build decides the next step from it.
    let probe = store_of(&cut);
    probe.save_checkpoint(TAKEN, probe.head()).await.expect("checkpoint");
    let found = replay(&probe, policy(), 1).expect("replay").divergences;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].order_id, old);
    assert_eq!(found[0].input, "CommandReplied (which decided nothing)");
    assert!(found[0].now.contains("StepSucceeded") && found[0].now.contains("take_payment"), "{found:?}");

    let config = RuntimeConfig {
        policy: policy(),
        fraud: FraudRules { max_amount_minor: Some(10_000) },
        timer_interval: Duration::from_millis(20),
        ..RuntimeConfig::default()
    };
    let rt = Runtime::start(store, SimulatedGateway::new(SimulatedGatewayConfig::default()), config)
        .expect("this build starts on the last release's log");
    let wait_end = |id: OrderId| {
        let store = rt.store().clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let s = saga(&store, id);
                if s.status.is_terminal() {
                    return s;
                }
                assert!(Instant::now() < deadline, "saga {id} did not end: {s:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let finished = wait_end(old).await;
    assert_eq!(finished.status, SagaStatus::Completed, "{finished:?}");
    assert_eq!((finished.definition, finished.done.as_slice()), (1, path(1)));
    assert!(!finished.done.contains(&Step::CheckFraud));

    commands::add_stock(rt.store(), uuid::Uuid::now_v7(), Sku::from("SKU-NEW"), 10, None)
        .await
        .expect("stock");
    let place = |amount: u64| {
        let store = rt.store().clone();
        async move {
            let order_id = OrderId(uuid::Uuid::now_v7());
            let cmd = OrderCommand::Place {
                order_id,
                customer_id: CustomerId("carol".into()),
                items: vec![LineItem { sku: Sku::from("SKU-NEW"), quantity: 1, unit_price: Money(amount) }],
                currency: Currency::from("EUR"),
                shipping_address: Some(aggregates::shipping::Address {
                    line1: "1 Main St".into(),
                    city: "Berlin".into(),
                    postal_code: "10115".into(),
                    country: "DE".into(),
                }),
            };
            commands::place_order(&store, uuid::Uuid::now_v7(), cmd, None).await.expect("place");
            order_id
        }
    };
    let new = wait_end(place(2_500).await).await;
    assert_eq!(new.status, SagaStatus::Completed, "{new:?}");
    assert_eq!((new.definition, new.done.as_slice()), (DEFINITION, path(DEFINITION)));
    assert!(new.done.contains(&Step::CheckFraud));
    // Over the limit: refused by the check, so the stock goes back and no money moves.
    let refused_id = place(20_000).await;
    let refused = wait_end(refused_id).await;
    assert_eq!(refused.status, SagaStatus::Compensated, "{refused:?}");
    assert_eq!(refused.failed_step, Some(Step::CheckFraud));
    assert!(rt.store().stream_version(&messages::payment_stream(refused_id)).expect("payment stream") == 0);
    let stock = services::app::handlers::load_inventory(
        rt.store(),
        &messages::inventory_stream(&Sku::from("SKU-NEW")).expect("sku"),
    )
    .expect("inventory")
    .0;
    assert_eq!((stock.available, stock.shipped, stock.reserved.len()), (9, 1, 0), "one sold, one released");
    // And the log, old and new sagas together, still replays without a divergence.
    let after = replay(rt.store(), policy(), 1).expect("replay");
    assert!(after.divergences.is_empty(), "{:#?}", after.divergences);
    rt.shutdown().await.expect("shutdown");
}
