//! The Kafka mirror against a real Kafka-protocol broker (Nisshi, started here): every event
//! arrives once, in its stream's order, as a CloudEvents record any client can read; a relay
//! that restarts behind its checkpoint sends nothing twice, also when other nodes' records follow
//! its own stamped at any time; a broker outage loses nothing; and a lost store is restored from
//! the topics byte for byte.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aggregates::order::{LineItem, OrderCommand};
use aggregates::saga::Saga;
use aggregates::shipping::Address;
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use causeway_tests::broker::{read_everything, Broker, Record};
use event_store::{EventStore, RecordedEvent, SledConfig, SledStorage, Storage, StoreConfig};
use rdkafka::ClientConfig;
use services::app::aggregate::load;
use services::app::commands;
use services::app::gateway::SimulatedGateway;
use services::app::{invariants, messages};
use services::kafka::relay::CHECKPOINT;
use services::kafka::KafkaConfig;
use services::node::{Runtime, RuntimeConfig};
use uuid::Uuid;

fn kafka(broker: &Broker) -> KafkaConfig {
    KafkaConfig {
        partitions: 3,
        delivery_timeout: Duration::from_secs(3),
        ..KafkaConfig::new(broker.bootstrap(), "node-a")
    }
}

fn start<S: Storage>(store: EventStore<S>, kafka: KafkaConfig) -> Runtime<S, SimulatedGateway> {
    let config = RuntimeConfig { kafka: Some(kafka), ..RuntimeConfig::default() };
    Runtime::start(store, SimulatedGateway::default(), config).expect("start")
}

async fn orders<S: Storage>(rt: &Runtime<S, SimulatedGateway>, n: usize) -> Vec<OrderId> {
    commands::add_stock(rt.store(), Uuid::now_v7(), Sku::from("A"), 1000, None).await.expect("stock");
    let mut ids = Vec::new();
    for i in 0..n {
        let order_id = OrderId(Uuid::now_v7());
        let cmd = OrderCommand::Place {
            order_id,
            customer_id: CustomerId(format!("c{}", i % 3)),
            items: vec![LineItem { sku: Sku::from("A"), quantity: 1, unit_price: Money(500) }],
            currency: Currency::from("EUR"),
            shipping_address: Some(Address {
                line1: "1 Main St".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                // Every fifth is undeliverable: its saga compensates.
                country: if i % 5 == 4 { "XX".into() } else { "DE".into() },
            }),
        };
        commands::place_order(rt.store(), Uuid::now_v7(), cmd, None).await.expect("place");
        ids.push(order_id);
    }
    ids
}

async fn sagas_end<S: Storage>(rt: &Runtime<S, SimulatedGateway>, ids: &[OrderId]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        while !load::<_, Saga>(rt.store(), &messages::saga_stream(*id)).expect("saga").0.status.is_terminal()
        {
            assert!(Instant::now() < deadline, "saga {id} did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until the relay's checkpoint reaches the head (and the head stays put).
async fn relayed<S: Storage>(store: &EventStore<S>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let head = store.head();
        if store.checkpoint(CHECKPOINT).expect("checkpoint") == Some(head) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if store.head() == head {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not catch up: {:?} of {head}",
            store.checkpoint(CHECKPOINT)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a node on `store`, places `n` orders, waits until their sagas ended and the relay
/// delivered everything, and stops the node.
async fn run_orders<S: Storage>(store: &EventStore<S>, broker: &Broker, n: usize) {
    let rt = start(store.clone(), kafka(broker));
    let ids = orders(&rt, n).await;
    sagas_end(&rt, &ids).await;
    relayed(store, Duration::from_secs(60)).await;
    rt.shutdown().await.expect("shutdown");
}

/// Every event of `log` is in Kafka exactly once, in stream order per key, with its attributes.
fn assert_mirrored(log: &[RecordedEvent], records: &[Record]) {
    let ours: Vec<&Record> = records
        .iter()
        .filter(|r| r.headers.get("ce_source").map(String::as_str) == Some("causeway://node-a"))
        .collect();
    let mut by_position: HashMap<u64, &Record> = HashMap::new();
    for r in &ours {
        let pos: u64 = r.headers["ce_position"].parse().expect("position");
        assert!(by_position.insert(pos, r).is_none(), "position {pos} arrived twice");
    }
    assert_eq!(by_position.len(), log.len(), "every event arrives");
    for e in log {
        let r = by_position[&e.position];
        let category = e.stream_id.split_once('-').map_or("", |(c, _)| c);
        let topic = match category {
            "deadletters" => "dead_letters".to_owned(),
            c if c.ends_with("_commands") => c.to_owned(),
            c => format!("{c}_domain_events"),
        };
        assert_eq!(r.topic, topic);
        // The key is the shard key: the stream id after its category (the order id, the SKU).
        assert_eq!(r.key, e.stream_id.split_once('-').map_or(e.stream_id.as_str(), |(_, k)| k));
        assert_eq!(r.headers["ce_partitionkey"], r.key);
        assert_eq!(r.headers["ce_specversion"], "1.0");
        assert_eq!(r.headers["ce_id"], e.event_id.to_string());
        assert_eq!(r.headers["ce_type"], e.event_type);
        assert_eq!(r.headers["ce_subject"], e.stream_id);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["ce_streamversion"], e.version.to_string());
        assert_eq!(r.headers["ce_correlationid"], e.correlation_id.to_string());
        assert_eq!(r.headers["ce_causationid"], e.causation_id.to_string());
        assert_eq!(r.headers["ce_schemaversion"], e.schema_version.to_string());
        let t = time::OffsetDateTime::parse(
            &r.headers["ce_time"],
            &time::format_description::well_known::Rfc3339,
        )
        .expect("ce_time is RFC 3339");
        assert_eq!(t, e.recorded_at());
        assert_eq!(r.value, e.payload);
        serde_json::from_slice::<serde_json::Value>(&r.value).expect("the value is JSON");
    }
    // Per stream, in one partition, versions in order; per key (and topic), one partition.
    let mut last: HashMap<&str, (i32, u64)> = HashMap::new();
    let mut key_partition: HashMap<(&str, &str), i32> = HashMap::new();
    for r in ours {
        let v: u64 = r.headers["ce_streamversion"].parse().expect("version");
        let stream = r.headers["ce_subject"].as_str();
        if let Some((p, prev)) = last.insert(stream, (r.partition, v)) {
            assert_eq!(p, r.partition, "{stream} spans partitions");
            assert_eq!(v, prev + 1, "{stream} out of order");
        }
        let p = *key_partition.entry((r.topic.as_str(), r.key.as_str())).or_insert(r.partition);
        assert_eq!(p, r.partition, "key {} spans partitions of {}", r.key, r.topic);
    }
}

/// Kafka holds exactly `store`'s log (read with a plain consumer).
async fn assert_kafka_holds<S: Storage>(broker: &Broker, store: &EventStore<S>) {
    let bootstrap = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || read_everything(&bootstrap)).await.expect("read");
    assert_mirrored(&log_of(store), &records);
}

fn log_of<S: Storage>(store: &EventStore<S>) -> Vec<RecordedEvent> {
    store.read_all(1).collect::<Result<_, _>>().expect("log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_in_order_as_a_cloudevent_and_a_relay_restart_sends_nothing_twice() {
    let broker = Broker::start();
    let store = EventStore::open(event_store::MemoryStorage::new(), StoreConfig::default()).expect("store");
    run_orders(&store, &broker, 20).await;
    let log = log_of(&store);
    assert_kafka_holds(&broker, &store).await;

    // A relay that lost its last checkpoints (a crash before saving) resumes behind what Kafka
    // holds: the fence keeps it from sending those events again.
    store.save_checkpoint(CHECKPOINT, log.len() as u64 / 3).await.expect("rewind");
    run_orders(&store, &broker, 5).await;
    assert_kafka_holds(&broker, &store).await;
}

/// Writes `per_partition` records of another node (`causeway://node-b`) to every partition of
/// every Causeway topic on the broker, stamped `stamp_ms` (blocking).
fn foreign_records(bootstrap: &str, per_partition: usize, stamp_ms: i64) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("producer");
    let md = producer.client().fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut position = 0u64;
    for t in md.topics().iter().filter(|t| !t.name().starts_with("__")) {
        for p in t.partitions() {
            for _ in 0..per_partition {
                position += 1;
                let pos = position.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "ce_source", value: Some("causeway://node-b") })
                    .insert(Header { key: "ce_position", value: Some(pos.as_str()) });
                let record = BaseRecord::to(t.name())
                    .partition(p.id())
                    .key("other-1")
                    .payload("{}")
                    .timestamp(stamp_ms)
                    .headers(headers);
                producer.send(record).map_err(|(e, _)| e).expect("send");
                producer.poll(Duration::ZERO);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_finds_the_nodes_records_among_other_nodes_records_stamped_at_any_time() {
    let broker = Broker::start();
    let store = EventStore::open(event_store::MemoryStorage::new(), StoreConfig::default()).expect("store");
    run_orders(&store, &broker, 10).await;

    // Other nodes write the same partitions after us: some with a clock an hour behind, some
    // with the current time. The fence reads by time, so neither may hide our records.
    let bootstrap = broker.bootstrap();
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    tokio::task::spawn_blocking(move || {
        foreign_records(&bootstrap, 300, now_ms - 3_600_000);
        foreign_records(&bootstrap, 300, now_ms);
    })
    .await
    .expect("foreign records");

    // The relay lost its last checkpoints: it resumes a third of the way in, reads the fence and
    // sends only what Kafka does not hold, then what comes next.
    let log = log_of(&store);
    store.save_checkpoint(CHECKPOINT, log.len() as u64 / 3).await.expect("rewind");
    run_orders(&store, &broker, 3).await;
    assert_kafka_holds(&broker, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_the_node_keeps_working() {
    let mut broker = Broker::start();
    let store = EventStore::open(event_store::MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = start(store.clone(), kafka(&broker));
    let first = orders(&rt, 10).await;
    sagas_end(&rt, &first).await;
    relayed(&store, Duration::from_secs(60)).await;

    broker.kill9();
    // The node keeps taking orders and finishing sagas; the relay falls behind.
    let during = orders(&rt, 10).await;
    sagas_end(&rt, &during).await;
    // Longer than the delivery timeout: the relay's sends fail and it backs off.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let behind = store.checkpoint(CHECKPOINT).expect("checkpoint").unwrap_or(0);
    assert!(behind < store.head(), "the relay cannot have delivered during the outage");

    broker.restart();
    relayed(&store, Duration::from_secs(90)).await;
    rt.shutdown().await.expect("shutdown");
    assert_kafka_holds(&broker, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_restored_from_kafka_byte_for_byte_and_the_node_resumes() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let open = || {
        let storage = SledStorage::open(&SledConfig::new(&data)).expect("sled");
        EventStore::open(storage, StoreConfig::default()).expect("store")
    };
    let store = open();
    run_orders(&store, &broker, 15).await;
    let log = log_of(&store);
    let digest = event_store::raw::digest(store.storage()).expect("digest").hex();
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await; // the store's threads let go of the files

    // The store is lost.
    std::fs::remove_dir_all(&data).expect("delete the store");
    let config = kafka(&broker);
    let (c, d) = (config.clone(), data.clone());
    let report = tokio::task::spawn_blocking(move || services::kafka::restore::restore(&c, &d, false))
        .await
        .expect("join")
        .expect("restore");
    assert_eq!(report.events, log.len() as u64);
    assert_eq!(report.digest, digest, "the restored log is the same, byte for byte");

    // A second restore refuses to overwrite it.
    let (c, d) = (config.clone(), data.clone());
    let err = tokio::task::spawn_blocking(move || services::kafka::restore::restore(&c, &d, false))
        .await
        .expect("join")
        .expect_err("refuses");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    let store = open();
    // Not even --force moves a store a node has open.
    let (c, d) = (config.clone(), data.clone());
    let err = tokio::task::spawn_blocking(move || services::kafka::restore::restore(&c, &d, true))
        .await
        .expect("join")
        .expect_err("refuses a store in use");
    assert!(err.to_string().contains("is a node running"), "{err}");
    assert_eq!(log_of(&store), log);
    assert!(store.verify().expect("verify").is_ok());
    let inv = invariants::check(&store).expect("invariants");
    assert!(inv.problems.is_empty() && inv.unfinished.is_empty(), "{inv:?}");
    // The node resumes: new orders complete and the relay continues without repeating.
    run_orders(&store, &broker, 3).await;
    assert_kafka_holds(&broker, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_from_a_position_sends_those_events_again_for_a_downstream_consumer() {
    let broker = Broker::start();
    let store = EventStore::open(event_store::MemoryStorage::new(), StoreConfig::default()).expect("store");
    run_orders(&store, &broker, 4).await;
    let head = store.head();
    let from = head / 2;
    let sent = services::kafka::relay::republish(&store, &kafka(&broker), from).await.expect("republish");
    assert_eq!(sent, head - from + 1);
    // The relay's checkpoint is untouched.
    assert_eq!(store.checkpoint(CHECKPOINT).expect("checkpoint"), Some(head));
    let bootstrap = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || read_everything(&bootstrap)).await.expect("read");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in &records {
        *seen.entry(r.headers["ce_position"].parse().expect("position")).or_default() += 1;
    }
    for p in 1..=head {
        assert_eq!(seen.get(&p).copied(), Some(if p >= from { 2 } else { 1 }), "position {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_promptly_while_the_broker_is_down() {
    let mut broker = Broker::start();
    let store = EventStore::open(event_store::MemoryStorage::new(), StoreConfig::default()).expect("store");
    // Deliveries would be retried for a minute.
    let config = KafkaConfig { delivery_timeout: Duration::from_secs(60), ..kafka(&broker) };
    let rt = start(store.clone(), config);
    let first = orders(&rt, 2).await;
    sagas_end(&rt, &first).await;
    relayed(&store, Duration::from_secs(60)).await;
    broker.kill9();
    let during = orders(&rt, 2).await;
    sagas_end(&rt, &during).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    rt.shutdown().await.expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(15), "stopping took {:?}", started.elapsed());
    // The next start delivers what was left, once.
    broker.restart();
    let rt = start(store.clone(), kafka(&broker));
    relayed(&store, Duration::from_secs(60)).await;
    rt.shutdown().await.expect("shutdown");
    assert_kafka_holds(&broker, &store).await;
}
