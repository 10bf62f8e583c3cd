//! Read models: live updates, restarts without double application, rebuild, replay from a
//! timestamp and as-of proven equal to a fresh fold at the same point, lag, bad events.

use std::sync::Arc;
use std::time::Duration;

use aggregates::codec::DomainEvent;
use aggregates::inventory::{InventoryEvent, StockAdded, StockReserved};
use aggregates::order::{
    CancelReason, LineItem, OrderCancelled, OrderConfirmed, OrderEvent, OrderPlaced, OrderStatus,
};
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use event_store::{EventStore, ExpectedVersion, MemoryStorage, NewEvent, Storage, StoreConfig, StreamId};
use projections::models::{CustomerOrder, OrderSummaries, OrderSummary, StockLevel, StockLevels};
use projections::{
    as_of, catch_up_with, rebuild, replay_from, run, run_with, Fold, Projection, ReadModels, RunOptions,
};
use tokio::sync::watch;
use uuid::Uuid;

type Store = EventStore<MemoryStorage>;

fn new_store() -> Store {
    EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store")
}

async fn emit<E: DomainEvent>(store: &Store, stream: &str, e: &E) {
    let ev = NewEvent::json(e.event_type(), e.to_payload()).with_schema_version(e.schema_version());
    store
        .append_to(&StreamId::new(stream).expect("id"), ExpectedVersion::Any, vec![ev])
        .await
        .expect("append");
}

async fn place(store: &Store, customer: &str, qty: u32) -> OrderId {
    let id = OrderId(Uuid::now_v7());
    let placed = OrderEvent::OrderPlaced(OrderPlaced {
        order_id: id,
        customer_id: CustomerId(customer.into()),
        items: vec![LineItem { sku: Sku::from("A"), quantity: qty, unit_price: Money(250) }],
        total: Money(250 * u64::from(qty)),
        currency: Currency::from("EUR"),
        shipping_address: None,
    });
    emit(store, &format!("order-{id}"), &placed).await;
    id
}

async fn stock(store: &Store, sku: &str, e: InventoryEvent) {
    emit(store, &format!("inventory-{sku}"), &e).await;
}

async fn history(store: &Store, n: usize) -> Vec<OrderId> {
    let mut ids = Vec::new();
    stock(store, "A", InventoryEvent::StockAdded(StockAdded { sku: Sku::from("A"), quantity: 100 })).await;
    for i in 0..n {
        let customer = if i % 2 == 0 { "alice" } else { "bob" };
        let id = place(store, customer, 1 + (i as u32 % 3)).await;
        stock(
            store,
            "A",
            InventoryEvent::StockReserved(StockReserved { sku: Sku::from("A"), order_id: id, quantity: 1 }),
        )
        .await;
        if i % 3 == 0 {
            emit(
                store,
                &format!("order-{id}"),
                &OrderEvent::OrderConfirmed(OrderConfirmed {
                    order_id: id,
                    tracking_number: format!("T{i}"),
                }),
            )
            .await;
        } else if i % 3 == 1 {
            emit(
                store,
                &format!("order-{id}"),
                &OrderEvent::OrderCancelled(OrderCancelled {
                    order_id: id,
                    reason: CancelReason::OutOfStock,
                }),
            )
            .await;
        }
        ids.push(id);
    }
    ids
}

async fn wait_caught_up(models: &ReadModels<MemoryStorage>, name: &str) {
    for _ in 0..500 {
        if models.lag(name).expect("lag") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} did not catch up");
}

fn start<P: Projection>(
    models: &ReadModels<MemoryStorage>,
    p: P,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<projections::Result<()>>) {
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(run(models.clone(), Arc::new(p), rx));
    (tx, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_order_summaries_and_customer_history() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    let ids = history(&store, 9).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let first: OrderSummary =
        models.get(OrderSummaries::NAME, &OrderSummaries::order_key(ids[0])).expect("get").expect("present");
    assert_eq!(first.status, OrderStatus::Confirmed);
    assert_eq!(first.tracking_number.as_deref(), Some("T0"));
    assert_eq!(
        first.timeline.iter().map(|t| t.event.as_str()).collect::<Vec<_>>(),
        ["OrderPlaced", "OrderConfirmed"]
    );
    let second: OrderSummary =
        models.get(OrderSummaries::NAME, &OrderSummaries::order_key(ids[1])).expect("get").expect("present");
    assert_eq!(
        (second.status, second.cancel_reason),
        (OrderStatus::Cancelled, Some(CancelReason::OutOfStock))
    );
    // Alice placed orders 0, 2, 4, 6, 8: in time order, paginated by cursor.
    let prefix = OrderSummaries::customer_prefix("alice");
    let page1: Vec<(String, CustomerOrder)> =
        models.scan(OrderSummaries::NAME, &prefix, None, 3).expect("scan");
    let page2: Vec<(String, CustomerOrder)> =
        models.scan(OrderSummaries::NAME, &prefix, Some(&page1[2].0), 3).expect("scan");
    let alice: Vec<OrderId> = page1.iter().chain(page2.iter()).map(|(_, o)| o.order_id).collect();
    assert_eq!(alice, vec![ids[0], ids[2], ids[4], ids[6], ids[8]]);
    assert_eq!(page2.len(), 2);
    assert_eq!(page1[0].1.status, OrderStatus::Confirmed);
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_nothing_twice_and_skips_nothing() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, StockLevels);
    history(&store, 6).await;
    wait_caught_up(&models, StockLevels::NAME).await;
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
    // More events while it is stopped, then a restart from the checkpoint.
    stock(&store, "A", InventoryEvent::StockAdded(StockAdded { sku: Sku::from("A"), quantity: 5 })).await;
    let (stop, task) = start(&models, StockLevels);
    wait_caught_up(&models, StockLevels::NAME).await;
    let level: StockLevel =
        models.get(StockLevels::NAME, &StockLevels::key("A")).expect("get").expect("present");
    assert_eq!(level, StockLevel { sku: "A".into(), available: 99, reserved: 6, shipped: 0, added: 105 });
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_and_replay_from_a_timestamp_equal_a_fresh_fold() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    history(&store, 20).await;
    let t = store.read_event(store.head()).expect("read").expect("present").recorded_at();
    tokio::time::sleep(Duration::from_millis(5)).await;
    history(&store, 10).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let gen = models.generation(OrderSummaries::NAME).expect("gen");
    let live = models.dump(OrderSummaries::NAME, gen).expect("dump");
    assert!(!live.is_empty());
    // Full rebuild into a new generation; queries read the old one until the switch.
    let rebuilt = rebuild(&models, Arc::new(OrderSummaries)).await.expect("rebuild");
    assert_eq!(rebuilt.from_backup, None);
    let rebuilt_gen = rebuilt.generation;
    assert_eq!(rebuilt_gen, gen + 1);
    assert_eq!(models.generation(OrderSummaries::NAME).expect("gen"), rebuilt_gen);
    assert_eq!(models.dump(OrderSummaries::NAME, rebuilt_gen).expect("dump"), live);
    assert!(
        models.dump(OrderSummaries::NAME, gen).expect("dump").is_empty(),
        "the old generation is dropped"
    );
    // Replay from T: state at T, then everything after T.
    let replayed = replay_from(&models, Arc::new(OrderSummaries), t).await.expect("replay");
    assert_eq!(models.dump(OrderSummaries::NAME, replayed.generation).expect("dump"), live);
    // The live runner follows the new generation.
    let id = place(&store, "carol", 1).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    assert!(models
        .get::<OrderSummary>(OrderSummaries::NAME, &OrderSummaries::order_key(id))
        .expect("get")
        .is_some());
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_read_by_worker_threads_equals_the_live_model() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    history(&store, 60).await;
    // Other categories in between, which the workers skip.
    emit(&store, "payment-x", &InventoryEvent::StockAdded(StockAdded { sku: Sku::from("B"), quantity: 1 }))
        .await;
    history(&store, 20).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let live = models
        .dump(OrderSummaries::NAME, models.generation(OrderSummaries::NAME).expect("gen"))
        .expect("dump");
    let head = store.head();
    for (i, chunk) in [1usize, 7, 100, 100_000].into_iter().enumerate() {
        let scratch = format!("parallel-{i}");
        let cp = catch_up_with(&models, &OrderSummaries, &scratch, 0, head, Fold { chunk, parallel_from: 0 })
            .expect("fold");
        assert_eq!(cp, head);
        assert_eq!(models.dump(&scratch, 0).expect("dump"), live, "chunks of {chunk}");
    }
    // Up to a point inside the log, then on to the head: the same as one fold.
    catch_up_with(
        &models,
        &OrderSummaries,
        "parallel-split",
        0,
        head / 2,
        Fold { chunk: 5, parallel_from: 0 },
    )
    .expect("first half");
    catch_up_with(&models, &OrderSummaries, "parallel-split", 0, head, Fold { chunk: 5, parallel_from: 0 })
        .expect("second half");
    assert_eq!(models.dump("parallel-split", 0).expect("dump"), live);
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_timestamp_starts_from_the_newest_backup_before_it() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    history(&store, 10).await;
    let before_any_backup = store.read_event(store.head()).expect("read").expect("present").recorded_at();
    tokio::time::sleep(Duration::from_millis(5)).await;
    history(&store, 10).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let first = models.backup(OrderSummaries::NAME).expect("backup");
    assert_eq!(first, store.head());
    history(&store, 10).await;
    let t = store.read_event(store.head()).expect("read").expect("present").recorded_at();
    tokio::time::sleep(Duration::from_millis(5)).await;
    history(&store, 10).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let second = models.backup(OrderSummaries::NAME).expect("backup");
    assert_eq!(models.backups(OrderSummaries::NAME).expect("list"), vec![first, second]);
    history(&store, 5).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let live = models
        .dump(OrderSummaries::NAME, models.generation(OrderSummaries::NAME).expect("gen"))
        .expect("dump");

    // T lies between the two backups: the replay starts from the first one.
    let replayed = replay_from(&models, Arc::new(OrderSummaries), t).await.expect("replay");
    assert_eq!(replayed.from_backup, Some(first));
    assert_eq!(models.dump(OrderSummaries::NAME, replayed.generation).expect("dump"), live);
    // Before every backup: from the start of the log.
    let replayed = replay_from(&models, Arc::new(OrderSummaries), before_any_backup).await.expect("replay");
    assert_eq!(replayed.from_backup, None);
    assert_eq!(models.dump(OrderSummaries::NAME, replayed.generation).expect("dump"), live);
    // The newest backups survive pruning.
    models.prune_backups(OrderSummaries::NAME, 1).expect("prune");
    assert_eq!(models.backups(OrderSummaries::NAME).expect("list"), vec![second]);
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_runner_takes_backups_and_a_rebuild_under_load_loses_nothing() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = RunOptions { backup_every: 40, keep_backups: 2 };
    let task = tokio::spawn(run_with(models.clone(), Arc::new(OrderSummaries), stop_rx, options));
    // Rebuild repeatedly while events keep arriving and the runner keeps committing.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { history(&store, 60).await })
    };
    let mut rebuilds = 0;
    while !writer.is_finished() {
        rebuild(&models, Arc::new(OrderSummaries)).await.expect("rebuild");
        rebuilds += 1;
    }
    writer.await.expect("writer");
    assert!(rebuilds > 0);
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("run");
    let backups = models.backups(OrderSummaries::NAME).expect("list");
    assert!(!backups.is_empty() && backups.len() <= 2, "backups kept: {backups:?}");
    let gen = models.generation(OrderSummaries::NAME).expect("gen");
    assert!(projections::verify(&models, &OrderSummaries).expect("verify").is_empty());
    // Only the current generation is left: no commit landed in a dropped one.
    for old in 0..gen {
        assert!(
            models.dump(OrderSummaries::NAME, old).expect("dump").is_empty(),
            "generation {old} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reproduces_the_model_as_it_was() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, StockLevels);
    history(&store, 8).await;
    wait_caught_up(&models, StockLevels::NAME).await;
    let t = store.read_event(store.head()).expect("read").expect("present").recorded_at();
    let then =
        models.dump(StockLevels::NAME, models.generation(StockLevels::NAME).expect("gen")).expect("dump");
    tokio::time::sleep(Duration::from_millis(5)).await;
    history(&store, 8).await;
    wait_caught_up(&models, StockLevels::NAME).await;
    let now =
        models.dump(StockLevels::NAME, models.generation(StockLevels::NAME).expect("gen")).expect("dump");
    assert_ne!(now, then);
    let name = as_of(&models, Arc::new(StockLevels), t).await.expect("as of");
    assert_eq!(models.dump(&name, 0).expect("dump"), then, "as-of T equals the live model at T");
    // The live model is untouched.
    assert_eq!(
        models.dump(StockLevels::NAME, models.generation(StockLevels::NAME).expect("gen")).expect("dump"),
        now
    );
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_models_beyond_the_newest_few_are_deleted() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let mut names = Vec::new();
    for _ in 0..(projections::KEEP_AS_OF + 2) {
        history(&store, 2).await;
        let t = store.read_event(store.head()).expect("read").expect("present").recorded_at();
        let name = as_of(&models, Arc::new(StockLevels), t).await.expect("as of");
        assert!(!models.dump(&name, 0).expect("dump").is_empty(), "the model just built is kept");
        names.push(name);
    }
    let kept: Vec<String> =
        models.as_of_models("stock-levels@").expect("list").into_iter().map(|(n, _)| n).collect();
    assert_eq!(kept, names[2..].to_vec(), "the newest are kept, oldest first");
    for old in &names[..2] {
        assert!(models.dump(old, 0).expect("dump").is_empty(), "{old} left behind");
        assert_eq!(models.checkpoint(old, 0).expect("checkpoint"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_and_a_bad_event_stops_the_projection_with_its_position() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    history(&store, 3).await;
    assert_eq!(models.lag(StockLevels::NAME).expect("lag"), store.head());
    // A malformed inventory event: the projection reports it, it does not skip it silently.
    let bad = NewEvent::json("StockAdded", b"{\"sku\":".to_vec());
    let r = store
        .append_to(&StreamId::new("inventory-A").expect("id"), ExpectedVersion::Any, vec![bad])
        .await
        .expect("append");
    let (_stop, task) = start(&models, StockLevels);
    let err = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops")
        .expect("join")
        .expect_err("an error");
    match err {
        projections::ProjectionError::Event { position, .. } => assert_eq!(position, r.first_position),
        other => panic!("unexpected error {other}"),
    }
    // Everything before the bad event was applied and checkpointed.
    assert_eq!(models.lag(StockLevels::NAME).expect("lag"), 1);
}

#[test]
fn large_documents_are_stored_compressed_and_small_ones_as_json() {
    use projections::store::{decode_doc, encode_doc};
    let summary = serde_json::json!({
        "steps": (0..20).map(|i| serde_json::json!({
            "event": "StepRequested", "position": 1000 + i, "at_ns": 1_764_700_000_000_000_000u64 + i,
            "detail": format!("ReserveStock SKU-{i:04} attempt 1"),
        })).collect::<Vec<_>>(),
    });
    let json = serde_json::to_vec(&summary).expect("json");
    let stored = encode_doc(json.clone());
    assert_eq!(stored[0], 0x01, "a 2 KB timeline is compressed");
    assert!(stored.len() * 2 < json.len(), "{} bytes stored for {} of JSON", stored.len(), json.len());
    assert_eq!(decode_doc(&stored).expect("decode").as_ref(), json.as_slice());
    let small = br#"{"available":3}"#.to_vec();
    assert_eq!(encode_doc(small.clone()), small, "a small document stays JSON");
    assert_eq!(decode_doc(&small).expect("decode").as_ref(), small.as_slice());
}

#[test]
fn a_damaged_compressed_document_is_an_error_not_a_panic_or_a_huge_allocation() {
    use projections::store::{decode_doc, encode_doc};
    let json = serde_json::to_vec(&vec!["the same words again"; 50]).expect("json");
    let stored = encode_doc(json);
    assert_eq!(stored[0], 0x01);
    // A length of 2 GiB in the header, a truncated body, a header cut short, a wrong length.
    let mut huge = stored.clone();
    huge[1..5].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    assert!(decode_doc(&huge).expect_err("huge").contains("claims"));
    assert!(decode_doc(&stored[..stored.len() / 2]).is_err(), "truncated");
    assert!(decode_doc(&stored[..3]).is_err(), "header cut short");
    let mut longer = stored.clone();
    let len = u32::from_le_bytes(longer[1..5].try_into().expect("4 bytes"));
    longer[1..5].copy_from_slice(&(len + 10).to_le_bytes());
    assert!(decode_doc(&longer).is_err(), "length that does not match the body");
    // Read through the model, the damage is a Corrupt error naming the document.
    let store = new_store();
    let mut batch = event_store::storage::WriteBatch::default();
    batch.put(doc_key("docs", 0, "bad"), huge);
    store.storage().apply(batch).expect("write");
    let models = ReadModels::new(store);
    let err = models.get::<Vec<String>>("docs", "bad").expect_err("damaged");
    assert!(err.to_string().contains("docs/bad") && err.to_string().contains("claims"), "{err}");
}

#[test]
fn a_document_committed_by_a_projection_is_stored_compressed_and_reads_back() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let doc: Vec<String> = (0..40).map(|i| format!("StepSucceeded ReserveStock SKU-{i:04}")).collect();
    let mut tx = models.begin("docs", 0);
    tx.put("big", doc.clone()).expect("put");
    tx.put("small", vec!["x".to_owned()]).expect("put");
    models.commit(tx, 1).expect("commit");
    let raw = |key: &str| store.storage().get(&doc_key("docs", 0, key)).expect("read").expect("stored");
    let (big, small) = (raw("big"), raw("small"));
    assert_eq!(big.as_ref()[0], 0x01, "the large document is stored compressed");
    assert!(big.as_ref().len() < serde_json::to_vec(&doc).expect("json").len() / 2);
    assert_eq!(small.as_ref(), br#"["x"]"#, "the small one as its JSON");
    assert_eq!(models.get::<Vec<String>>("docs", "big").expect("get"), Some(doc.clone()));
    assert_eq!(models.dump("docs", 0).expect("dump").len(), 2);
}

/// The stored key of a document, as `projections::store` lays it out (a test of the format).
fn doc_key(name: &str, gen: u32, key: &str) -> Vec<u8> {
    let mut k = vec![event_store::APP_KEY_PREFIX, b'P', b'd'];
    k.extend_from_slice(&(name.len() as u16).to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k.extend_from_slice(&gen.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_as_plain_json_by_an_older_build_still_read() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let old = StockLevel { sku: "A".into(), available: 7, reserved: 1, shipped: 2, added: 10 };
    let mut padded = serde_json::to_vec(&old).expect("json");
    padded.extend(std::iter::repeat_n(b' ', 200)); // past the size that would be compressed
    let mut batch = event_store::storage::WriteBatch::default();
    batch.put(doc_key(StockLevels::NAME, 0, &StockLevels::key("A")), padded);
    store.storage().apply(batch).expect("write");
    assert_eq!(
        models.get::<StockLevel>(StockLevels::NAME, &StockLevels::key("A")).expect("get"),
        Some(old.clone())
    );
    let dump = models.dump(StockLevels::NAME, 0).expect("dump");
    assert_eq!(dump.len(), 1);
    // Changed and written back, it reads the same.
    let mut tx = models.begin(StockLevels::NAME, 0);
    let mut doc = tx.take::<StockLevel>(&StockLevels::key("A")).expect("take").expect("present");
    doc.available += 1;
    tx.put(&StockLevels::key("A"), doc.clone()).expect("put");
    models.commit(tx, 1).expect("commit");
    assert_eq!(models.get::<StockLevel>(StockLevels::NAME, &StockLevels::key("A")).expect("get"), Some(doc));
}

#[test]
fn a_change_takes_documents_out_and_puts_them_back_without_copies() {
    let models = ReadModels::new(new_store());
    let mut tx = models.begin("docs", 1);
    assert_eq!(tx.take::<u64>("a").expect("take"), None, "nothing stored yet");
    tx.put("a", 1u64).expect("put");
    let mut a = tx.take::<u64>("a").expect("take").expect("present in the change");
    assert_eq!(tx.take::<u64>("a").expect("take again"), None, "taken out of the change");
    a += 1;
    tx.put("a", a).expect("put back");
    // Reading it as another type is an error, and the document stays in the change.
    assert!(tx.take::<String>("a").is_err());
    assert_eq!(tx.get::<u64>("a").expect("get"), Some(2));
    tx.delete("b");
    assert_eq!(tx.take::<u64>("b").expect("deleted"), None);
    models.commit(tx, 0).expect("commit");
    let mut tx = models.begin("docs", 1);
    assert_eq!(tx.take::<u64>("a").expect("from the model"), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customers_history_never_holds_another_customers_orders() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    let bob = place(&store, "bob", 1).await;
    let bob_x = place(&store, "bob/x", 1).await;
    let percent = place(&store, "bob%2Fx", 1).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let history = |customer: &str| -> Vec<OrderId> {
        models
            .scan::<CustomerOrder>(
                OrderSummaries::NAME,
                &OrderSummaries::customer_prefix(customer),
                None,
                100,
            )
            .expect("scan")
            .into_iter()
            .map(|(_, o)| o.order_id)
            .collect()
    };
    assert_eq!(history("bob"), vec![bob]);
    assert_eq!(history("bob/x"), vec![bob_x]);
    assert_eq!(history("bob%2Fx"), vec![percent]);
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

/// OrderSummaries as it was before customer ids were escaped in its keys (version 1).
struct OldOrderSummaries;

impl Projection for OldOrderSummaries {
    fn name(&self) -> &str {
        OrderSummaries::NAME
    }
    fn categories(&self) -> &[&str] {
        OrderSummaries.categories()
    }
    fn apply<S: event_store::Storage>(
        &self,
        tx: &mut projections::Tx<'_, S>,
        e: &event_store::RecordedEvent,
    ) -> projections::Result<()> {
        // The old layout put the customer id into keys as it was: write such a key too.
        OrderSummaries.apply(tx, e)?;
        if let Ok(OrderEvent::OrderPlaced(p)) =
            OrderEvent::decode(&e.event_type, e.schema_version, &e.payload)
        {
            let key = format!("customer/{}/{:020}/{}", p.customer_id.0, e.recorded_at_ns, p.order_id);
            let doc = CustomerOrder {
                order_id: p.order_id,
                status: OrderStatus::Pending,
                total: p.total,
                placed_at_ns: 0,
            };
            tx.put(&key, doc)?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_built_by_an_older_projection_is_rebuilt_before_it_serves() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let bob = place(&store, "bob", 1).await;
    let bob_x = place(&store, "bob/x", 1).await;
    // Built by the old code (no version recorded: version 1).
    catch_up_with(&models, &OldOrderSummaries, OrderSummaries::NAME, 0, store.head(), Fold::LIVE)
        .expect("fold");
    let scan = |models: &ReadModels<MemoryStorage>| -> Vec<OrderId> {
        models
            .scan::<CustomerOrder>(OrderSummaries::NAME, "customer/bob/", None, 100)
            .expect("scan")
            .into_iter()
            .map(|(_, o)| o.order_id)
            .collect()
    };
    assert!(scan(&models).contains(&bob_x), "the old layout mixes bob/x into bob's keys");
    // The current projection finds the model built by version 1 and rebuilds it.
    let (stop, task) = start(&models, OrderSummaries);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while models
        .built_by(OrderSummaries::NAME, models.generation(OrderSummaries::NAME).expect("gen"))
        .expect("v")
        != Some(2)
    {
        assert!(std::time::Instant::now() < deadline, "the read model was not rebuilt");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(scan(&models), vec![bob]);
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_skips_backups_that_another_version_of_the_projection_made() {
    let store = new_store();
    let models = ReadModels::new(store.clone());
    let (stop, task) = start(&models, OrderSummaries);
    history(&store, 10).await;
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let gen = models.generation(OrderSummaries::NAME).expect("gen");
    // A backup taken while an older version had built the model: its documents have that
    // version's shape, so a replay must not start from it.
    models.set_built_by(OrderSummaries::NAME, gen, OrderSummaries.version() - 1).expect("set");
    let old = models.backup(OrderSummaries::NAME).expect("backup");
    models.set_built_by(OrderSummaries::NAME, gen, OrderSummaries.version()).expect("set");
    assert_eq!(
        models.backup_versions(OrderSummaries::NAME).expect("list"),
        vec![(old, OrderSummaries.version() - 1)]
    );
    history(&store, 10).await;
    let t = store.read_event(store.head()).expect("read").expect("present").recorded_at();
    wait_caught_up(&models, OrderSummaries::NAME).await;
    let live = models
        .dump(OrderSummaries::NAME, models.generation(OrderSummaries::NAME).expect("gen"))
        .expect("dump");
    let replayed = replay_from(&models, Arc::new(OrderSummaries), t).await.expect("replay");
    assert_eq!(replayed.from_backup, None, "the other version's backup was used");
    assert_eq!(models.dump(OrderSummaries::NAME, replayed.generation).expect("dump"), live);
    // One of this version is used.
    let current = models.backup(OrderSummaries::NAME).expect("backup");
    let replayed = replay_from(&models, Arc::new(OrderSummaries), t).await.expect("replay");
    assert_eq!(replayed.from_backup, Some(current));
    let _ = stop.send(true);
    task.await.expect("join").expect("run");
}
