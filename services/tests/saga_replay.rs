//! The saga decider against sagas an earlier build recorded: `fixtures/saga-log.jsonl` is the log
//! of an embedded node that ran sagas down every path (scripts/saga-fixture.sh). Replaying it
//! must find no divergence: a change to the saga that would decide a recorded saga otherwise
//! (and so break sagas running when the change is deployed) fails here.

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

fn fixture() -> Vec<RecordedEvent> {
    include_str!("fixtures/saga-log.jsonl").lines().filter(|l| !l.trim().is_empty()).map(record).collect()
}

#[test]
fn the_current_decider_decides_every_recorded_saga_as_it_was_recorded() {
    let events = fixture();
    let Replayed { sagas, decisions, divergences } = replay(&store_of(&events), policy(), 1).expect("replay");
    assert!(divergences.is_empty(), "{divergences:#?}");
    assert_eq!(sagas, 8);
    // Every kind of decision is in the fixture: starts, replies, deadlines, operators' actions.
    assert!(decisions > 50, "{decisions}");
    for kind in
        ["SagaQuarantined", "OperatorActed", "CompensationRequested", "SagaCompleted", "SagaCompensated"]
    {
        assert!(events.iter().any(|e| e.event_type == kind), "the fixture has no {kind}");
    }
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
