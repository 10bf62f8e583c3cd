//! Rare paths that once lost, skipped or misfiled a message, each pinned by a test that fails
//! without its fix: a dead letter that cannot be written, a store failure while loading, a
//! redelivered command whose reply was lost, a forwarded command's checkpoint, and which roles
//! keep sagas in memory.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::saga::{SagaCommand, SagaLine};
use aggregates::{OrderId, Sku};
use event_store::{
    EventStore, ExpectedVersion, MemoryStorage, NewEvent, RecordedEvent, Storage, StoreConfig, StreamId,
};
use services::app::commands;
use services::app::consumer::{self, ConsumerConfig, Handler, Source};
use services::app::error::HandlerError;
use services::app::gateway::{Breaker, BreakerConfig, SimulatedGateway, SimulatedGatewayConfig};
use services::app::handlers::{Handlers, SimulatedCarrier};
use services::app::messages::{self, Answer, ApiCommand, CommandAnswered};
use services::kafka;
use services::node::{Role, Runtime, RuntimeConfig};
use support::faulty::Faulty;
use tokio::sync::watch;
use uuid::Uuid;

/// A handler that refuses every message for good.
struct AlwaysPoison;

impl Handler for AlwaysPoison {
    fn name(&self) -> &str {
        "poison-test"
    }
    fn source(&self) -> Source {
        Source::Categories(vec!["work".into()])
    }
    fn accepts(&self, _: &RecordedEvent) -> bool {
        true
    }
    fn partition_key(&self, _: &RecordedEvent) -> u64 {
        0
    }
    async fn handle(&self, _: &RecordedEvent, _: (String, u64)) -> Result<(), HandlerError> {
        Err(HandlerError::bad_message("never processable"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_stops_the_consumer_before_the_message() {
    let storage = Faulty::default();
    let store = EventStore::open(storage.clone(), StoreConfig::default()).expect("store");
    let work = StreamId::new("work-1").expect("stream");
    let poison =
        store.append_to(&work, ExpectedVersion::Any, vec![NewEvent::json("Job", b"{}".to_vec())]).await;
    let position = poison.expect("append").last_position;
    // The store takes no dead letter.
    storage.fail_writes_of(Some(b"deadletters-"));
    let (_stop, rx) = watch::channel(false);
    let config = ConsumerConfig { workers: 1, max_attempts: 1, retry_base: Duration::from_millis(1) };
    let run = consumer::run(store.clone(), Arc::new(AlwaysPoison), config, rx);
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("the consumer stopped by itself");
    assert!(outcome.is_err(), "a message neither handled nor dead-lettered must stop the consumer");
    let cp = store.checkpoint("consumer.poison-test").expect("checkpoint").unwrap_or(0);
    assert!(cp < position, "the checkpoint moved past the message to {cp}");
    // Once the store takes writes again, the message is dead-lettered, not skipped.
    storage.fail_writes_of(None);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(consumer::run(store.clone(), Arc::new(AlwaysPoison), config, rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer::list_dead_letters(&store, "poison-test").expect("letters").is_empty() {
        assert!(Instant::now() < deadline, "the message was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("stop");
    task.await.expect("join").expect("clean stop");
    assert!(store.checkpoint("consumer.poison-test").expect("checkpoint").unwrap_or(0) >= position);
}

fn reserve(order: OrderId, sku: &str, quantity: u64) -> SagaCommand {
    SagaCommand::ReserveStock { order_id: order, lines: vec![SagaLine { sku: Sku::from(sku), quantity }] }
}

async fn send<S: Storage>(store: &EventStore<S>, command_id: Uuid, command: &SagaCommand) -> RecordedEvent {
    let e = messages::command_event(command_id, Uuid::now_v7(), Uuid::now_v7(), command);
    let id = e.event_id;
    store.append_to(&messages::command_stream(command), ExpectedVersion::Any, vec![e]).await.expect("send");
    store.find_event(id).expect("find").expect("sent")
}

fn handlers<S: Storage>(store: &EventStore<S>) -> Handlers<S, SimulatedGateway> {
    Handlers::new(
        store.clone(),
        Breaker::new(SimulatedGateway::new(SimulatedGatewayConfig::default()), BreakerConfig::default()),
        SimulatedCarrier::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_is_answered_again_with_its_recorded_reply() {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    commands::add_stock(&store, Uuid::now_v7(), Sku::from("A"), 10, None).await.expect("stock");
    let h = handlers(&store);
    let order = OrderId(Uuid::now_v7());
    let command_id = Uuid::now_v7();
    let first = send(&store, command_id, &reserve(order, "A", 3)).await;
    h.handle_command(&first, None).await.expect("handle");
    // The saga never heard the reply, and sends the command again (same command id).
    let again = send(&store, command_id, &reserve(order, "A", 3)).await;
    h.handle_command(&again, None).await.expect("handle again");
    h.handle_command(&again, None).await.expect("the same delivery once more");
    let replies: Vec<RecordedEvent> = store
        .read_stream(&messages::replies_stream(order), 1, event_store::Direction::Forward)
        .map(|e| e.expect("read"))
        .collect();
    assert_eq!(replies.len(), 2, "the reply, and the reply again for the redelivery (once): {replies:?}");
    assert_eq!(replies[1].payload, replies[0].payload, "the same answer");
    assert_eq!(replies[1].metadata.get(messages::RESENT_OF), Some(&replies[0].event_id.to_string()));
    assert_eq!(replies[1].causation_id, again.event_id);
    // No second effect: one reservation.
    let (inv, _) = services::app::handlers::load_inventory(
        &store,
        &messages::inventory_stream(&Sku::from("A")).expect("s"),
    )
    .expect("load");
    assert_eq!((inv.available, inv.reserved_total()), (7, 3));
}

fn forwarded_place(key: Uuid, customer: &str, source: &str) -> (ApiCommand, RecordedEvent) {
    let order_id = OrderId(Uuid::new_v5(&key, b"order"));
    let command = ApiCommand::PlaceOrder {
        key,
        order_id,
        customer_id: customer.into(),
        items: vec![aggregates::order::LineItem {
            sku: Sku::from("A"),
            quantity: 1,
            unit_price: aggregates::Money(100),
        }],
        currency: "EUR".into(),
        shipping_address: None,
    };
    let e = command.to_event(source, None);
    let mut recorded = RecordedEvent {
        position: 1,
        stream_id: command.stream().expect("stream").to_string(),
        version: 1,
        event_id: e.event_id,
        event_type: e.event_type.clone(),
        schema_version: 1,
        recorded_at_ns: 0,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        metadata: e.metadata.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
    };
    recorded.metadata.insert(messages::SOURCE_KEY.into(), source.into());
    (command, recorded)
}

fn answer_of<S: Storage>(store: &EventStore<S>, forwarded: &RecordedEvent, source: &str) -> Answer {
    let e =
        store.find_event(messages::answer_id(forwarded.event_id, source)).expect("find").expect("answered");
    serde_json::from_slice::<CommandAnswered>(&e.payload).expect("answer").answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_command_moves_its_checkpoint_with_its_effect_and_answer() {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let key = Uuid::now_v7();
    let (command, e) = forwarded_place(key, "ann", "causeway://query-0");
    commands::handle_forwarded(&store, &e, &command, ("consumer.order-service@order_commands/0".into(), 7))
        .await
        .expect("handle");
    let order = OrderId(Uuid::new_v5(&key, b"order"));
    assert_eq!(store.stream_version(&messages::order_stream(order)).expect("version"), 1, "placed");
    assert_eq!(store.checkpoint("consumer.order-service@order_commands/0").expect("cp"), Some(7));
    assert_eq!(answer_of(&store, &e, "causeway://query-0"), Answer::Done {});
    // Another query pod forwards the same key with another body: 409 there, nothing placed.
    let (other, e2) = forwarded_place(key, "someone else", "causeway://query-1");
    commands::handle_forwarded(&store, &e2, &other, ("consumer.order-service@order_commands/0".into(), 8))
        .await
        .expect("handle");
    assert_eq!(answer_of(&store, &e2, "causeway://query-1"), Answer::KeyReused);
    assert_eq!(store.checkpoint("consumer.order-service@order_commands/0").expect("cp"), Some(8));
    // A third forwards the same key and body: the original outcome.
    let (same, e3) = forwarded_place(key, "ann", "causeway://query-2");
    commands::handle_forwarded(&store, &e3, &same, ("consumer.order-service@order_commands/0".into(), 9))
        .await
        .expect("handle");
    assert_eq!(answer_of(&store, &e3, "causeway://query-2"), Answer::Done {});
    assert_eq!(store.stream_version(&messages::order_stream(order)).expect("version"), 1, "placed once");
    // A redelivery of the first changes nothing.
    commands::handle_forwarded(&store, &e, &command, ("consumer.order-service@order_commands/0".into(), 7))
        .await
        .expect("redelivered");
    assert_eq!(answer_of(&store, &e, "causeway://query-0"), Answer::Done {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_while_loading_is_a_server_error_not_a_refusal() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;
    let storage = Faulty::default();
    let store = EventStore::open(storage.clone(), StoreConfig::default()).expect("store");
    let rt = Runtime::start(
        store.clone(),
        SimulatedGateway::new(SimulatedGatewayConfig::default()),
        RuntimeConfig::default(),
    )
    .expect("start");
    let (_stopping_tx, stopping) = watch::channel(false);
    let app = services::http::app(services::http::ApiState {
        store: store.clone(),
        models: rt.models().clone(),
        ready: rt.readiness().clone(),
        metrics: None,
        stopping,
        admin: None,
        commands: services::http::CommandRoute::Local,
        admission: rt.admission().cloned(),
        feeds: services::http::LiveFeeds::default(),
        limits: services::http::HttpLimits::default(),
        read_token: None,
        compat: Default::default(),
    });
    let order = OrderId(Uuid::now_v7());
    storage.fail_reads_of(Some(format!("order-{order}").as_bytes()));
    let req =
        Request::builder().method("POST").uri(format!("/api/orders/{order}/cancel")).body(Body::empty());
    let resp = app.oneshot(req.expect("request")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "the client did nothing wrong");
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "internal");
    storage.fail_reads_of(None);
    rt.shutdown().await.expect("shutdown");
}

/// A saga in flight, written straight to the log.
async fn saga_in_flight<S: Storage>(store: &EventStore<S>) -> OrderId {
    use aggregates::codec::DomainEvent;
    use aggregates::saga::{SagaEvent, SagaStarted, Step, StepRequested};
    let order = OrderId(Uuid::now_v7());
    let events = [
        SagaEvent::SagaStarted(SagaStarted {
            order_id: order,
            lines: vec![SagaLine { sku: Sku::from("A"), quantity: 1 }],
            amount: aggregates::Money(1),
            address: None,
            definition: aggregates::saga::DEFINITION,
            policy: None,
        }),
        SagaEvent::StepRequested(StepRequested {
            step: Step::TakePayment,
            command_id: Uuid::now_v7(),
            attempt: 1,
            deadline_ns: u64::MAX / 2,
            sku: None,
        }),
    ];
    let events = events.iter().map(|e| NewEvent::json(e.event_type(), e.to_payload())).collect();
    store.append_to(&messages::saga_stream(order), ExpectedVersion::NoStream, events).await.expect("append");
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_nodes_that_run_the_saga_manager_keep_sagas_in_memory() {
    // Nothing listens here: the Kafka consumers wait for a broker that never comes.
    let kafka = kafka::KafkaConfig::new("127.0.0.1:9", "node-x");
    for (role, expected) in [(Role::Query, None), (Role::Payment, None), (Role::Saga, Some(1))] {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        saga_in_flight(&store).await;
        let config = RuntimeConfig { kafka: Some(kafka.clone()), ..RuntimeConfig::default() };
        let rt = Runtime::start_role(
            store,
            SimulatedGateway::new(SimulatedGatewayConfig::default()),
            config,
            role,
        )
        .expect("start");
        assert_eq!(rt.saga().map(|s| s.in_flight()), expected, "{role:?}");
        assert!(!rt.readiness().is_ready(), "{role:?}: not ready without its Kafka inputs");
        tokio::time::timeout(Duration::from_secs(30), rt.shutdown())
            .await
            .expect("prompt stop")
            .expect("clean");
    }
}

/// The payload of the first reply to `order`'s commands, as text.
fn first_reply(store: &EventStore<MemoryStorage>, order: OrderId) -> String {
    let reply = store
        .read_stream(&messages::replies_stream(order), 1, event_store::Direction::Forward)
        .next()
        .expect("a reply")
        .expect("read");
    String::from_utf8_lossy(&reply.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_inventory_pod_refuses_a_stock_command_for_several_skus() {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    for sku in ["A", "B"] {
        commands::add_stock(&store, Uuid::now_v7(), Sku::from(sku), 10, None).await.expect("stock");
    }
    let h = handlers(&store).with_sharded_inventory(true);
    let order = OrderId(Uuid::now_v7());
    // A saga recorded before stock went per SKU sends one command for both SKUs.
    let legacy = SagaCommand::ReserveStock {
        order_id: order,
        lines: vec![
            SagaLine { sku: Sku::from("A"), quantity: 1 },
            SagaLine { sku: Sku::from("B"), quantity: 1 },
        ],
    };
    let e = send(&store, Uuid::now_v7(), &legacy).await;
    h.handle_command(&e, None).await.expect("handle");
    let text = first_reply(&store, order);
    assert!(text.contains("rejected") && text.contains("several inventory pods"), "{text}");
    for sku in ["A", "B"] {
        let (inv, _) = services::app::handlers::load_inventory(
            &store,
            &messages::inventory_stream(&Sku::from(sku)).expect("s"),
        )
        .expect("load");
        assert_eq!(inv.reserved_total(), 0, "{sku}: nothing reserved on a pod that may not own it");
    }
    // Two lines of one SKU were keyed by the order too: refused as well.
    let other = OrderId(Uuid::now_v7());
    let twice = SagaCommand::ReserveStock {
        order_id: other,
        lines: vec![
            SagaLine { sku: Sku::from("A"), quantity: 1 },
            SagaLine { sku: Sku::from("A"), quantity: 1 },
        ],
    };
    let e = send(&store, Uuid::now_v7(), &twice).await;
    h.handle_command(&e, None).await.expect("handle");
    assert!(first_reply(&store, other).contains("several inventory pods"));
    // One SKU per command, as the saga sends them now, is decided.
    let per_sku = reserve(order, "A", 2);
    let e = send(&store, Uuid::now_v7(), &per_sku).await;
    h.handle_command(&e, None).await.expect("handle");
    let (inv, _) = services::app::handlers::load_inventory(
        &store,
        &messages::inventory_stream(&Sku::from("A")).expect("s"),
    )
    .expect("load");
    assert_eq!(inv.reserved_total(), 2);
}

/// A retry that arrives while the first attempt of the same order is still being made durable
/// (a slow disk: each sync takes 300 ms, longer than the retry's first waits) and under another
/// trace context: it waits for the first attempt and answers as it did, not as a reused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_another_trace_while_the_first_attempt_syncs_is_the_same_order() {
    use aggregates::order::{LineItem, OrderCommand};
    use services::app::trace::TraceContext;
    let storage = Faulty::default();
    let store = EventStore::open(storage.clone(), StoreConfig::default()).expect("store");
    storage.slow_syncs(300);
    let key = Uuid::now_v7();
    let order = || OrderCommand::Place {
        order_id: OrderId(Uuid::new_v5(&key, b"order")),
        customer_id: aggregates::CustomerId("c".into()),
        items: vec![LineItem { sku: Sku::from("A"), quantity: 1, unit_price: aggregates::Money(5) }],
        currency: aggregates::Currency::from("EUR"),
        shipping_address: None,
    };
    let (first, second) = (TraceContext::new_root(), TraceContext::new_root());
    let a = {
        let store = store.clone();
        let order = order();
        tokio::spawn(async move { commands::place_order(&store, key, order, Some(&first)).await })
    };
    // The second attempt starts while the first waits for its sync.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.pending_appends() == 0 {
        assert!(Instant::now() < deadline, "the first attempt never started");
        tokio::task::yield_now().await;
    }
    let b = commands::place_order(&store, key, order(), Some(&second))
        .await
        .expect("the retry is the same order");
    let a = a.await.expect("join").expect("the first attempt");
    assert_eq!((a.0, a.1.first_position), (b.0, b.1.first_position));
    assert_eq!(store.head(), a.1.last_position, "one order, written once");
}
