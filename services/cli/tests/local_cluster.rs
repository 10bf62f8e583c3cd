//! `deploy/local/cluster.sh`: starts the broker and two pods of every role (the production
//! overlay's topology), takes orders through both query nodes, runs the two checks the system
//! Causeway implements documents (`POST /api/saga/order` as written, then its events read back
//! from `order_domain_events` by a plain Kafka client), and stops everything cleanly. The nodes
//! run from this build's binary, or from the container image `CAUSEWAY_IMAGE` names (CI builds
//! it with scripts/image-check.sh and sets it).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

/// Nodes of two pods per role.
const NODES: u16 = 12;

/// A run of free consecutive ports, one per node.
fn free_ports() -> u16 {
    for _ in 0..100 {
        // Below Linux's ephemeral range (32768 on): the nodes' own outgoing connections (to
        // Kafka, to each other) cannot take a port a node is about to listen on.
        let base: u16 = 20_000 + rand::random::<u16>() % 12_000;
        if (base..=base + NODES).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_starts_takes_orders_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_ports();
    // The broker's port right after the nodes' (checked free with them).
    let kafka = base + NODES;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local/cluster.sh");
    let run = |action: &str| {
        let mut args = vec![action];
        if action == "start" {
            args.extend(["--replicas", "2"]);
        }
        Command::new("bash")
            .arg(script)
            .args(&args)
            .env("CAUSEWAY_BIN", BIN)
            .env("CLUSTER_DIR", dir.path())
            .env("BASE_PORT", base.to_string())
            .env("KAFKA_PORT", kafka.to_string())
            .env("KAFKA_PARTITIONS", "4")
            .env("RUST_LOG", "warn")
            // The seed's orders name no address: the nodes ship them here.
            .env(
                "CAUSEWAY_DEFAULT_SHIPPING_ADDRESS",
                r#"{"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}"#,
            )
            .output()
            .expect("run cluster.sh")
    };
    let out = run("start");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ready"), "{text}");
    // With CAUSEWAY_IMAGE (as CI sets it) the nodes run from that image, one container each.
    if let Some(image) = std::env::var("CAUSEWAY_IMAGE").ok().filter(|i| !i.is_empty()) {
        assert!(text.contains(&format!("nodes from image {image}")), "{text}");
    }
    // One line per node: role, index, URL, state.
    let status = String::from_utf8_lossy(&run("status").stdout).into_owned();
    let nodes: Vec<Vec<&str>> = status.lines().map(|l| l.split(' ').collect()).collect();
    let ready: Vec<(String, String)> = nodes
        .iter()
        .filter(|n| n.len() == 4 && n[3] == "ready" && n[0] != "broker")
        .map(|n| (n[0].to_owned(), n[1].to_owned()))
        .collect();
    for role in ["order", "inventory", "payment", "shipping", "saga", "query"] {
        for i in ["0", "1"] {
            assert!(ready.contains(&(role.to_owned(), i.to_owned())), "{role} {i} is not ready:\n{status}");
        }
    }
    let queries: Vec<String> = nodes.iter().filter(|n| n[0] == "query").map(|n| n[2].to_owned()).collect();
    assert_eq!(queries.len(), 2, "{status}");

    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/products/SKU-L/stock", queries[0]))
        .json(&json!({"quantity": 5}))
        .send()
        .await;
    assert_eq!(r.expect("stock").status().as_u16(), 200, "the inventory pod that owns SKU-L answered");
    // The stock reached both query nodes' read models before the orders that need it.
    let deadline = Instant::now() + Duration::from_secs(60);
    for q in &queries {
        while !client
            .get(format!("{q}/api/products/SKU-L/stock"))
            .send()
            .await
            .expect("get")
            .status()
            .is_success()
        {
            assert!(Instant::now() < deadline, "the stock never reached {q}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({
            "customer_id": "dana",
            "items": [{"sku": "SKU-L", "quantity": 1, "unit_price_minor": 700}],
            "currency": "EUR",
            "shipping_address": {"line1": "2 Side St", "city": "Paris", "postal_code": "75001", "country": "FR"},
        });
        let r = client
            .post(format!("{}/api/orders", queries[i % 2]))
            .header("Idempotency-Key", format!("lc-{i}"))
            .json(&body)
            .send();
        let placed: Value = r.await.expect("post").json().await.expect("json");
        ids.push(placed["order_id"].as_str().expect("id").to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        for q in &queries {
            loop {
                let r = client.get(format!("{q}/api/orders/{id}")).send().await.expect("get");
                if r.status().is_success() {
                    let order: Value = r.json().await.expect("json");
                    if order["status"] == "confirmed" {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "order {id} was not confirmed on {q}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // The seed's checks, as written: its order request, then its events from the beginning of
    // order_domain_events.
    let r = client
        .post(format!("{}/api/products/prod-1/stock", queries[1]))
        .json(&json!({"quantity": 10}))
        .send()
        .await;
    assert_eq!(r.expect("stock").status().as_u16(), 200);
    let seed = json!({"customer_id": "customer-123", "items": [{"product_id": "prod-1", "quantity": 2}], "total_amount": 100.00});
    let deadline = Instant::now() + Duration::from_secs(60);
    let placed: Value = loop {
        // The stock may not have reached the inventory pod's read side yet: a refused order is
        // compensated, so wait for the stock first on the query node.
        if client
            .get(format!("{}/api/products/prod-1/stock", queries[0]))
            .send()
            .await
            .expect("get")
            .status()
            .is_success()
        {
            let r =
                client.post(format!("{}/api/saga/order", queries[0])).json(&seed).send().await.expect("post");
            let code = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            assert!(code == 201 || code == 202, "{code}: {body}");
            break body;
        }
        assert!(Instant::now() < deadline, "the seed's stock never reached the query node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seed_id = placed["order_id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = client.get(format!("{}/api/sagas/{seed_id}", queries[1])).send().await.expect("get");
        if r.status().is_success() {
            let saga: Value = r.json().await.expect("json");
            if saga["status"] == "completed" {
                break;
            }
            assert!(saga["status"] != "compensated", "the seed's saga compensated: {saga}");
        }
        assert!(Instant::now() < deadline, "the seed's saga did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The order pod's relay may still be delivering OrderConfirmed when the saga has completed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = causeway_tests::broker::read_everything(&format!("127.0.0.1:{kafka}"));
        let seen: Vec<String> = records
            .iter()
            .filter(|r| r.topic == "order_domain_events" && r.key == seed_id)
            .filter_map(|r| r.headers.get("ce_type").cloned())
            .collect();
        if seen == ["OrderPlaced", "OrderConfirmed"] {
            break;
        }
        assert!(Instant::now() < deadline, "the seed order's records on order_domain_events: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = run("stop");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = run("status");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).lines().filter(|l| l.ends_with(" down")).count(),
        NODES as usize + 1
    );
}
