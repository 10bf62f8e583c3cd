//! The distributed deployment as users run it: one `causeway serve --role ...` process per role
//! plus a real Kafka-protocol broker. Hundreds of orders over every saga path go in through the
//! query node (which forwards commands to their owners through Kafka); meanwhile the inventory
//! node is killed with `kill -9` and restarted, the broker is killed with `kill -9` and
//! restarted, and a malformed record is put on a commands topic. Then every saga has ended, the invariants hold over the query node's copy of every log,
//! the query node holds every owner's events unchanged, and its read models agree with its log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeway_tests::broker::Broker;
use event_store::{EventStore, SledConfig, SledStorage, StoreConfig};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Every event of the order's in `store` records its request's trace context (`context`: the
/// query node's, in the caller's trace), and there are some.
fn assert_traced(store: &EventStore<SledStorage>, order: uuid::Uuid, node: &str, context: &str) {
    let mut seen = 0;
    for e in store.read_all(1) {
        let e = e.expect("read");
        if e.correlation_id == order {
            seen += 1;
            let parent = e.metadata.get("traceparent").map(String::as_str);
            assert_eq!(parent, Some(context), "{node}: {} {}", e.stream_id, e.event_type);
        }
    }
    // The shipping node sees an order only when its payment went through (one in ten is
    // declined in this run).
    assert!(seen > 0 || node == "shipping", "the {node} node recorded nothing of the traced order");
}

/// The topic and `ce_traceparent` of every record of the order on the broker (read to each
/// partition's high watermark by a plain rdkafka consumer).
fn traced_records(bootstrap: &str, order: &str) -> Vec<(String, Option<String>)> {
    causeway_tests::broker::read_everything(bootstrap)
        .into_iter()
        .filter(|r| r.headers.get("ce_correlationid").map(String::as_str) == Some(order))
        .map(|r| (r.topic, r.headers.get("ce_traceparent").cloned()))
        .collect()
}
const ROLES: [&str; 6] = ["order", "inventory", "payment", "shipping", "saga", "query"];

struct Node {
    role: &'static str,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

impl Node {
    fn start(role: &'static str, root: &Path, bootstrap: &str) -> Node {
        let mut n = Node { role, port: free_port(), dir: root.join(role), child: None };
        n.spawn(bootstrap);
        n
    }

    fn spawn(&mut self, bootstrap: &str) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--role", self.role, "--node-id", self.role, "--kafka-partitions", "2"])
            .args(["--kafka-bootstrap", bootstrap, "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log_file());
        if self.role == "payment" {
            cmd.args(["--gateway-decline-rate", "0.1"]);
        }
        if self.role == "saga" {
            // A step that runs out of attempts through the kills and the broker outage
            // compensates, so every saga ends by itself (the run waits for each to end).
            cmd.args(["--on-step-exhausted", "compensate"]);
        }
        if self.role == "query" {
            // Orders go in one after another: one that waits out a broker outage for its answer
            // is answered 202 after a second.
            cmd.args(["--forward-wait-ms", "1000"]);
        }
        self.child = Some(cmd.spawn().expect("spawn a node"));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    fn log_file(&self) -> Stdio {
        let f =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        Stdio::from(f)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let status = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().expect("kill");
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(s) = c.try_wait().expect("wait") {
                    assert!(s.success(), "the {} node exited with {s}", self.role);
                    return;
                }
                assert!(Instant::now() < deadline, "the {} node did not stop", self.role);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn store(&self) -> EventStore<SledStorage> {
        let storage = SledStorage::open(&SledConfig::new(&self.dir)).expect("open a node's store");
        EventStore::open(storage, StoreConfig::default()).expect("store")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what each node said last.
        if std::thread::panicking() {
            // librdkafka's connection errors during the broker outage would fill the tail, so
            // the node's own lines are shown apart from them.
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let ours: Vec<&str> = log.lines().filter(|l| !l.contains("rdkafka")).collect();
            eprintln!("--- {} node, its own last lines:", self.role);
            for line in &ours[ours.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
            let all: Vec<&str> = log.lines().collect();
            eprintln!("--- {} node, last lines:", self.role);
            for line in &all[all.len().saturating_sub(5)..] {
                eprintln!("{line}");
            }
        }
    }
}

async fn wait_ready(client: &reqwest::Client, node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(node.url("/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the {} node did not become ready", node.role);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value, key: &str) -> (u16, Value) {
    let r = client.post(url).header("Idempotency-Key", key).json(&body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_across_one_process_per_role_keep_every_invariant_through_kill_9_and_bad_records() {
    let mut broker = Broker::start();
    let root = tempfile::tempdir().expect("tempdir");
    let bootstrap = broker.bootstrap();
    let mut nodes: HashMap<&str, Node> =
        ROLES.iter().map(|r| (*r, Node::start(r, root.path(), &bootstrap))).collect();
    let client = reqwest::Client::new();
    for r in ROLES {
        wait_ready(&client, &nodes[r]).await;
    }
    let query_port = nodes["query"].port;
    let query = |path: &str| format!("http://127.0.0.1:{query_port}{path}");

    // Stock, through the query node (forwarded to the inventory node). SKU-4 runs out.
    for (i, qty) in [(0, 1000), (1, 1000), (2, 1000), (3, 1000), (4, 5)] {
        let (code, body) = post(
            &client,
            query(&format!("/api/products/SKU-{i}/stock")),
            json!({"quantity": qty}),
            &format!("stock-{i}"),
        )
        .await;
        // The inventory node answered (200), or had not yet when the query node stopped waiting.
        assert!(code == 200 || code == 202, "{code}: {body}");
    }
    // Let the stock arrive before orders that need it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get(query("/api/products/SKU-4/stock")).send().await.expect("get");
        if r.status().is_success() {
            break;
        }
        assert!(Instant::now() < deadline, "stock never reached the query node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One order with a W3C trace context: every event it causes, on every node and on Kafka,
    // records it.
    let order = json!({
        "customer_id": "traced",
        "items": [{"sku": "SKU-0", "quantity": 1, "unit_price_minor": 1500}],
        "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    });
    let r = client
        .post(query("/api/orders"))
        .header("Idempotency-Key", "traced-order")
        .header("traceparent", TRACEPARENT)
        .json(&order)
        .send()
        .await
        .expect("post");
    assert!(r.status().as_u16() == 201 || r.status().as_u16() == 202, "{}", r.status());
    // The query node's own operation in the caller's trace: what every event of the order records.
    let context =
        r.headers().get("traceresponse").and_then(|v| v.to_str().ok()).expect("traceresponse").to_owned();
    assert!(context.starts_with(&TRACEPARENT[..36]) && context != TRACEPARENT, "{context}");
    let placed: Value = r.json().await.expect("json");
    let traced_id = placed["order_id"].as_str().expect("order id").to_owned();

    // A record that is no Causeway event, on a commands topic.
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    producer
        .send(BaseRecord::to("payment_commands").key("garbage").payload("{not a command"))
        .map_err(|(e, _)| e)
        .expect("send garbage");
    producer.flush(Duration::from_secs(10)).expect("flush");

    const ORDERS: usize = 200;
    // Orders go in as clients send them, several at a time; the faults fall among them.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..ORDERS {
        if i == ORDERS * 3 / 4 {
            // The broker dies (kill -9): the query node keeps accepting orders meanwhile.
            broker.kill9();
        }
        if i == ORDERS * 3 / 4 + 20 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker.restart();
        }
        if i == ORDERS / 2 {
            // The inventory node dies mid-flow and comes back.
            let inventory = nodes.get_mut("inventory").expect("node");
            inventory.kill9();
            tokio::time::sleep(Duration::from_millis(500)).await;
            inventory.spawn(&bootstrap);
        }
        let sku = if i % 10 == 9 { 4 } else { i % 4 };
        let country = if i % 10 == 3 { "XX" } else { "DE" };
        let body = json!({
            "customer_id": format!("customer-{}", i % 7),
            "items": [{"sku": format!("SKU-{sku}"), "quantity": 1, "unit_price_minor": 1500}],
            "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": country},
        });
        let permit = in_flight.clone().acquire_owned().await.expect("permit");
        let (client, url, cancel) = (client.clone(), query("/api/orders"), query("/api/orders/"));
        posts.spawn(async move {
            let _permit = permit;
            let (code, placed) = post(&client, url, body, &format!("order-{i}")).await;
            // Placed by the order node (201), or accepted while it was not answering (202: the
            // inventory node's restart and the broker outage fall in this loop).
            assert!(code == 201 || code == 202, "{code}: {placed}");
            let id = placed["order_id"].as_str().expect("order id").to_owned();
            if i % 25 == 7 {
                let (code, body) =
                    post(&client, format!("{cancel}{id}/cancel"), json!({}), &format!("cancel-{i}")).await;
                // Cancelled, accepted, or refused because the saga had confirmed the order already.
                assert!(code == 200 || code == 202 || code == 422, "{code}: {body}");
            }
            id
        });
    }
    let mut orders = Vec::new();
    while let Some(id) = posts.join_next().await {
        orders.push(id.expect("a post"));
    }
    wait_ready(&client, &nodes["inventory"]).await;
    orders.push(traced_id.clone());

    // Every saga ends, as the query node sees it.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut samples: HashMap<String, Value> = HashMap::new();
    for id in &orders {
        loop {
            let r = client.get(query(&format!("/api/sagas/{id}"))).send().await.expect("get saga");
            if r.status().is_success() {
                let saga: Value = r.json().await.expect("json");
                let status = saga["status"].as_str().unwrap_or_default().to_owned();
                if ["completed", "compensated", "failed"].contains(&status.as_str()) {
                    samples.entry(status.clone()).or_insert(saga);
                    *outcomes.entry(status).or_default() += 1;
                    break;
                }
            }
            assert!(Instant::now() < deadline, "saga {id} did not end; so far {outcomes:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // How many complete depends on how the faults fall; every path must be exercised.
    assert!(outcomes.get("completed").copied().unwrap_or(0) > 20, "{outcomes:?}: {samples:#?}");
    assert!(outcomes.get("compensated").copied().unwrap_or(0) > 10, "{outcomes:?}: {samples:#?}");

    // The malformed record is a dead letter of the payment service, which kept going.
    let letters: Value = client
        .get(nodes["payment"].url("/api/dead-letters?consumer=payment-service"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(
        letters.as_array().is_some_and(|l| l
            .iter()
            .any(|d| d["reason"].as_str().is_some_and(|r| r.contains("malformed record")))),
        "{letters}"
    );

    // Let the last replies reach the query node, then stop everything cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in ROLES {
        nodes.get_mut(r).expect("node").terminate();
    }

    let query_store = nodes["query"].store();
    assert!(query_store.verify().expect("verify").is_ok());
    let inv = services::app::invariants::check(&query_store).expect("invariants");
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    assert!(inv.unfinished.is_empty(), "{:?}", inv.unfinished);
    assert_eq!(inv.completed + inv.compensated + inv.failed, ORDERS + 1, "{inv:?}");
    let traced: uuid::Uuid = traced_id.parse().expect("uuid");
    assert_traced(&query_store, traced, "query", &context);
    // The query node holds every owner's events, unchanged.
    for r in ["order", "inventory", "payment", "shipping", "saga"] {
        let owner = nodes[r].store();
        assert!(owner.verify().expect("verify").is_ok(), "{r}'s log");
        assert_traced(&owner, traced, r, &context);
        for e in owner.read_all(1) {
            let e = e.expect("read");
            if e.stream_id.starts_with("deadletters-") {
                continue;
            }
            let copy = query_store
                .find_event(e.event_id)
                .expect("find")
                .unwrap_or_else(|| panic!("{r}: {} missing from the query node", e.event_id));
            assert_eq!(
                (&copy.stream_id, &copy.event_type, &copy.payload),
                (&e.stream_id, &e.event_type, &e.payload)
            );
        }
    }
    // On Kafka, as a plain consumer reads it: the CloudEvents distributed-tracing extension.
    let records = traced_records(&bootstrap, &traced_id);
    for topic in ["order_domain_events", "saga_domain_events", "payment_commands", "replies_domain_events"] {
        assert!(records.iter().any(|(t, _)| t == topic), "no record of the traced order on {topic}");
    }
    for (topic, parent) in &records {
        assert_eq!(parent.as_deref(), Some(context.as_str()), "a record on {topic}");
    }

    // The payment node loses its store and is restored from Kafka, byte for byte.
    let payment = &nodes["payment"];
    let digest = event_store::raw::digest(payment.store().storage()).expect("digest").hex();
    std::fs::remove_dir_all(&payment.dir).expect("lose the store");
    let restore = |force: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "restore",
            "--from-kafka",
            "--node-id",
            "payment",
            "--kafka-bootstrap",
            &bootstrap,
            "--data-dir",
        ])
        .arg(&payment.dir);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("run restore")
    };
    let out = restore(false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains(&digest), "{text}");
    let out = restore(false);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    let out = restore(true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(event_store::raw::digest(payment.store().storage()).expect("digest").hex(), digest);

    // Its read models agree with its log.
    let models = projections::ReadModels::new(query_store.clone());
    use projections::models::{OrderSummaries, PaymentLedger, SagaTimelines, StockLevels};
    let mut problems = projections::verify(&models, &OrderSummaries).expect("verify");
    problems.extend(projections::verify(&models, &StockLevels).expect("verify"));
    problems.extend(projections::verify(&models, &PaymentLedger).expect("verify"));
    problems.extend(projections::verify(&models, &SagaTimelines).expect("verify"));
    assert!(problems.is_empty(), "{problems:?}");
}
