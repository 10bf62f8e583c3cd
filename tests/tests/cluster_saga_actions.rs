//! Operators' actions in the sharded production topology: 2 pods of every role and 2 query pods.
//! Sagas parked in quarantine by a payment gateway that always fails are spread over both saga
//! pods; once the gateway recovers, each is retried through one query pod or the other, which
//! forwards the action through Kafka to the saga pod that owns the order. Every action is
//! answered by its owner (status and version), repeats are idempotent on either query pod, a key
//! reused for another request is refused on either, a refused action carries the saga's state,
//! and every retried saga completes with one audit record.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use causeway_tests::cluster::{Cluster, Topology};
use serde_json::{json, Value};

const TOKEN: &str = "an-admin-token-for-the-cluster-test-0123456789";
const ORDERS: usize = 8;

async fn post(client: &reqwest::Client, url: String, body: Value, key: &str) -> (u16, Value) {
    let r = client
        .post(url)
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An operator's action, sent again with the same key while the query pod answers 202 (the
/// owner's answer did not come within its wait: a slow machine).
async fn act(client: &reqwest::Client, url: String, body: Value, key: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, answer) = post(client, url.clone(), body.clone(), key).await;
        if code != 202 || Instant::now() > deadline {
            return (code, answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client.get(url).send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the saga of `id`, as `base` sees it, is in one of `states`; returns it.
async fn saga_in(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    states: &[&str],
    cluster: &Cluster,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, saga) = get(client, format!("{base}/api/sagas/{id}")).await;
        if code == 200 && states.contains(&saga["status"].as_str().unwrap_or_default()) {
            return saga;
        }
        assert!(
            Instant::now() < deadline,
            "saga {id} never reached {states:?} on {base}; last {code}: {saga}\n{}",
            cluster.dump_logs(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn operators_actions_reach_the_saga_pod_that_owns_each_order_through_either_query_pod() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let topology = Topology {
        payment_args: vec!["--gateway-failure-rate".into(), "1.0".into()],
        node_args: ["--admin-token", TOKEN, "--step-timeout-ms", "400", "--step-attempts", "2"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        ..Topology::default()
    };
    let cluster = Cluster::start(&topology).await;
    let client = reqwest::Client::new();
    let queries: Vec<String> = cluster.queries().map(|q| q.url("")).collect();
    let sagas: Vec<String> = cluster.pods("saga").map(|p| p.url("")).collect();

    let (code, body) =
        post(&client, format!("{}/api/products/SKU-A/stock", queries[0]), json!({"quantity": 100}), "stock")
            .await;
    assert!(code == 200 || code == 202, "{code}: {body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&client, format!("{}/api/products/SKU-A/stock", queries[1])).await.0 != 200 {
        assert!(Instant::now() < deadline, "the stock never reached the query pods");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Orders whose payments fail until their steps run out of attempts: parked in quarantine.
    let mut orders = Vec::new();
    for i in 0..ORDERS {
        let body = json!({
            "customer_id": format!("customer-{i}"),
            "items": [{"sku": "SKU-A", "quantity": 1, "unit_price_minor": 1000}],
            "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        });
        let (code, placed) =
            post(&client, format!("{}/api/orders", queries[i % 2]), body, &format!("o-{i}")).await;
        assert!(code == 201 || code == 202, "{code}: {placed}");
        orders.push(placed["order_id"].as_str().expect("order id").to_owned());
    }
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for id in &orders {
        saga_in(&client, &queries[0], id, &["quarantined"], &cluster).await;
        // The saga pod that owns it serves its saga; the other pod holds none of it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let holders = loop {
            let mut holders = Vec::new();
            for (p, base) in sagas.iter().enumerate() {
                if get(&client, format!("{base}/api/sagas/{id}")).await.0 == 200 {
                    holders.push(p);
                }
            }
            if !holders.is_empty() || Instant::now() > deadline {
                break holders;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(holders.len(), 1, "saga {id} held by saga pods {holders:?}");
        owner.insert(id.clone(), holders[0]);
    }
    let used: BTreeSet<usize> = owner.values().copied().collect();
    assert_eq!(used.len(), 2, "the orders' sagas should fall on both saga pods: {owner:?}");

    // A pod of another role takes no actions, and says where they go.
    let order_pod = cluster.pods("order").next().expect("an order pod").url("");
    let (code, body) = post(
        &client,
        format!("{order_pod}/api/admin/sagas/{}/retry", orders[0]),
        json!({"operator": "ops"}),
        "x",
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("query node"), "{body}");
    // A compensation marked done needs a reason: refused before it is forwarded.
    let (code, body) = post(
        &client,
        format!("{}/api/admin/sagas/{}/mark-compensation-done", queries[1], orders[0]),
        json!({"operator": "ops", "expected_version": 1}),
        "m",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    // An order nobody placed: the owner says so.
    let unknown = uuid::Uuid::now_v7();
    let (code, body) = act(
        &client,
        format!("{}/api/admin/sagas/{unknown}/retry", queries[0]),
        json!({"operator": "ops"}),
        "u",
    )
    .await;
    assert_eq!(code, 404, "{body}");

    // The gateway recovers on every payment pod; each saga is retried through either query pod.
    for pod in cluster.pods("payment") {
        let r = client
            .put(pod.url("/api/admin/simulator/gateway"))
            .bearer_auth(TOKEN)
            .json(&json!({"failure_rate": 0.0}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 200);
    }
    for (i, id) in orders.iter().enumerate() {
        let url = |q: usize| format!("{}/api/admin/sagas/{id}/retry", queries[q]);
        let body = json!({"operator": "ops@example.com", "reason": "the gateway is back"});
        let key = format!("retry-{i}");
        let (code, first) = post(&client, url(i % 2), body.clone(), &key).await;
        let first_answered = code == 200;
        let (code, done) =
            if first_answered { (code, first) } else { act(&client, url(i % 2), body.clone(), &key).await };
        assert_eq!(code, 200, "retry of {id} through query pod {}: {done}", i % 2);
        if first_answered {
            assert_eq!(done["repeated"], json!(false), "{done}");
        }
        assert!(done["version"].as_u64().is_some(), "{done}");
        // The same request again, to either query pod: carried out before, on the same owner.
        for q in [i % 2, (i + 1) % 2] {
            let (code, again) = act(&client, url(q), body.clone(), &key).await;
            assert_eq!(code, 200, "{again}");
            assert_eq!(
                (&again["action_id"], &again["repeated"]),
                (&done["action_id"], &json!(true)),
                "{again}"
            );
        }
        // The same key for another request: refused by the owner, whichever pod forwards it.
        let changed = json!({"operator": "someone-else", "reason": "the gateway is back"});
        for q in [0, 1] {
            let (code, refused) = act(&client, url(q), changed.clone(), &key).await;
            assert_eq!(code, 409, "{refused}");
            assert!(
                refused["error"]["message"].as_str().is_some_and(|m| m.contains("Idempotency-Key")),
                "{refused}"
            );
        }
    }

    // Every retried saga completes, on its owner and as both query pods see it; the audit record
    // names the operator once.
    for id in &orders {
        saga_in(&client, &sagas[owner[id]], id, &["completed"], &cluster).await;
        for q in &queries {
            let saga = saga_in(&client, q, id, &["completed"], &cluster).await;
            let acted: Vec<&Value> = saga["steps"]
                .as_array()
                .expect("steps")
                .iter()
                .filter(|s| s["event"] == "OperatorActed")
                .collect();
            assert_eq!(acted.len(), 1, "{saga}");
            let detail = acted[0]["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("retry") && detail.contains("ops@example.com"), "{detail}");
        }
    }

    // A completed saga cannot be compensated: the refusal carries its state and version.
    let id = &orders[0];
    let (_, saga) = get(&client, format!("{}/api/sagas/{id}", queries[1])).await;
    let version = saga["version"].as_u64().expect("version");
    let (code, body) = act(
        &client,
        format!("{}/api/admin/sagas/{id}/compensate", queries[1]),
        json!({"operator": "ops", "reason": "too late", "expected_version": version}),
        "compensate-0",
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!((&body["status"], body["version"].as_u64()), (&json!("completed"), Some(version)), "{body}");
    // A stale version is refused before the state is looked at.
    let (code, body) = act(
        &client,
        format!("{}/api/admin/sagas/{id}/compensate", queries[0]),
        json!({"operator": "ops", "reason": "stale", "expected_version": version - 1}),
        "compensate-1",
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["version"].as_u64(), Some(version), "{body}");
}
