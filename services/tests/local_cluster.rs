//! `deploy/local/cluster.sh`: starts the broker and one process per role, takes orders through
//! the query node, and stops everything cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

/// A run of 6 free consecutive ports.
fn free_ports() -> u16 {
    for _ in 0..100 {
        let base: u16 = 20_000 + rand::random::<u16>() % 30_000;
        if (base..base + 6).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_script_starts_takes_orders_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_ports();
    let kafka = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh");
    let run = |action: &str| {
        Command::new("bash")
            .arg(script)
            .arg(action)
            .env("CAUSEWAY_BIN", BIN)
            .env("CLUSTER_DIR", dir.path())
            .env("BASE_PORT", base.to_string())
            .env("KAFKA_PORT", kafka.to_string())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run cluster.sh")
    };
    let out = run("start");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ready"), "{text}");
    let status = run("status");
    assert_eq!(String::from_utf8_lossy(&status.stdout).matches(": ready on").count(), 6);

    let query = format!("http://127.0.0.1:{}", base + 5);
    let client = reqwest::Client::new();
    let r =
        client.post(format!("{query}/api/products/SKU-L/stock")).json(&json!({"quantity": 5})).send().await;
    assert_eq!(r.expect("stock").status().as_u16(), 202);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({
            "customer_id": "dana",
            "items": [{"sku": "SKU-L", "quantity": 1, "unit_price_minor": 700}],
            "currency": "EUR",
            "shipping_address": {"line1": "2 Side St", "city": "Paris", "postal_code": "75001", "country": "FR"},
        });
        let r = client
            .post(format!("{query}/api/orders"))
            .header("Idempotency-Key", format!("lc-{i}"))
            .json(&body)
            .send();
        let placed: Value = r.await.expect("post").json().await.expect("json");
        ids.push(placed["order_id"].as_str().expect("id").to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        loop {
            let r = client.get(format!("{query}/api/orders/{id}")).send().await.expect("get");
            if r.status().is_success() {
                let order: Value = r.json().await.expect("json");
                if order["status"] == "confirmed" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "order {id} was not confirmed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let out = run("stop");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = run("status");
    assert_eq!(String::from_utf8_lossy(&status.stdout).matches(": down").count(), 7);
}
