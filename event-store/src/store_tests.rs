//! Unit tests of the store contract, run on both engines.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;
use crate::storage::{MemoryStorage, SledConfig, SledStorage};
use crate::{nanos_to_time, NewEvent};

fn ev(t: &str) -> NewEvent {
    NewEvent::json(t, format!("{{\"t\":\"{t}\"}}").into_bytes())
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

/// Damages the record at `position` (one byte of its body), as a bad disk would.
fn flip_a_byte<S: Storage>(store: &EventStore<S>, position: u64) {
    let (frame, last) = frame::frame_holding(store.storage(), position).expect("read").expect("present");
    let mut frame = frame.as_ref().to_vec();
    let record = frame::record_range(&frame, last, position);
    frame[record.end - 2] ^= 0xff;
    let mut b = WriteBatch::default();
    b.put(keys::log(last).to_vec(), frame);
    store.storage().apply(b).expect("corrupt it");
}

/// Runs a test body against a memory store and a sled store.
macro_rules! both_engines {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let $store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("open");
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                let dir = tempfile::tempdir().expect("tempdir");
                let $store = EventStore::open(
                    SledStorage::open(&SledConfig::new(dir.path())).expect("sled"),
                    StoreConfig::default(),
                )
                .expect("open");
                $body
            }
        }
    };
}

both_engines!(appends_assign_gapless_positions_and_versions, |store| {
    let a = sid("order-a");
    let b = sid("order-b");
    let r1 = store.append_to(&a, ExpectedVersion::NoStream, vec![ev("A1"), ev("A2")]).await.expect("a");
    assert_eq!((r1.first_position, r1.last_position), (1, 2));
    assert_eq!((r1.streams[0].first_version, r1.streams[0].last_version), (1, 2));
    let r2 = store.append_to(&b, ExpectedVersion::Any, vec![ev("B1")]).await.expect("b");
    assert_eq!((r2.first_position, r2.version()), (3, 1));
    let r3 = store.append_to(&a, ExpectedVersion::Exact(2), vec![ev("A3")]).await.expect("a3");
    assert_eq!((r3.first_position, r3.version()), (4, 3));
    assert_eq!(store.head(), 4);
    let all: Vec<_> = store.read_all(1).collect::<Result<_>>().expect("read");
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), vec!["A1", "A2", "B1", "A3"]);
    assert_eq!(store.stream_version(&a).expect("v"), 3);
    assert_eq!(store.stream_version(&sid("order-none")).expect("v"), 0);
});

both_engines!(expected_version_is_enforced, |store| {
    let s = sid("order-x");
    let err = store.append_to(&s, ExpectedVersion::Exists, vec![ev("E")]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 0, expected: ExpectedVersion::Exists, .. }), "{err}");
    let err = store.append_to(&s, ExpectedVersion::Exact(3), vec![ev("E")]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 0, .. }));
    store.append_to(&s, ExpectedVersion::Exact(0), vec![ev("E1")]).await.expect("exact 0 = no stream");
    let err = store.append_to(&s, ExpectedVersion::NoStream, vec![ev("E")]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 1, expected: ExpectedVersion::NoStream, .. }), "{err}");
    assert!(err.is_client_error());
    store.append_to(&s, ExpectedVersion::Exists, vec![ev("E2")]).await.expect("exists");
    let err = store.append_to(&s, ExpectedVersion::Exact(1), vec![ev("E")]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 2, expected: ExpectedVersion::Exact(1), .. }));
    store.append_to(&s, ExpectedVersion::Any, vec![ev("E3")]).await.expect("any");
    assert_eq!(store.stream_version(&s).expect("v"), 3);
});

both_engines!(multi_stream_append_is_all_or_nothing, |store| {
    let saga = sid("saga-1");
    let cmd = sid("inventory-1");
    store.append_to(&cmd, ExpectedVersion::NoStream, vec![ev("C0")]).await.expect("seed");
    // The second stream's check fails, so the first stream's events must not appear either.
    let req = AppendRequest::single(saga.clone(), ExpectedVersion::NoStream, vec![ev("S1")]).and(
        cmd.clone(),
        ExpectedVersion::NoStream,
        vec![ev("C1")],
    );
    let err = store.append(req).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { ref stream, actual: 1, .. } if stream == "inventory-1"), "{err}");
    assert_eq!(store.stream_version(&saga).expect("v"), 0);
    assert_eq!(store.head(), 1);
    let req = AppendRequest::single(saga.clone(), ExpectedVersion::NoStream, vec![ev("S1"), ev("S2")])
        .and(cmd.clone(), ExpectedVersion::Exact(1), vec![ev("C1")])
        .with_checkpoint("saga-manager", 1);
    let r = store.append(req).await.expect("atomic append");
    assert_eq!((r.first_position, r.last_position), (2, 4));
    assert_eq!(r.streams[0].last_version, 2);
    assert_eq!((r.streams[1].first_version, r.streams[1].last_version), (2, 2));
    assert_eq!(store.checkpoint("saga-manager").expect("cp"), Some(1));
});

both_engines!(idempotent_retry_returns_the_original_result, |store| {
    let s = sid("payment-1");
    let e1 = ev("Authorized");
    let e2 = ev("Captured");
    let first =
        store.append_to(&s, ExpectedVersion::NoStream, vec![e1.clone(), e2.clone()]).await.expect("first");
    store.append_to(&s, ExpectedVersion::Exact(2), vec![ev("Refunded")]).await.expect("more");
    // Same ids, same content, stale expected version: the original result, nothing written.
    let retry =
        store.append_to(&s, ExpectedVersion::NoStream, vec![e1.clone(), e2.clone()]).await.expect("retry");
    assert_eq!(retry, first);
    assert_eq!(store.head(), 3);
    // Same id, other content: refused.
    let mut changed = e1.clone();
    changed.payload = b"{\"other\":true}".to_vec();
    let err = store.append_to(&s, ExpectedVersion::Any, vec![changed]).await.unwrap_err();
    assert!(matches!(err, Error::EventIdReused { event_id, .. } if event_id == e1.event_id), "{err}");
    // Same id on another stream: refused.
    let err = store.append_to(&sid("payment-2"), ExpectedVersion::Any, vec![e1.clone()]).await.unwrap_err();
    assert!(matches!(err, Error::EventIdReused { .. }));
    // Part of an earlier append plus a new event: refused.
    let err = store.append_to(&s, ExpectedVersion::Any, vec![e1.clone(), ev("New")]).await.unwrap_err();
    assert!(matches!(err, Error::EventIdReused { .. }), "{err}");
    // Duplicate id within one request.
    let err = store.append_to(&s, ExpectedVersion::Any, vec![e2.clone(), e2.clone()]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidAppend(_)));
    assert_eq!(store.head(), 3);
});

both_engines!(concurrent_duplicates_in_one_group_write_once, |store| {
    let s = sid("order-dup");
    let e = ev("Placed");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        let s = s.clone();
        let e = e.clone();
        tasks.push(tokio::spawn(async move { store.append_to(&s, ExpectedVersion::Any, vec![e]).await }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("append");
        assert_eq!((r.first_position, r.version()), (1, 1));
    }
    assert_eq!(store.head(), 1);
    assert!(store.verify().expect("verify").is_ok());
});

both_engines!(many_appenders_share_syncs, |store| {
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = sid(&format!("order-{w}"));
            for i in 0..20u64 {
                store.append_to(&s, ExpectedVersion::Exact(i), vec![ev("E")]).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(store.head(), 64 * 20);
    let report = store.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.streams), (1280, 64));
    assert!(store.sync_count() < 1280, "group commit should share syncs: {} syncs", store.sync_count());
});

both_engines!(reads_by_stream_position_category_and_time, |store| {
    let o1 = sid("order-1");
    let o2 = sid("order-2");
    let p1 = sid("payment-1");
    for i in 0..10u64 {
        store.append_to(&o1, ExpectedVersion::Exact(i), vec![ev(&format!("O{}", i + 1))]).await.expect("o1");
        if i % 2 == 0 {
            store.append_to(&o2, ExpectedVersion::Any, vec![ev("X")]).await.expect("o2");
        }
        store.append_to(&p1, ExpectedVersion::Any, vec![ev("P")]).await.expect("p1");
    }
    let fwd: Vec<_> = store.read_stream(&o1, 4, Direction::Forward).map(|e| e.expect("e").version).collect();
    assert_eq!(fwd, (4..=10).collect::<Vec<_>>());
    let back: Vec<_> =
        store.read_stream(&o1, 3, Direction::Backward).map(|e| e.expect("e").version).collect();
    assert_eq!(back, vec![3, 2, 1]);
    let last: Vec<_> = store
        .read_stream(&o1, u64::MAX, Direction::Backward)
        .take(2)
        .map(|e| e.expect("e").version)
        .collect();
    assert_eq!(last, vec![10, 9]);
    // "order-1" must not pick up a longer stream id sharing its prefix.
    let o10 = sid("order-10");
    store.append_to(&o10, ExpectedVersion::Any, vec![ev("Z")]).await.expect("o10");
    assert_eq!(store.read_stream(&o1, 1, Direction::Forward).count(), 10);
    let from: Vec<_> = store.read_all(20).map(|e| e.expect("e").position).collect();
    assert_eq!(from, (20..=store.head()).collect::<Vec<_>>());
    let orders: Vec<_> = store.read_category("order", 1).map(|e| e.expect("e")).collect();
    assert_eq!(orders.len(), 10 + 5 + 1);
    assert!(orders.iter().all(|e| e.category() == "order"));
    assert!(orders.windows(2).all(|w| w[0].position < w[1].position));
    let later: Vec<_> = store.read_category("payment", 15).map(|e| e.expect("e").position).collect();
    assert!(later.iter().all(|p| *p >= 15) && !later.is_empty());
    // Time: recorded-at never decreases; a seek lands on the first event at or after T.
    let all: Vec<_> = store.read_all(1).map(|e| e.expect("e")).collect();
    assert!(all.windows(2).all(|w| w[0].recorded_at_ns <= w[1].recorded_at_ns));
    let mid = &all[all.len() / 2];
    let first_at = all.iter().find(|e| e.recorded_at_ns >= mid.recorded_at_ns).expect("exists").position;
    assert_eq!(store.seek_time(mid.recorded_at()).expect("seek"), first_at);
    let from_t: Vec<_> =
        store.read_from_time(mid.recorded_at()).expect("t").map(|e| e.expect("e").position).collect();
    assert_eq!(from_t.first(), Some(&first_at));
    assert_eq!(store.seek_time(OffsetDateTime::UNIX_EPOCH).expect("seek"), 1);
    let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert_eq!(store.seek_time(future).expect("seek"), store.head() + 1);
    assert_eq!(store.read_event(3).expect("e").map(|e| e.position), Some(3));
    assert_eq!(store.read_event(store.head() + 1).expect("e"), None);
});

both_engines!(recorded_events_carry_the_envelope, |store| {
    let s = sid("shipping-9");
    let corr = Uuid::now_v7();
    let cause = Uuid::now_v7();
    let e = ev("ShipmentCreated").caused_by(corr, cause).with_schema_version(3).with_metadata("node", "n1");
    let before = time_to_nanos(OffsetDateTime::now_utc());
    store.append_to(&s, ExpectedVersion::Any, vec![e.clone()]).await.expect("append");
    let got = store.read_event(1).expect("read").expect("present");
    assert_eq!(got.event_id, e.event_id);
    assert_eq!((got.correlation_id, got.causation_id), (corr, cause));
    assert_eq!(got.schema_version, 3);
    assert_eq!(got.metadata.get("node").map(String::as_str), Some("n1"));
    assert_eq!(got.content_type, "application/json");
    assert_eq!(got.payload, e.payload);
    assert_eq!(got.category(), "shipping");
    assert_eq!(store.find_event(e.event_id).expect("find"), Some(got.clone()));
    assert_eq!(store.find_event(Uuid::now_v7()).expect("find"), None);
    assert!(got.recorded_at_ns >= before);
});

both_engines!(subscriptions_catch_up_then_follow_live, |store| {
    let s = sid("order-sub");
    for i in 0..700u64 {
        store.append_to(&s, ExpectedVersion::Exact(i), vec![ev("Old")]).await.expect("append");
    }
    store.append_to(&sid("payment-1"), ExpectedVersion::Any, vec![ev("Other")]).await.expect("other");
    let mut sub = store.subscribe_all(100);
    let mut cat = store.subscribe_category("order", 0);
    let writer = {
        let store = store.clone();
        let s = s.clone();
        tokio::spawn(async move {
            for i in 700..800u64 {
                store.append_to(&s, ExpectedVersion::Exact(i), vec![ev("New")]).await.expect("live");
            }
        })
    };
    let mut expected = 101;
    while expected <= 801 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("no stall")
            .expect("open")
            .expect("ok");
        assert_eq!(e.position, expected, "no gap and no duplicate");
        expected += 1;
    }
    writer.await.expect("join");
    let mut versions = Vec::new();
    while versions.len() < 800 {
        let e = tokio::time::timeout(Duration::from_secs(10), cat.next())
            .await
            .expect("no stall")
            .expect("open")
            .expect("ok");
        assert_eq!(e.category(), "order");
        versions.push(e.version);
    }
    assert_eq!(versions, (1..=800).collect::<Vec<_>>());
    assert!(sub.try_next().await.is_none());
    assert_eq!(sub.position(), 801);
});

both_engines!(checkpoints_and_snapshots, |store| {
    assert_eq!(store.checkpoint("projection-a").expect("cp"), None);
    store.save_checkpoint("projection-a", 42).await.expect("save");
    store.save_checkpoint("projection-b", 7).await.expect("save");
    store.save_checkpoint("projection-a", 43).await.expect("save");
    assert_eq!(store.checkpoint("projection-a").expect("cp"), Some(43));
    assert_eq!(
        store.checkpoints().expect("all"),
        vec![("projection-a".to_owned(), 43), ("projection-b".to_owned(), 7)]
    );
    let s = sid("inventory-sku1");
    assert_eq!(store.load_snapshot(&s).expect("snap"), None);
    let snap = Snapshot { version: 12, schema_version: 2, payload: b"state".to_vec() };
    store.save_snapshot(&s, &snap).expect("save");
    assert_eq!(store.load_snapshot(&s).expect("snap"), Some(snap));
    store.delete_snapshot(&s).expect("delete");
    assert_eq!(store.load_snapshot(&s).expect("snap"), None);
    // Snapshot keys must not collide with another stream's.
    store
        .save_snapshot(&sid("inventory-sku10"), &Snapshot { version: 1, schema_version: 1, payload: vec![] })
        .expect("s");
    assert_eq!(store.load_snapshot(&s).expect("snap"), None);
});

both_engines!(bad_input_gets_typed_errors, |store| {
    assert!(matches!(StreamId::new(""), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(StreamId::new("a b"), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(StreamId::new("-x"), Err(Error::InvalidStreamId { .. })));
    assert!(matches!(StreamId::new("x".repeat(257)), Err(Error::InvalidStreamId { .. })));
    let s = sid("order-big");
    let big = NewEvent::json("Big", vec![b'x'; MAX_EVENT_BYTES]);
    let err = store.append_to(&s, ExpectedVersion::Any, vec![big]).await.unwrap_err();
    assert!(matches!(err, Error::EventTooLarge { limit: MAX_EVENT_BYTES, .. }), "{err}");
    let err = store.append_to(&s, ExpectedVersion::Any, vec![]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidAppend(_)));
    let err = store.append(AppendRequest::default()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidAppend(_)));
    let err = store.append_to(&s, ExpectedVersion::Any, vec![ev("")]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidAppend(_)));
    let req = AppendRequest::single(s.clone(), ExpectedVersion::Any, vec![ev("A")]).and(
        s.clone(),
        ExpectedVersion::Any,
        vec![ev("B")],
    );
    assert!(matches!(store.append(req).await.unwrap_err(), Error::InvalidAppend(_)));
    // Just under the limit is fine.
    let ok = NewEvent::json("Big", vec![b'x'; MAX_EVENT_BYTES - 1024]);
    store.append_to(&s, ExpectedVersion::Any, vec![ok]).await.expect("under the limit");
    assert_eq!(store.head(), 1);
});

both_engines!(a_corrupt_record_is_reported_with_its_position, |store| {
    let s = sid("order-c");
    store.append_to(&s, ExpectedVersion::Any, vec![ev("A"), ev("B"), ev("C")]).await.expect("append");
    flip_a_byte(&store, 2);
    let results: Vec<_> = store.read_all(1).collect();
    assert!(results[0].is_ok() && results[2].is_ok());
    match &results[1] {
        Err(Error::Corrupt { location, .. }) => assert_eq!(location, "position 2"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let report = store.verify().expect("verify");
    assert!(report.problems.iter().any(|p| p.contains("position 2")), "{:?}", report.problems);
    // Garbage (not even a header) is an error too, never a panic.
    let mut b = WriteBatch::default();
    b.put(keys::log(3).to_vec(), vec![1, 2]);
    store.storage().apply(b).expect("truncate");
    assert!(matches!(store.read_event(3), Err(Error::Corrupt { .. })));
    assert!(matches!(store.seek_time(OffsetDateTime::now_utc()), Err(Error::Corrupt { .. })));
});

#[test]
fn a_sync_waits_for_the_expected_appends_but_not_past_the_bound() {
    let wait = Duration::from_millis(300);
    let syncer = Syncer {
        storage: Arc::new(MemoryStorage::new()),
        shared: Arc::new(Shared::new(0)),
        durability: Durability::Fsync,
        group_wait: wait,
    };
    // Nothing expected (or as many waiting as expected): no wait at all.
    let started = std::time::Instant::now();
    syncer.gather(0);
    assert!(started.elapsed() < wait / 2, "waited {:?} for nothing", started.elapsed());
    // One append expected, none comes: it waits the bound, and not much more.
    let started = std::time::Instant::now();
    syncer.gather(1);
    let took = started.elapsed();
    assert!(took >= wait, "gave up after {took:?}, before the bound");
    assert!(took < wait * 5, "the wait is bounded: {took:?}");
    // The writer stopping ends the wait at once.
    syncer.shared.lock().writer_done = true;
    let started = std::time::Instant::now();
    syncer.gather(10);
    assert!(started.elapsed() < wait / 2, "waited {:?} for a stopped writer", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_appender_does_not_wait_for_a_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wait = MAX_GROUP_COMMIT_WAIT;
    let cfg = StoreConfig { group_commit_wait: wait, ..StoreConfig::default() };
    let store =
        EventStore::open(SledStorage::open(&SledConfig::new(dir.path())).expect("sled"), cfg).expect("open");
    // Each sync finds the one append it expects: the appends take their syncs and the writer's
    // work, not a wait each (20 x 100 ms).
    let (started, synced) = (std::time::Instant::now(), store.sync_time());
    for i in 0..20u64 {
        store.append_to(&sid("order-lone"), ExpectedVersion::Exact(i), vec![ev("E")]).await.expect("append");
    }
    let waited = started.elapsed().saturating_sub(store.sync_time() - synced);
    assert!(waited < wait * 5, "a lone appender waited: {waited:?} beyond its syncs");
    assert_eq!(store.head(), 20);
}

/// A stream folded in place from `from`, each view turned into the event it borrows from.
fn folded<S: Storage>(store: &EventStore<S>, stream: &str, from: u64) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let last = store
        .fold_stream(&sid(stream), from, |v| {
            out.push(v.to_recorded());
            Ok::<_, Error>(())
        })
        .expect("fold");
    assert_eq!(last, out.last().map(|e| e.version));
    out
}

/// The stream-index entries of a stream.
fn runs<S: Storage>(store: &EventStore<S>, stream: &str) -> Vec<Run> {
    let prefix = keys::stream_prefix(stream);
    store
        .storage()
        .range(&prefix, &keys::prefix_end(&prefix), false)
        .map(|item| {
            let (k, v) = item.expect("read");
            Run::from_entry(k.as_ref(), v.as_ref()).expect("entry")
        })
        .collect()
}

both_engines!(short_runs_are_read_from_their_index_entry_and_long_ones_from_the_log, |store| {
    // Two streams written one event at a time, interleaved; a long append; a short one of three.
    for i in 0..20u64 {
        for s in ["order-x", "order-y"] {
            let e = ev(&format!("{s}-{i}"));
            store.append_to(&sid(s), ExpectedVersion::Exact(i), vec![e]).await.expect("append");
        }
    }
    let long: Vec<_> =
        (0..12).map(|i| NewEvent::json("Big", format!("\"{}\"", "7".repeat(100 + i)).into_bytes())).collect();
    store.append_to(&sid("order-z"), ExpectedVersion::NoStream, long).await.expect("long");
    let three = vec![ev("x-a"), ev("x-b"), ev("x-c")];
    store.append_to(&sid("order-x"), ExpectedVersion::Exact(20), three).await.expect("three");
    let x = runs(&store, "order-x");
    assert_eq!(x.len(), 21);
    assert!(x.iter().all(|r| r.inline), "every short run keeps its records: {x:?}");
    assert_eq!(x[20].count, 3);
    assert!(runs(&store, "order-y").iter().all(|r| r.inline));
    let z = runs(&store, "order-z");
    assert!(z.len() == 1 && !z[0].inline, "a run over {INLINE_RUN_BYTES} bytes is read from the log: {z:?}");
    let all: Vec<_> = store.read_all(1).collect::<Result<_>>().expect("read all");
    for s in ["order-x", "order-y", "order-z"] {
        let mine: Vec<_> = all.iter().filter(|e| e.stream_id == s).cloned().collect();
        let top = mine.len() as u64;
        for v in (0..=top + 1).chain([u64::MAX]) {
            let fwd: Vec<_> =
                store.read_stream(&sid(s), v, Direction::Forward).collect::<Result<_>>().expect("fwd");
            let from = usize::try_from(v.max(1) - 1).unwrap_or(usize::MAX).min(mine.len());
            assert_eq!(fwd.as_slice(), &mine[from..], "{s} forward from {v}");
            assert_eq!(folded(&store, s, v), fwd, "{s} folded from {v}");
            let back: Vec<_> =
                store.read_stream(&sid(s), v, Direction::Backward).collect::<Result<_>>().expect("back");
            let upto = usize::try_from(v).unwrap_or(usize::MAX).min(mine.len());
            let want: Vec<_> = mine[..upto].iter().rev().cloned().collect();
            assert_eq!(back, want, "{s} backward from {v}");
        }
    }
    let report = store.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
});

both_engines!(a_short_run_is_read_from_its_copy_even_when_the_log_record_is_damaged, |store| {
    let s = sid("order-c");
    for t in ["A", "B", "C"] {
        store.append_to(&s, ExpectedVersion::Any, vec![ev(t)]).await.expect("append");
    }
    let before: Vec<_> = store.read_stream(&s, 1, Direction::Forward).collect::<Result<_>>().expect("read");
    flip_a_byte(&store, 2);
    assert!(store.read_all(1).any(|e| e.is_err()), "the log record is damaged");
    let after: Vec<_> =
        store.read_stream(&s, 1, Direction::Forward).collect::<Result<_>>().expect("from the copies");
    assert_eq!(after, before);
    assert_eq!(folded(&store, "order-c", 1), before);
    assert!(store.verify().expect("verify").problems.iter().any(|p| p.contains("position 2")));
});

both_engines!(has_events_after_tells_whether_a_stream_moved_past_an_append, |store| {
    let s = sid("order-h");
    store.append_to(&s, ExpectedVersion::NoStream, vec![ev("A")]).await.expect("1");
    store.append_to(&s, ExpectedVersion::Exact(1), vec![ev("B"), ev("C")]).await.expect("2-3");
    store.append_to(&s, ExpectedVersion::Exact(3), vec![ev("D")]).await.expect("4");
    for (version, moved) in [(0, true), (1, true), (3, true), (4, false), (u64::MAX, false)] {
        assert_eq!(store.has_events_after(&s, version).expect("check"), moved, "after version {version}");
    }
    assert!(!store.has_events_after(&sid("order-none"), 0).expect("check"));
});

both_engines!(a_damaged_copy_in_the_stream_index_is_read_from_the_log_and_verify_finds_it, |store| {
    let s = sid("order-d");
    for t in ["A", "B", "C"] {
        store.append_to(&s, ExpectedVersion::Any, vec![ev(t)]).await.expect("append");
    }
    let put = |key: Vec<u8>, value: Vec<u8>| {
        let mut b = WriteBatch::default();
        b.put(key, value);
        store.storage().apply(b).expect("write");
    };
    let entry = |v: u64| {
        store.storage().get(&keys::stream("order-d", v)).expect("get").expect("entry").as_ref().to_vec()
    };
    // One flipped byte in the copy of version 2.
    let mut damaged = entry(2);
    let n = damaged.len();
    damaged[n - 2] ^= 0xff;
    put(keys::stream("order-d", 2), damaged);
    // The copy of version 1 where version 3's should be (its own header says position 1).
    let mut misplaced = entry(3)[..codec::RUN_HEAD].to_vec();
    misplaced.extend_from_slice(&entry(1)[codec::RUN_HEAD..]);
    put(keys::stream("order-d", 3), misplaced);
    // Reads fall back to the log, which still holds both records.
    let got: Vec<_> = store.read_stream(&s, 1, Direction::Forward).collect::<Result<_>>().expect("read");
    let log: Vec<_> = store.read_all(1).collect::<Result<_>>().expect("log");
    assert_eq!(got, log);
    assert_eq!(folded(&store, "order-d", 1), log);
    let back: Vec<_> =
        store.read_stream(&s, u64::MAX, Direction::Backward).collect::<Result<_>>().expect("back");
    assert_eq!(back, log.iter().rev().cloned().collect::<Vec<_>>());
    // The log itself is intact; verify finds both damaged copies.
    assert!(store.read_all(1).all(|e| e.is_ok()));
    let report = store.verify().expect("verify");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().all(|p| p.contains("order-d")), "{:?}", report.problems);
});

both_engines!(the_parallel_reader_reads_what_read_all_reads, |store| {
    for i in 0..60 {
        let events = (0..5).map(|j| ev(&format!("E{i}-{j}"))).collect();
        store
            .append_to(&sid(&format!("order-{}", i % 7)), ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    assert_eq!(store.head(), 300);
    for from in [0, 1, 2, 150, 299, 300, 301, 500] {
        let want: Vec<_> = store.read_all(from).collect::<Result<_>>().expect("read_all");
        for (workers, chunk, depth) in [(1, 1, 1), (2, 7, 1), (3, 64, 2), (8, 1000, 4), (2, 4096, 2)] {
            let got: Vec<_> = store
                .read_all_parallel(from, ReadAhead { workers, chunk, depth })
                .expect("start")
                .collect::<Result<_>>()
                .expect("parallel");
            assert_eq!(got, want, "from {from}, {workers} workers, chunks of {chunk}");
        }
    }
    // Events appended after the reader started are not part of its range.
    let reader = store.read_all_parallel(1, ReadAhead { workers: 2, chunk: 16, depth: 1 }).expect("start");
    store.append_to(&sid("order-late"), ExpectedVersion::Any, vec![ev("Late")]).await.expect("append");
    assert_eq!(reader.count(), 300);
    // Dropping a reader half way stops its workers (the test would hang otherwise).
    let mut reader = store.read_all_parallel(1, ReadAhead { workers: 3, chunk: 4, depth: 1 }).expect("start");
    assert_eq!(reader.by_ref().take(10).count(), 10);
    drop(reader);
});

both_engines!(the_parallel_reader_reports_a_corrupt_record_in_place, |store| {
    let events = (0..40).map(|j| ev(&format!("E{j}"))).collect();
    store.append_to(&sid("order-c"), ExpectedVersion::Any, events).await.expect("append");
    flip_a_byte(&store, 17);
    let results: Vec<_> =
        store.read_all_parallel(1, ReadAhead { workers: 2, chunk: 5, depth: 1 }).expect("start").collect();
    assert_eq!(results.len(), 40);
    for (i, r) in results.iter().enumerate() {
        match (i + 1, r) {
            (17, Err(Error::Corrupt { location, .. })) => assert_eq!(location, "position 17"),
            (17, other) => panic!("expected a corruption error at 17, got {other:?}"),
            (p, Ok(e)) => assert_eq!(e.position, p as u64),
            (p, Err(e)) => panic!("unexpected error at {p}: {e}"),
        }
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_reopens_with_everything_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = sid("order-r");
    let cfg = SledConfig::new(dir.path());
    {
        let store =
            EventStore::open(SledStorage::open(&cfg).expect("sled"), StoreConfig::default()).expect("open");
        store.append_to(&s, ExpectedVersion::NoStream, vec![ev("A"), ev("B")]).await.expect("append");
        store.save_checkpoint("p", 2).await.expect("cp");
    }
    let store =
        EventStore::open(SledStorage::open(&cfg).expect("sled"), StoreConfig::default()).expect("reopen");
    assert_eq!(store.head(), 2);
    assert_eq!(store.checkpoint("p").expect("cp"), Some(2));
    let before = store.read_event(2).expect("read").expect("present").recorded_at_ns;
    let r = store.append_to(&s, ExpectedVersion::Exact(2), vec![ev("C")]).await.expect("continue");
    assert_eq!((r.first_position, r.version()), (3, 3));
    assert!(store.read_event(3).expect("read").expect("present").recorded_at_ns >= before);
    // The database is locked while open.
    let quick = SledConfig { lock_wait: Duration::from_millis(50), ..cfg.clone() };
    let err = SledStorage::open(&quick).unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_mode_acknowledges_after_a_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig {
        durability: Durability::Periodic { interval: Duration::from_millis(5) },
        ..StoreConfig::default()
    };
    let store =
        EventStore::open(SledStorage::open(&SledConfig::new(dir.path())).expect("sled"), cfg).expect("open");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                store
                    .append_to(&sid(&format!("order-{w}")), ExpectedVersion::Any, vec![ev("E")])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(store.head(), 160);
    assert!(store.sync_count() >= 1);
}

/// Memory storage whose sync can be made to fail.
#[derive(Debug, Clone, Default)]
struct FlakyStorage {
    inner: MemoryStorage,
    fail_sync: Arc<AtomicBool>,
}

impl Storage for FlakyStorage {
    type Value = <MemoryStorage as Storage>::Value;
    type Iter = <MemoryStorage as Storage>::Iter;
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StorageError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        self.inner.range(start, end, reverse)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.inner.apply(batch)
    }
    fn sync(&self) -> Result<(), StorageError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            Err(StorageError("EIO (injected)".into()))
        } else {
            Ok(())
        }
    }
    fn flush_to_os(&self) -> Result<(), StorageError> {
        self.sync()
    }
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_failed_sync_fails_the_waiters_and_poisons_the_store() {
    let storage = FlakyStorage::default();
    let fail = storage.fail_sync.clone();
    let store = EventStore::open(storage, StoreConfig::default()).expect("open");
    let s = sid("order-f");
    store.append_to(&s, ExpectedVersion::Any, vec![ev("ok")]).await.expect("healthy");
    assert_eq!(store.poisoned(), None);
    fail.store(true, Ordering::SeqCst);
    let err = store.append_to(&s, ExpectedVersion::Any, vec![ev("lost")]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert!(!err.is_client_error());
    fail.store(false, Ordering::SeqCst);
    let err = store.append_to(&s, ExpectedVersion::Any, vec![ev("later")]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "a poisoned store stays read-only: {err}");
    // Readers never saw the unacknowledged event.
    assert_eq!(store.head(), 1);
    assert!(store.poisoned().is_some(), "the node can see why");
}

#[test]
fn empty_and_inverted_ranges_are_empty_on_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStorage::open(&SledConfig::new(dir.path())).expect("sled");
    assert_eq!(s.range(b"b", b"a", false).count(), 0);
    assert_eq!(s.range(b"a", b"a", true).count(), 0);
}

both_engines!(category_subscription_misses_nothing_under_interleaved_appends, |store| {
    // Appends to two categories race with a subscriber of one of them.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..1500u64 {
                let (s, t) = if i % 3 == 0 { ("order-x", "O") } else { ("payment-y", "P") };
                store.append_to(&sid(s), ExpectedVersion::Any, vec![ev(t)]).await.expect("append");
            }
        })
    };
    let mut sub = store.subscribe_category("order", 0);
    let mut versions = Vec::new();
    while versions.len() < 500 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("no stall")
            .expect("open")
            .expect("ok");
        assert_eq!(e.category(), "order");
        versions.push(e.version);
    }
    writer.await.expect("join");
    assert_eq!(versions, (1..=500).collect::<Vec<_>>(), "no order event skipped or repeated");
});

both_engines!(multi_category_subscription_delivers_its_categories_in_log_order, |store| {
    // Three categories race with a subscriber of two of them: every event of those two arrives
    // once, in log order, whether it was appended before the subscription caught up or after.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..1200u64 {
                let (s, t) = match i % 4 {
                    0 => ("order-x", "O"),
                    1 => ("replies-r", "R"),
                    _ => ("payment-y", "P"),
                };
                store.append_to(&sid(s), ExpectedVersion::Any, vec![ev(t)]).await.expect("append");
            }
        })
    };
    let mut sub = store.subscribe_categories(&["order", "replies"], 0);
    let mut seen = Vec::new();
    while seen.len() < 600 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("no stall")
            .expect("open")
            .expect("ok");
        assert!(matches!(e.category(), "order" | "replies"), "{}", e.stream_id);
        seen.push(e.position);
    }
    writer.await.expect("join");
    let expected: Vec<u64> = (1..=1200u64).filter(|p| (p - 1) % 4 < 2).collect();
    assert_eq!(seen, expected, "every order and reply event once, in log order, nothing else");
    // Caught up: nothing else is pending for these categories.
    store.append_to(&sid("payment-y"), ExpectedVersion::Any, vec![ev("P")]).await.expect("append");
    assert!(sub.try_next().await.is_none(), "a payment event is not delivered");
});

#[tokio::test]
async fn an_imported_log_is_the_same_log_byte_for_byte() {
    let a = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("open");
    for i in 0..50 {
        let mut e = ev("Happened").with_metadata("k", i.to_string());
        e.payload = format!("{{\"i\":{i}}}").into_bytes();
        a.append_to(&sid(&format!("s-{}", i % 7)), ExpectedVersion::Any, vec![e]).await.expect("append");
    }
    let events: Vec<RecordedEvent> = a.read_all(1).collect::<Result<_>>().expect("read");
    let b = MemoryStorage::new();
    let mut importer = crate::raw::Importer::new(&b).expect("importer");
    for e in &events {
        importer.push(e).expect("push");
    }
    let digest = importer.finish().expect("finish");
    assert_eq!(digest.count(), 50);
    assert_eq!(digest.hex(), crate::raw::digest(a.storage()).expect("digest").hex());
    let b = EventStore::open(b, StoreConfig::default()).expect("open restored");
    assert!(b.verify().expect("verify").is_ok());
    let again: Vec<RecordedEvent> = b.read_all(1).collect::<Result<_>>().expect("read");
    assert_eq!(again, events);
    assert_eq!(
        b.stream_version(&sid("s-3")).expect("version"),
        a.stream_version(&sid("s-3")).expect("version")
    );
    // It continues where the original stopped.
    let r = b.append_to(&sid("s-0"), ExpectedVersion::Exact(8), vec![ev("Next")]).await.expect("append");
    assert_eq!(r.last_position, 51);
    assert!(b.find_event(events[10].event_id).expect("find").is_some());

    // A non-empty storage, a gap, a version out of order, time going back: refused.
    assert!(crate::raw::Importer::new(b.storage()).is_err());
    let fresh = MemoryStorage::new();
    let mut imp = crate::raw::Importer::new(&fresh).expect("importer");
    assert!(imp.push(&events[1]).is_err(), "must start at position 1");
    imp.push(&events[0]).expect("first");
    let mut skipped_version = events[14].clone(); // s-0 version 3
    skipped_version.position = 2;
    assert!(imp.push(&skipped_version).is_err(), "s-0 version 3 right after version 1");
    let mut back = events[1].clone();
    back.recorded_at_ns = 0;
    assert!(imp.push(&back).is_err(), "time going back");
}

both_engines!(records_packed_into_frames_read_back_from_any_position, |store| {
    // One append of 200 events: one group, several frames (each event is ~100 bytes).
    let big = sid("order-big");
    let events: Vec<_> = (0..200).map(|i| ev(&format!("B{i}"))).collect();
    store.append_to(&big, ExpectedVersion::NoStream, events).await.expect("big append");
    // A record larger than a frame gets a frame of its own, between small ones.
    let huge = NewEvent::json("Huge", vec![b'7'; 3 * crate::frame::FRAME_TARGET]);
    store
        .append_to(&sid("order-huge"), ExpectedVersion::Any, vec![ev("H0"), huge, ev("H2")])
        .await
        .expect("huge");
    // Many concurrent single appends: groups of several requests each.
    let mut tasks = Vec::new();
    for w in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.append_to(&sid(&format!("order-w{}", w % 5)), ExpectedVersion::Any, vec![ev("W")]).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("append");
    }
    let head = store.head();
    assert_eq!(head, 243);
    let frames = store.storage().range(&keys::log(0), &keys::log_end(), false).count() as u64;
    assert!(frames > 3 && frames < head, "{frames} frames for {head} events");

    let all: Vec<_> = store.read_all(1).collect::<Result<_>>().expect("read all");
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=head).collect::<Vec<_>>());
    assert_eq!(all[201].payload.len(), 3 * crate::frame::FRAME_TARGET);
    for from in 1..=head + 1 {
        let tail: Vec<_> = store.read_all(from).collect::<Result<_>>().expect("read from");
        assert_eq!(tail.as_slice(), &all[(from - 1) as usize..], "from {from}");
        let one = store.read_event(from).expect("read one");
        assert_eq!(one.as_ref(), all.get((from - 1) as usize), "event {from}");
    }
    for (from, to) in [(1, 1), (3, 77), (50, 202), (199, 243), (240, 500)] {
        let got: Vec<_> = store.read_range(from, to).collect::<Result<_>>().expect("range");
        let want: Vec<_> = all.iter().filter(|e| e.position >= from && e.position <= to).cloned().collect();
        assert_eq!(got, want, "[{from}, {to}]");
    }
    let stream: Vec<_> =
        store.read_stream(&big, 1, Direction::Forward).collect::<Result<_>>().expect("stream");
    assert_eq!(stream.as_slice(), &all[..200]);
    // One stream-index entry covers the whole 200-event append; reads start anywhere inside it.
    let prefix = keys::stream_prefix("order-big");
    assert_eq!(store.storage().range(&prefix, &keys::prefix_end(&prefix), false).count(), 1);
    for v in [0, 1, 2, 57, 150, 199, 200, 201, u64::MAX] {
        let fwd: Vec<_> = store.read_stream(&big, v, Direction::Forward).collect::<Result<_>>().expect("fwd");
        let from = usize::try_from(v.max(1) - 1).unwrap_or(usize::MAX).min(200);
        assert_eq!(fwd.as_slice(), &all[from..200], "forward from {v}");
        let back: Vec<_> =
            store.read_stream(&big, v, Direction::Backward).collect::<Result<_>>().expect("back");
        let upto = usize::try_from(v).unwrap_or(usize::MAX).min(200);
        let want: Vec<_> = all[..upto].iter().rev().cloned().collect();
        assert_eq!(back, want, "backward from {v}");
    }
    // Streams written by many single appends: one entry each, read across them.
    let w0: Vec<_> =
        store.read_stream(&sid("order-w0"), 3, Direction::Forward).collect::<Result<_>>().expect("w0");
    assert_eq!(w0.iter().map(|e| e.version).collect::<Vec<_>>(), (3..=8).collect::<Vec<_>>());
    let w0: Vec<_> =
        store.read_stream(&sid("order-w0"), 6, Direction::Backward).collect::<Result<_>>().expect("w0");
    assert_eq!(w0.iter().map(|e| e.version).collect::<Vec<_>>(), vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(store.stream_version(&big).expect("version"), 200);
    assert_eq!(store.stream_version(&sid("order-w0")).expect("version"), 8);
    let t = nanos_to_time(all[220].recorded_at_ns);
    let at = store.seek_time(t).expect("seek");
    assert!(all[(at - 1) as usize].recorded_at_ns >= all[220].recorded_at_ns);
    assert!(at == 1 || all[(at - 2) as usize].recorded_at_ns < all[220].recorded_at_ns);
    // A retry of the big append finds its records inside the frames.
    let again: Vec<_> = all[..200].iter().map(NewEvent::from).collect();
    let r = store.append_to(&big, ExpectedVersion::NoStream, again).await.expect("retry");
    assert_eq!((r.first_position, r.last_position), (1, 200));
    assert_eq!(store.head(), head);
    let report = store.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, head);
});

#[test]
fn a_store_of_an_older_format_is_refused_with_a_clear_error() {
    let storage = MemoryStorage::new();
    let mut b = WriteBatch::default();
    b.put(keys::meta("format"), 1u64.to_be_bytes().to_vec());
    storage.apply(b).expect("write marker");
    let err = EventStore::open(storage, StoreConfig::default()).expect_err("older format");
    assert!(err.to_string().contains("store format 1"), "{err}");
}

/// A store as this build's predecessors wrote it: format 1 (one record per key, one 8-byte
/// stream-index entry per event), format 2 (frames, the same stream index) or format 3 (frames,
/// one stream-index entry per run without copies of its records), with the same events,
/// checkpoints, snapshots and application data as `current`.
fn legacy_copy(current: &MemoryStorage, format: u64) -> MemoryStorage {
    let legacy = MemoryStorage::new();
    let mut b = WriteBatch::default();
    b.put(keys::meta("format"), format.to_be_bytes().to_vec());
    for item in current.range(&[0], &[0xff], false) {
        let (k, v) = item.expect("read");
        match k[0] {
            keys::META => {}
            keys::STREAM if format == 3 => b.put(k.to_vec(), v[..codec::RUN_HEAD].to_vec()),
            keys::STREAM => {}
            keys::LOG if format == 1 => {
                let last = keys::trailing_u64(&k).expect("key");
                let info = frame::parse(&v, last).expect("frame");
                for p in info.first..=last {
                    let record = frame::record_at(&v, last, p).expect("record");
                    b.put(keys::log(p).to_vec(), record.to_vec());
                }
            }
            _ => b.put(k.to_vec(), v.to_vec()),
        }
    }
    let mut scan = frame::RecordScan::new(current, 1, u64::MAX);
    while let Some((p, record)) = scan.next_record().filter(|_| format < 3) {
        let e = codec::decode_record(record.expect("record"), p).expect("decode");
        b.put(keys::stream(&e.stream_id, e.version), p.to_be_bytes().to_vec());
    }
    legacy.apply(b).expect("write legacy store");
    legacy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_formats_1_to_3_migrate_to_the_current_format_unchanged() {
    let storage = MemoryStorage::new();
    let store = EventStore::open(storage.clone(), StoreConfig::default()).expect("open");
    for i in 0..30u64 {
        let events = (0..(i % 4 + 1)).map(|j| ev(&format!("E{i}-{j}"))).collect();
        store
            .append_to(&sid(&format!("order-{}", i % 6)), ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    store.save_checkpoint("consumer.x", 17).await.expect("checkpoint");
    let snap = Snapshot { version: 3, schema_version: 1, payload: b"state".to_vec() };
    store.save_snapshot(&sid("order-1"), &snap).expect("snapshot");
    let mut b = WriteBatch::default();
    b.put(vec![keys::APP, b'd', b'o', b'c'], b"read model".to_vec());
    store.storage().apply(b).expect("app data");
    let events: Vec<_> = store.read_all(1).collect::<Result<_>>().expect("read");
    let digest = crate::raw::digest(store.storage()).expect("digest").hex();
    drop(store);

    for format in [1, 2, 3] {
        let legacy = legacy_copy(&storage, format);
        if format == 3 {
            // Format 3 is format 4 without copies in the index: it opens, reads the same and is
            // marked format 4 from then on.
            let copy = MemoryStorage::new();
            let mut b = WriteBatch::default();
            for item in legacy.range(&[0], &[0xff], false) {
                let (k, v) = item.expect("read");
                b.put(k.to_vec(), v.to_vec());
            }
            copy.apply(b).expect("copy");
            let store = EventStore::open(copy.clone(), StoreConfig::default()).expect("format 3 opens");
            assert_eq!(crate::raw::store_format(&copy).expect("format"), Some(FORMAT_VERSION));
            assert_eq!(store.read_all(1).collect::<Result<Vec<_>>>().expect("read"), events);
            let id = sid("order-1");
            let want: Vec<_> = events.iter().filter(|e| e.stream_id == id.as_str()).cloned().collect();
            let got: Vec<_> =
                store.read_stream(&id, 1, Direction::Forward).collect::<Result<_>>().expect("read");
            assert_eq!(got, want);
            assert!(runs(&store, "order-1").iter().all(|r| !r.inline));
            assert!(store.verify().expect("verify").is_ok());
        } else {
            assert!(
                EventStore::open(legacy.clone(), StoreConfig::default()).is_err(),
                "format {format} opens"
            );
        }
        let migrated = MemoryStorage::new();
        let report = crate::raw::migrate(&legacy, &migrated).expect("migrate");
        assert_eq!((report.from_format, report.events), (format, events.len() as u64));
        assert_eq!(report.other_entries, 3, "checkpoint, snapshot, application data");
        assert_eq!(report.digest, digest, "format {format}: the same records, byte for byte");
        let store =
            EventStore::open(migrated.clone(), StoreConfig::default()).expect("opens in the current format");
        assert!(store.verify().expect("verify").is_ok());
        // The importer writes copies of the short runs, as the writer does.
        assert!(runs(&store, "order-1").iter().all(|r| r.inline), "format {format}: no copies");
        assert_eq!(store.read_all(1).collect::<Result<Vec<_>>>().expect("read"), events);
        for s in 0..6 {
            let id = sid(&format!("order-{s}"));
            let want: Vec<_> = events.iter().filter(|e| e.stream_id == id.as_str()).cloned().collect();
            let got: Vec<_> =
                store.read_stream(&id, 1, Direction::Forward).collect::<Result<_>>().expect("stream");
            assert_eq!(got, want);
        }
        assert_eq!(store.checkpoint("consumer.x").expect("cp"), Some(17));
        assert_eq!(store.load_snapshot(&sid("order-1")).expect("snapshot"), Some(snap.clone()));
        assert!(migrated.get(&[keys::APP, b'd', b'o', b'c']).expect("get").is_some());
        let r =
            store.append_to(&sid("order-0"), ExpectedVersion::Any, vec![ev("After")]).await.expect("append");
        assert_eq!(r.first_position, events.len() as u64 + 1);
        // Neither a current store nor a non-empty target is migrated.
        assert!(crate::raw::migrate(&migrated, &MemoryStorage::new()).is_err());
        assert!(crate::raw::migrate(&legacy, &migrated).is_err());
    }
    assert!(crate::raw::migrate(&MemoryStorage::new(), &MemoryStorage::new()).is_err());
}

/// A memory engine whose `apply` and `sync` can be held at a gate (and whose next `apply` can be
/// made to fail), so a test can arrange exactly which appends share a writer group and when
/// that group becomes durable.
#[derive(Clone, Default)]
struct Gated {
    inner: MemoryStorage,
    apply: Arc<Gate>,
    sync: Arc<Gate>,
    fail_next_apply: Arc<AtomicBool>,
}

#[derive(Default)]
struct Gate {
    state: std::sync::Mutex<GateState>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    /// `None`: open; `Some(k)`: k more calls may pass.
    permits: Option<u32>,
    entered: u32,
    passed: u32,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Calls wait here from now on.
    fn hold(&self) {
        self.lock().permits = Some(0);
    }
    /// Lets one more call through.
    fn allow_one(&self) {
        let mut st = self.lock();
        st.permits = Some(st.permits.map_or(1, |k| k + 1));
        self.cv.notify_all();
    }
    /// Lets every call through.
    fn open(&self) {
        self.lock().permits = None;
        self.cv.notify_all();
    }
    fn pass(&self) {
        let mut st = self.lock();
        st.entered += 1;
        self.cv.notify_all();
        // Held at most 10 s, so a failing test cannot hang the store's threads (and its drop).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while st.permits == Some(0) && std::time::Instant::now() < until {
            st = self.cv.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        if let Some(k) = st.permits.as_mut() {
            *k = k.saturating_sub(1);
        }
        st.passed += 1;
        self.cv.notify_all();
    }
    /// Waits until `n` calls have entered (and are held, or have passed).
    fn wait_entered(&self, n: u32) {
        let mut st = self.lock();
        while st.entered < n {
            st = self.cv.wait_timeout(st, Duration::from_secs(10)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
    /// Waits until `n` calls have passed.
    fn wait_passed(&self, n: u32) {
        let mut st = self.lock();
        while st.passed < n {
            st = self.cv.wait_timeout(st, Duration::from_secs(10)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
    fn passed(&self) -> u32 {
        self.lock().passed
    }
}

impl Storage for Gated {
    type Value = <MemoryStorage as Storage>::Value;
    type Iter = <MemoryStorage as Storage>::Iter;
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Self::Value>, StorageError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        self.inner.range(start, end, reverse)
    }
    fn apply(&self, batch: WriteBatch) -> std::result::Result<(), StorageError> {
        self.apply.pass();
        if self.fail_next_apply.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError("injected apply failure".into()));
        }
        self.inner.apply(batch)
    }
    fn sync(&self) -> std::result::Result<(), StorageError> {
        self.sync.pass();
        self.inner.sync()
    }
    fn flush_to_os(&self) -> std::result::Result<(), StorageError> {
        self.inner.flush_to_os()
    }
    fn size_on_disk(&self) -> std::result::Result<u64, StorageError> {
        Ok(0)
    }
}

/// Puts an original append and a repeat of it (same event id, same content) into one writer
/// group whose predecessor is already durable. Returns the store, the storage, and both
/// appends, queued but not answered. The group's `apply` is held at its gate when this returns.
async fn original_and_repeat_in_one_group() -> (
    EventStore<Gated>,
    Gated,
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppendResult>> + Send>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppendResult>> + Send>>,
) {
    let storage = Gated::default();
    let store = EventStore::open(storage.clone(), StoreConfig::default()).expect("open");
    let applies = storage.apply.passed();
    // Group 1, durable before anything else happens.
    store.append_to(&sid("order-first"), ExpectedVersion::Any, vec![ev("First")]).await.expect("first");
    // Group 2 is held inside `apply` while the original and its repeat queue up behind it.
    storage.apply.hold();
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            store.append_to(&sid("order-blocker"), ExpectedVersion::Any, vec![ev("Blocker")]).await
        })
    };
    storage.apply.wait_entered(applies + 2);
    let e = ev("Placed");
    let mut original: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = {
        let (store, e) = (store.clone(), e.clone());
        Box::pin(async move { store.append_to(&sid("order-dup"), ExpectedVersion::NoStream, vec![e]).await })
    };
    let mut repeat: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = {
        let store = store.clone();
        Box::pin(async move { store.append_to(&sid("order-dup"), ExpectedVersion::NoStream, vec![e]).await })
    };
    // Polling once queues each append (the send happens before the first await).
    assert!(futures::poll!(&mut original).is_pending());
    assert!(futures::poll!(&mut repeat).is_pending());
    // Group 2 goes through and becomes durable; group 3 (original + repeat) is then held at
    // `apply`, so its predecessor's sync is done before the writer answers anything of it.
    let syncs = storage.sync.passed();
    storage.apply.allow_one();
    storage.apply.wait_entered(applies + 3);
    blocker.await.expect("join").expect("blocker");
    storage.sync.wait_passed(syncs + 1);
    (store, storage, original, repeat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_an_append_in_the_same_group_waits_for_the_sync_that_covers_it() {
    let (store, storage, original, mut repeat) = original_and_repeat_in_one_group().await;
    // The group's sync is held: neither append may be acknowledged before it.
    storage.sync.hold();
    let syncs = storage.sync.passed();
    storage.apply.open();
    storage.sync.wait_entered(syncs + 1);
    let early = tokio::time::timeout(Duration::from_millis(300), &mut repeat).await;
    assert!(early.is_err(), "the repeat was acknowledged before its original was durable: {early:?}");
    storage.sync.open();
    let (a, b) = (original.await.expect("original"), repeat.await.expect("repeat"));
    assert_eq!(a, b);
    assert!(store.head() >= a.last_position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_an_append_in_a_failed_group_fails_with_it() {
    let (store, storage, original, repeat) = original_and_repeat_in_one_group().await;
    storage.fail_next_apply.store(true, std::sync::atomic::Ordering::SeqCst);
    storage.apply.open();
    assert!(original.await.is_err(), "the original's batch failed");
    let r = repeat.await;
    assert!(r.is_err(), "the repeat of an append that was never written succeeded: {r:?}");
    assert_eq!(store.read_stream(&sid("order-dup"), 1, Direction::Forward).count(), 0);
}

both_engines!(stored_as_tells_absent_same_and_different_without_appending, |store| {
    let s = sid("order-probe");
    let e = ev("Placed");
    assert_eq!(store.stored_as(&s, &e).expect("probe"), Stored::Absent);
    let r = store.append_to(&s, ExpectedVersion::NoStream, vec![e.clone()]).await.expect("append");
    assert_eq!(
        store.stored_as(&s, &e).expect("probe"),
        Stored::Same { position: r.first_position, version: 1 }
    );
    let other = NewEvent::json("Placed", b"{\"other\":1}".to_vec()).with_id(e.event_id);
    assert_eq!(store.stored_as(&s, &other).expect("probe"), Stored::Different { position: r.first_position });
    // The same event on another stream is another event.
    assert!(matches!(store.stored_as(&sid("order-elsewhere"), &e).expect("probe"), Stored::Different { .. }));
    assert_eq!(store.head(), 1, "nothing was appended by the probes");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_append_queue_makes_callers_wait_then_answers_overloaded() {
    let storage = Gated::default();
    let cfg = StoreConfig {
        max_pending_appends: 2,
        max_append_wait: Duration::from_millis(200),
        ..StoreConfig::default()
    };
    let store = EventStore::open(storage.clone(), cfg).expect("open");
    assert_eq!(store.max_pending_appends(), 2);
    let applies = storage.apply.passed();
    storage.apply.hold();
    let spawn = |name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move { store.append_to(&sid(name), ExpectedVersion::Any, vec![ev("E")]).await })
    };
    // Two appends fill the queue (the first is held inside the writer, the second queued).
    let (a, b) = (spawn("order-a"), spawn("order-b"));
    storage.apply.wait_entered(applies + 1);
    while store.pending_appends() < 2 {
        tokio::task::yield_now().await;
    }
    // A third waits for room, then is refused with the typed error; nothing of it is written.
    let refused = store.append_to(&sid("order-c"), ExpectedVersion::Any, vec![ev("E")]).await;
    assert!(matches!(refused, Err(Error::Overloaded { pending: 2 })), "{refused:?}");
    assert!(!Error::Overloaded { pending: 2 }.is_client_error());
    // A fourth that waits while room comes free gets in.
    let d = spawn("order-d");
    storage.apply.open();
    for t in [a, b, d] {
        t.await.expect("join").expect("append");
    }
    assert_eq!(store.head(), 3);
    assert_eq!(store.read_stream(&sid("order-c"), 1, Direction::Forward).count(), 0);
    assert_eq!(store.pending_appends(), 0);
}
