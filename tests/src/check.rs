//! What a fault run must leave behind, checked from every pod's own log after the cluster
//! stopped (read as any client reads them: the documented stream layout and event contracts).
//!
//! - every accepted order's saga ended, on exactly one saga pod;
//! - no step was compensated without a recorded cause: a refusal reply, the customer's cancel,
//!   or a timeout of commands that really got no successful reply; no saga failed;
//! - every command sent has exactly one reply (re-sent copies repeat it byte for byte), and
//!   every forwarded REST command one answer to the pod that forwarded it;
//! - no event id is recorded twice across the pods' own logs, and every SKU lives on one
//!   inventory pod;
//! - an `Idempotency-Key` means one order on every query pod: retries got the same order, the
//!   order holds the body that was answered 201, and a 409 went to another body;
//! - every query pod holds every owner's events, and its read models agree with the owners'
//!   aggregates (order status, stock, saga status);
//! - `causeway verify` passes on every pod (each checks what its log can answer for; the query
//!   pods check every invariant: stock conserved, compensated orders hold nothing, completed
//!   orders paid and shipped once).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aggregates::codec::DomainEvent;
use aggregates::inventory::Inventory;
use aggregates::order::{Order, OrderEvent, OrderStatus};
use aggregates::saga::{Answer, Saga, SagaEvent, SagaStatus};
use aggregates::Decider;
use event_store::{EventStore, RecordedEvent, SledConfig, SledStorage, StoreConfig};
use serde_json::Value;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::faults::Report;

/// One request the workload sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its `Idempotency-Key`.
    pub key: String,
    /// Its body.
    pub body: Value,
    /// The query pod it went to.
    pub pod: usize,
    /// The answer's status (`None`: no answer, the pod was down or paused too long).
    pub status: Option<u16>,
    /// The order id answered.
    pub order_id: Option<String>,
    /// The order's first request (the others are retries and conflicts).
    pub first: bool,
}

/// A pod's log, read after it stopped.
struct Log {
    name: String,
    role: &'static str,
    events: Vec<RecordedEvent>,
    store: EventStore<SledStorage>,
}

impl Log {
    /// Events the pod recorded itself (a query pod's replicas are other pods' events).
    fn own(&self) -> impl Iterator<Item = &RecordedEvent> {
        self.events.iter().filter(|e| !e.metadata.contains_key("replica_of"))
    }
}

fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

fn fold<D: Decider>(events: &[&RecordedEvent]) -> Result<D, String>
where
    D::Event: DomainEvent,
{
    let mut state = D::default();
    for e in events {
        let ev = D::Event::decode(&e.event_type, e.schema_version, &e.payload)
            .map_err(|err| format!("{} version {}: {err}", e.stream_id, e.version))?;
        state = state.evolve(&ev);
    }
    Ok(state)
}

/// Every event of a stream across logs, in version order (one owner writes it).
fn streams<'a>(logs: &'a [Log], role: &str, cat: &str) -> BTreeMap<&'a str, Vec<&'a RecordedEvent>> {
    let mut out: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
    for log in logs.iter().filter(|l| l.role == role) {
        for e in log.own().filter(|e| category(&e.stream_id) == cat) {
            out.entry(e.stream_id.as_str()).or_default().push(e);
        }
    }
    for events in out.values_mut() {
        events.sort_by_key(|e| e.version);
    }
    out
}

#[derive(serde::Deserialize)]
struct Reply {
    command_id: Uuid,
    outcome: String,
}

fn open(path: &std::path::Path) -> Result<EventStore<SledStorage>, String> {
    let storage =
        SledStorage::open(&SledConfig::new(path)).map_err(|e| format!("{}: {e}", path.display()))?;
    EventStore::open(storage, StoreConfig::default()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks everything the module docs list; every finding goes into `report.violations`.
pub fn check(cluster: &Cluster, sent: &[Sent], report: &mut Report) {
    let v = &mut report.violations;
    let mut logs = Vec::new();
    for node in &cluster.nodes {
        match open(&node.dir) {
            Ok(store) => match store.read_all(1).collect::<Result<Vec<_>, _>>() {
                Ok(events) => logs.push(Log { name: node.name(), role: node.role, events, store }),
                Err(e) => v.push(format!("{}: reading its log failed: {e}", node.name())),
            },
            Err(e) => v.push(format!("cannot open {}'s store: {e}", node.name())),
        }
    }

    // No event id twice across the pods' own logs.
    let mut ids: HashMap<Uuid, &str> = HashMap::new();
    for log in &logs {
        for e in log.own() {
            if let Some(other) = ids.insert(e.event_id, &log.name) {
                v.push(format!(
                    "event {} ({} {}) is on {} and on {other}",
                    e.event_id, e.stream_id, e.event_type, log.name
                ));
            }
        }
    }

    // Every SKU on one inventory pod.
    let mut sku_pod: HashMap<&str, &str> = HashMap::new();
    for log in logs.iter().filter(|l| l.role == "inventory") {
        for e in log.own().filter(|e| category(&e.stream_id) == "inventory") {
            if let Some(other) = sku_pod.insert(&e.stream_id, &log.name) {
                if other != log.name {
                    v.push(format!("{} is written by {other} and by {}", e.stream_id, log.name));
                }
            }
        }
    }

    // Replies (originals and re-sent copies) and commands.
    let mut replies: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    let mut resent: Vec<&RecordedEvent> = Vec::new();
    for log in logs.iter().filter(|l| ["order", "inventory", "payment", "shipping"].contains(&l.role)) {
        for e in log.own().filter(|e| category(&e.stream_id) == "replies") {
            if e.metadata.contains_key("resent_of") {
                resent.push(e);
            } else if let Ok(r) = serde_json::from_slice::<Reply>(&e.payload) {
                replies.entry(r.command_id).or_default().push(e);
            }
        }
    }
    let mut commands: BTreeSet<Uuid> = BTreeSet::new();
    for log in logs.iter().filter(|l| l.role == "saga") {
        for e in log.own().filter(|e| category(&e.stream_id).ends_with("_commands")) {
            match e.metadata.get("command_id").and_then(|c| c.parse().ok()) {
                Some(id) => {
                    commands.insert(id);
                }
                None => v.push(format!("command {} on {} has no command id", e.event_id, log.name)),
            }
        }
    }
    for id in &commands {
        match replies.get(id).map_or(0, Vec::len) {
            1 => {}
            n => v.push(format!("command {id} has {n} replies, not one")),
        }
    }
    for copy in &resent {
        let original = copy.metadata.get("resent_of").and_then(|o| o.parse::<Uuid>().ok());
        let same = original.and_then(|o| replies.values().flatten().find(|r| r.event_id == o));
        match same {
            Some(o) if o.payload == copy.payload => {}
            _ => v.push(format!("re-sent reply {} does not repeat its original", copy.event_id)),
        }
    }
    let succeeded = |command: Uuid| {
        replies.get(&command).is_some_and(|rs| {
            rs.iter()
                .any(|r| serde_json::from_slice::<Reply>(&r.payload).is_ok_and(|r| r.outcome == "succeeded"))
        })
    };
    let refused = |command: Uuid| {
        replies.get(&command).is_some_and(|rs| {
            rs.iter()
                .any(|r| serde_json::from_slice::<Reply>(&r.payload).is_ok_and(|r| r.outcome == "rejected"))
        })
    };

    // Every forwarded REST command answered, once, to the pod that forwarded it.
    let mut answers: HashMap<Uuid, usize> = HashMap::new();
    for log in logs.iter().filter(|l| l.role != "query") {
        for e in log.own().filter(|e| category(&e.stream_id) == "answers") {
            *answers.entry(e.event_id).or_default() += 1;
        }
    }
    for log in logs.iter().filter(|l| l.role == "query") {
        let source = format!("causeway://{}", log.name);
        for e in log.own().filter(|e| e.event_type.starts_with("Api")) {
            let answer = Uuid::new_v5(&e.event_id, format!("answer/{source}").as_bytes());
            match answers.get(&answer).copied().unwrap_or(0) {
                1 => {}
                0 => v.push(format!(
                    "{} forwarded {} ({}) and its owner never answered it",
                    log.name, e.event_type, e.event_id
                )),
                n => v.push(format!(
                    "{} forwarded {} ({}) and it was answered {n} times",
                    log.name, e.event_type, e.event_id
                )),
            }
        }
    }

    // The sagas: each on one saga pod, ended, compensated only for a recorded cause.
    let sagas = streams(&logs, "saga", "saga");
    let orders = streams(&logs, "order", "order");
    let mut saga_pods: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for log in logs.iter().filter(|l| l.role == "saga") {
        for e in log.own().filter(|e| category(&e.stream_id) == "saga") {
            saga_pods.entry(&e.stream_id).or_default().insert(&log.name);
        }
    }
    for (stream, pods) in &saga_pods {
        if pods.len() > 1 {
            v.push(format!("{stream} is written by more than one saga pod: {pods:?}"));
        }
    }
    let mut states: HashMap<String, Saga> = HashMap::new();
    for (stream, events) in &sagas {
        let id = stream.trim_start_matches("saga-").to_owned();
        let saga = match fold::<Saga>(events) {
            Ok(s) => s,
            Err(e) => {
                v.push(format!("{stream}: {e}"));
                continue;
            }
        };
        let outcome = format!("{:?}", saga.status).to_lowercase();
        *report.outcomes.entry(outcome).or_default() += 1;
        match saga.status {
            SagaStatus::Failed => {
                let why = events
                    .iter()
                    .filter(|e| e.event_type == "SagaFailed")
                    .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                    .collect::<Vec<_>>();
                v.push(format!("{stream} failed ({:?} first): {why:?}", saga.failure));
            }
            SagaStatus::Compensated => {
                // The state just before the step failed says what was in flight.
                let mut before = Saga::default();
                for e in events {
                    let Ok(ev) = SagaEvent::decode(&e.event_type, e.schema_version, &e.payload) else {
                        continue;
                    };
                    if let SagaEvent::StepFailed(f) = &ev {
                        let parts = before.step.as_ref().map(|s| s.parts.clone()).unwrap_or_default();
                        if f.by_customer {
                            let cancelled = orders.get(format!("order-{id}").as_str()).is_some_and(|o| {
                                o.iter().any(|e| {
                                    matches!(OrderEvent::decode(&e.event_type, e.schema_version, &e.payload),
                                        Ok(OrderEvent::OrderCancelled(c)) if c.reason == aggregates::order::CancelReason::CustomerRequest)
                                })
                            });
                            if !cancelled {
                                v.push(format!(
                                    "{stream}: compensated for a customer cancel the order never recorded"
                                ));
                            }
                        } else if f.may_have_applied {
                            for p in parts.iter().filter(|p| p.answer == Answer::Waiting) {
                                if succeeded(p.command_id) {
                                    v.push(format!(
                                        "{stream}: {:?} timed out and was compensated, but command {} succeeded ({})",
                                        f.step, p.command_id, f.reason
                                    ));
                                }
                            }
                        } else if !parts.iter().any(|p| refused(p.command_id)) {
                            v.push(format!(
                                "{stream}: {:?} compensated as refused without a refusal: {}",
                                f.step, f.reason
                            ));
                        }
                    }
                    before = before.evolve(&ev);
                }
            }
            SagaStatus::Completed => {}
            _ => v.push(format!("{stream} did not end: {}", saga.state().name())),
        }
        states.insert(id, saga);
    }

    // Every accepted order has its saga (and it ended, above).
    let accepted: BTreeSet<&str> = sent
        .iter()
        .filter(|s| matches!(s.status, Some(201 | 202)))
        .filter_map(|s| s.order_id.as_deref())
        .collect();
    for id in &accepted {
        if !states.contains_key(*id) {
            v.push(format!("order {id} was accepted but has no saga"));
        }
    }

    // Idempotency keys across query pods.
    let mut by_key: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_key.entry(&s.key).or_default().push(s);
    }
    for (key, requests) in &by_key {
        // The order id is derived from the key, so every answer names the same order.
        let Some(id) = requests.iter().find_map(|r| r.order_id.as_deref()) else { continue };
        let placed: Vec<&RecordedEvent> = orders
            .get(format!("order-{id}").as_str())
            .map(|o| o.iter().copied().filter(|e| e.event_type == "OrderPlaced").collect())
            .unwrap_or_default();
        if placed.len() > 1 {
            v.push(format!("order {id} was placed {} times", placed.len()));
        }
        let Some(placed) = placed.first() else {
            if requests.iter().any(|r| r.status == Some(201)) {
                v.push(format!("order {id} was answered 201 but never placed"));
            }
            continue;
        };
        let stored: Value = serde_json::from_slice(&placed.payload).unwrap_or(Value::Null);
        for r in requests {
            let same = same_order(&stored, &r.body);
            match r.status {
                Some(201) if !same => v.push(format!(
                    "key {key}: answered 201 on pod {} for a body that is not the order",
                    r.pod
                )),
                Some(409) if same => {
                    v.push(format!("key {key}: answered 409 on pod {} for the body the order holds", r.pod))
                }
                _ => {}
            }
        }
    }

    // The query pods: a replica of every owner's events, and read models that agree with the
    // owners' aggregates.
    let owner_events: Vec<&RecordedEvent> = logs
        .iter()
        .filter(|l| l.role != "query")
        .flat_map(|l| l.own())
        .filter(|e| category(&e.stream_id) != "deadletters")
        .collect();
    let inventories = streams(&logs, "inventory", "inventory");
    for q in logs.iter().filter(|l| l.role == "query") {
        let have: HashMap<Uuid, &RecordedEvent> = q.events.iter().map(|e| (e.event_id, e)).collect();
        let missing = owner_events.iter().filter(|e| !have.contains_key(&e.event_id)).count();
        if missing > 0 {
            v.push(format!("{} misses {missing} of the owners' events", q.name));
        }
        let models = projections::ReadModels::new(q.store.clone());
        for (stream, events) in &orders {
            let Ok(order) = fold::<Order>(events) else { continue };
            let id = stream.trim_start_matches("order-");
            let summary: Option<Value> =
                models.get(projections::models::OrderSummaries::NAME, &format!("order/{id}")).unwrap_or(None);
            let status = summary.as_ref().and_then(|s| s["status"].as_str().map(str::to_owned));
            let want = match order.status {
                OrderStatus::None => continue,
                OrderStatus::Pending => "pending",
                OrderStatus::Confirmed => "confirmed",
                OrderStatus::Cancelled => "cancelled",
            };
            if status.as_deref() != Some(want) {
                v.push(format!(
                    "{}: order {id} is {status:?} in its read model, {want} on its owner",
                    q.name
                ));
            }
        }
        for (stream, events) in &inventories {
            let Ok(inv) = fold::<Inventory>(events) else { continue };
            let sku = stream.trim_start_matches("inventory-");
            let level: Option<Value> =
                models.get(projections::models::StockLevels::NAME, &format!("sku/{sku}")).unwrap_or(None);
            let got = level.map(|l| (l["available"].as_u64(), l["reserved"].as_u64(), l["shipped"].as_u64()));
            let want = (Some(inv.available), Some(inv.reserved_total()), Some(inv.shipped));
            if got != Some(want) {
                v.push(format!(
                    "{}: stock of {sku} is {got:?} in its read model, {want:?} on its owner",
                    q.name
                ));
            }
        }
        for (id, saga) in &states {
            let timeline: Option<Value> =
                models.get(projections::models::SagaTimelines::NAME, &format!("saga/{id}")).unwrap_or(None);
            let status = timeline.as_ref().and_then(|t| t["status"].as_str().map(str::to_owned));
            let want = match saga.status {
                SagaStatus::Completed => "completed",
                SagaStatus::Compensated => "compensated",
                SagaStatus::Failed => "failed",
                _ => "running",
            };
            if status.as_deref() != Some(want) {
                v.push(format!("{}: saga {id} is {status:?} in its read model, {want} on its owner", q.name));
            }
        }
    }
    drop(logs);

    // `causeway verify` on every pod.
    let bin = crate::cluster::causeway_bin();
    for node in &cluster.nodes {
        match std::process::Command::new(&bin).arg("verify").arg("--data-dir").arg(&node.dir).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => v.push(format!(
                "causeway verify fails on {}:\n{}{}",
                node.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => v.push(format!("causeway verify did not run on {}: {e}", node.name())),
        }
    }
}

/// Whether an `OrderPlaced` payload holds what a place-order body asked for: the customer and
/// every line's SKU and quantity, in order.
fn same_order(stored: &Value, body: &Value) -> bool {
    let lines = |v: &Value| -> Vec<(Value, Value)> {
        v["items"]
            .as_array()
            .map(|items| items.iter().map(|i| (i["sku"].clone(), i["quantity"].clone())).collect())
            .unwrap_or_default()
    };
    stored["customer_id"] == body["customer_id"] && lines(stored) == lines(body)
}
