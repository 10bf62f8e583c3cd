//! One trace per order across the production topology, exported over OTLP: 2 pods of every
//! role and a query pod, each sending its spans to a collector the test runs. An order placed
//! with a given `traceparent` yields spans on every role's pod (the request, the appends, the
//! relay's records, the consumers and each handler attempt, the saga's steps), all in that trace
//! and all one tree: the request's span is the child of the caller's, and every other span's
//! parent is a span of the tree. And a node whose collector is down, or takes connections and
//! never answers, serves as before and stops at once.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use causeway_tests::cluster::{causeway_bin, free_port, Cluster, Topology};
use causeway_tests::otlp::{Collector, Span};
use serde_json::{json, Value};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn order_body() -> Value {
    json!({
        "customer_id": "customer-traced",
        "items": [{"sku": "SKU-T", "quantity": 1, "unit_price_minor": 1000}],
        "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    })
}

/// What is wrong with `spans` as the one tree of the traced order (`None`: nothing).
fn tree_fault(spans: &[Span], order: &str) -> Option<String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == CALLER).collect();
    if roots.len() != 1 || roots[0].name != "POST /api/orders" || !roots[0].instance.starts_with("query") {
        return Some(format!("the caller's span should have one child, the query pod's request: {roots:?}"));
    }
    if let Some(s) =
        spans.iter().find(|s| s.parent_span_id != CALLER && !ids.contains(s.parent_span_id.as_str()))
    {
        return Some(format!("a span whose parent is not in the tree (yet): {s:?}"));
    }
    // Every role's pod did its part, in its own spans.
    let by_role = |name: &str, role: &str| {
        spans.iter().any(|s| s.name == name && s.instance.starts_with(&format!("{role}-")))
    };
    for role in ["order", "inventory", "payment", "shipping", "saga"] {
        for name in ["consume", "handle", "store.append", "relay.publish"] {
            if !by_role(name, role) {
                return Some(format!("no {name} span from a {role} pod"));
            }
        }
    }
    if !by_role("saga.step", "saga") {
        return Some("no saga.step span from a saga pod".into());
    }
    // The order is named on the work that is about it.
    for s in spans
        .iter()
        .filter(|s| ["consume", "handle", "saga.step", "relay.publish"].contains(&s.name.as_str()))
    {
        if s.attributes.get("order_id").map(String::as_str) != Some(order)
            || s.attributes.get("correlation_id").map(String::as_str) != Some(order)
        {
            return Some(format!("a span without the order's id: {s:?}"));
        }
    }
    let waits = spans
        .iter()
        .filter(|s| s.name == "store.append")
        .all(|s| s.attributes.contains_key("commit_wait_us"));
    if !waits {
        return Some("an append span without its group-commit wait".into());
    }
    None
}

#[test]
fn the_spans_of_one_order_form_one_tree_across_every_roles_pods() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(one_tree());
}

async fn one_tree() {
    let collector = Collector::start().await;
    let topology = Topology {
        queries: 1,
        node_args: vec![
            "--otlp-endpoint".into(),
            collector.endpoint(),
            "--otlp-protocol".into(),
            "http/json".into(),
        ],
        ..Topology::default()
    };
    let cluster = Cluster::start(&topology).await;
    let client = reqwest::Client::new();
    let query = cluster.queries().next().expect("a query pod").url("");

    let stock = client
        .post(format!("{query}/api/products/SKU-T/stock"))
        .header("Idempotency-Key", "stock-t")
        .json(&json!({"quantity": 10}))
        .send()
        .await
        .expect("stock");
    assert!(stock.status().is_success(), "{}", stock.status());
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{query}/api/products/SKU-T/stock"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the stock never reached the query pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let placed = client
        .post(format!("{query}/api/orders"))
        .header("Idempotency-Key", "traced-order")
        .header("traceparent", format!("00-{TRACE}-{CALLER}-01"))
        .json(&order_body())
        .send()
        .await
        .expect("place");
    let code = placed.status().as_u16();
    let answered = placed.headers().get("traceresponse").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = placed.json().await.unwrap_or(Value::Null);
    assert!(code == 201 || code == 202, "{code}: {body}");
    let order = body["order_id"].as_str().expect("order id").to_owned();
    // The answer names the trace and the query pod's own span, not the caller's.
    let answered = answered.expect("a traceresponse");
    assert!(answered.starts_with(&format!("00-{TRACE}-")) && !answered.contains(CALLER), "{answered}");

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = client.get(format!("{query}/api/sagas/{order}")).send().await.expect("saga");
        let saga: Value =
            if r.status().is_success() { r.json().await.unwrap_or(Value::Null) } else { Value::Null };
        if saga["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the traced saga did not complete: {saga}\n{}",
            cluster.dump_logs(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Spans arrive in batches from each pod, children sometimes before their parents.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let spans = collector.trace(TRACE);
        match tree_fault(&spans, &order) {
            None => break spans,
            Some(fault) => {
                let by_name: BTreeMap<(String, String), usize> =
                    spans.iter().fold(BTreeMap::new(), |mut m, s| {
                        *m.entry((s.instance.clone(), s.name.clone())).or_default() += 1;
                        m
                    });
                if Instant::now() > deadline {
                    let all: Vec<String> = collector
                        .spans()
                        .iter()
                        .filter(|s| s.name != "store.append" || s.trace_id == TRACE)
                        .map(|s| {
                            format!(
                                "{} {} {} <- {} {}",
                                s.instance, s.trace_id, s.span_id, s.parent_span_id, s.name
                            )
                        })
                        .collect();
                    panic!(
                        "{fault}\nreceived: {by_name:?}\nall spans:\n{}\n{}",
                        all.join("\n"),
                        cluster.dump_logs(15)
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let request = spans.iter().find(|s| s.parent_span_id == CALLER).expect("the request's span");
    assert!(answered.contains(&request.span_id), "the traceresponse names the request's span");
    let pods: BTreeSet<&str> = spans.iter().map(|s| s.instance.as_str()).collect();
    assert!(pods.len() >= 6, "spans from every role: {pods:?}");
    // A relay batch is its own trace and links to the records it sent.
    let published: BTreeSet<&str> =
        spans.iter().filter(|s| s.name == "relay.publish").map(|s| s.span_id.as_str()).collect();
    let linked = collector
        .spans()
        .iter()
        .filter(|s| s.name == "relay.batch")
        .any(|s| s.trace_id != TRACE && s.links.iter().any(|l| published.contains(l.as_str())));
    assert!(linked, "no relay batch links to the order's records");
    assert!(collector.refused().is_empty(), "the collector could not read: {:?}", collector.refused());
}

/// A collector that takes connections and never answers.
fn silent_collector() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    (l, url)
}

#[test]
fn a_node_whose_collector_is_down_or_silent_serves_orders_and_stops_at_once() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let (silent, silent_url) = silent_collector();
        // Keeps accepting (the backlog) and never reads or answers.
        let _held = std::thread::spawn(move || {
            let mut open = Vec::new();
            for s in silent.incoming().flatten() {
                open.push(s);
            }
        });
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        }; // closed: connections are refused
        for endpoint in [down, silent_url] {
            let dir = tempfile::tempdir().expect("dir");
            let port = free_port();
            let mut child = Command::new(causeway_bin())
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--otlp-endpoint", &endpoint])
                .arg("--data-dir")
                .arg(dir.path())
                .env("OTEL_BSP_SCHEDULE_DELAY", "50")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            let client = reqwest::Client::new();
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while client.get(format!("{base}/readyz")).send().await.map(|r| r.status().is_success()).ok()
                != Some(true)
            {
                assert!(Instant::now() < deadline, "the node did not become ready ({endpoint})");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            client
                .post(format!("{base}/api/products/SKU-T/stock"))
                .json(&json!({"quantity": 100}))
                .send()
                .await
                .expect("stock");
            // Enough orders to fill export batches many times over while nothing is exported.
            let mut ids = Vec::new();
            for i in 0..40 {
                let r = client
                    .post(format!("{base}/api/orders"))
                    .header("Idempotency-Key", format!("o-{i}"))
                    .json(&order_body())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("the node answers while its collector does not");
                assert_eq!(r.status().as_u16(), 201, "{endpoint}");
                let v: Value = r.json().await.expect("json");
                ids.push(v["order_id"].as_str().expect("id").to_owned());
            }
            for id in &ids {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let saga: Value = client
                        .get(format!("{base}/api/sagas/{id}"))
                        .send()
                        .await
                        .expect("saga")
                        .json()
                        .await
                        .unwrap_or(Value::Null);
                    if saga["status"] == "completed" {
                        break;
                    }
                    assert!(Instant::now() < deadline, "saga {id} did not complete ({endpoint}): {saga}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let stopping = Instant::now();
            assert!(Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill")
                .success());
            let status = loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                assert!(stopping.elapsed() < Duration::from_secs(30), "the node did not stop ({endpoint})");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "{endpoint}: {status}");
            // The exit waits for the exporter at most a few seconds, however the collector is.
            assert!(stopping.elapsed() < Duration::from_secs(15), "stopping took {:?}", stopping.elapsed());
        }
    });
}
