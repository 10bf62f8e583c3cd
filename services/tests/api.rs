//! The REST API through the router (`oneshot`): every route, including bad input.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use event_store::{EventStore, MemoryStorage, StoreConfig};
use http_body_util::BodyExt;
use projections::models::{OrderSummaries, PaymentLedger, SagaTimelines, StockLevels};
use serde_json::{json, Value};
use services::api::{app, ApiState};
use services::gateway::{SimulatedGateway, SimulatedGatewayConfig};
use services::runtime::{Runtime, RuntimeConfig};
use tower::ServiceExt;

type Rt = Runtime<MemoryStorage, SimulatedGateway>;

/// A stop signal that never fires (its sender lives as long as the test binary).
fn never_stopping() -> tokio::sync::watch::Receiver<bool> {
    static SENDER: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();
    SENDER.get_or_init(|| tokio::sync::watch::channel(false).0).subscribe()
}

/// One global Prometheus recorder for this test binary.
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("recorder")
        })
        .clone()
}

fn node() -> (Rt, axum::Router) {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = Runtime::start(
        store.clone(),
        SimulatedGateway::new(SimulatedGatewayConfig::default()),
        RuntimeConfig::default(),
    )
    .expect("start");
    let state = ApiState {
        store,
        models: rt.models().clone(),
        ready: Arc::new(AtomicBool::new(true)),
        metrics: Some(recorder()),
        stopping: never_stopping(),
    };
    (rt, app(state))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    raw(app, req).await
}

async fn raw(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn order_body(sku: &str, qty: u32, country: &str) -> Value {
    json!({
        "customer_id": "alice",
        "items": [{"sku": sku, "quantity": qty, "unit_price_minor": 1999}],
        "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": country}
    })
}

async fn caught_up(rt: &Rt) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lagging = [OrderSummaries::NAME, StockLevels::NAME, PaymentLedger::NAME, SagaTimelines::NAME]
            .iter()
            .any(|n| rt.models().lag(n).expect("lag") > 0);
        if !lagging {
            return;
        }
        assert!(Instant::now() < deadline, "read models did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_status(app: &axum::Router, rt: &Rt, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        caught_up(rt).await;
        let (code, order) = call(app, "GET", &format!("/api/orders/{id}"), None, None).await;
        if code == StatusCode::OK && order["status"] == status {
            return order;
        }
        assert!(Instant::now() < deadline, "order {id} never became {status}: {order}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_queries_end_to_end() {
    let (rt, app) = node();
    assert_eq!(call(&app, "GET", "/healthz", None, None).await.0, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/readyz", None, None).await.0, StatusCode::OK);
    let (code, body) =
        call(&app, "POST", "/api/products/SKU-1/stock", Some(json!({"quantity": 10})), None).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Place an order; the same Idempotency-Key returns the same order.
    let (code, placed) =
        call(&app, "POST", "/api/orders", Some(order_body("SKU-1", 2, "DE")), Some("key-1")).await;
    assert_eq!(code, StatusCode::CREATED, "{placed}");
    let (code, again) =
        call(&app, "POST", "/api/orders", Some(order_body("SKU-1", 2, "DE")), Some("key-1")).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(again["order_id"], placed["order_id"]);
    // The same key for a different request is a conflict.
    let (code, err) =
        call(&app, "POST", "/api/orders", Some(order_body("SKU-1", 3, "DE")), Some("key-1")).await;
    assert_eq!((code, err["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{err}");

    let id = placed["order_id"].as_str().expect("id").to_owned();
    let order = wait_status(&app, &rt, &id, "confirmed").await;
    assert_eq!(order["total"], 3998);
    assert!(order["tracking_number"].as_str().is_some_and(|t| t.starts_with("TRK-")));
    let (code, saga) = call(&app, "GET", &format!("/api/sagas/{id}"), None, None).await;
    assert_eq!((code, saga["status"].as_str()), (StatusCode::OK, Some("completed")));
    let (code, money) = call(&app, "GET", &format!("/api/orders/{id}/payments"), None, None).await;
    assert_eq!((code, money["captured"].as_u64()), (StatusCode::OK, Some(3998)));
    let (code, stock) = call(&app, "GET", "/api/products/SKU-1/stock", None, None).await;
    assert_eq!(
        (code, stock["available"].as_u64(), stock["shipped"].as_u64()),
        (StatusCode::OK, Some(8), Some(2))
    );

    // A second order fails (undeliverable) and is compensated; a third is cancelled... or not.
    let (_, failed) = call(&app, "POST", "/api/orders", Some(order_body("SKU-1", 1, "XX")), None).await;
    let failed = failed["order_id"].as_str().expect("id").to_owned();
    wait_status(&app, &rt, &failed, "cancelled").await;
    let (code, err) = call(&app, "POST", &format!("/api/orders/{id}/cancel"), None, None).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("rejected")),
        "{err}"
    );

    // Customer history, filtered and paginated.
    let (code, page) = call(&app, "GET", "/api/customers/alice/orders?limit=1", None, None).await;
    assert_eq!(code, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let next = page["next"].as_str().expect("a next cursor").to_owned();
    let (_, page2) =
        call(&app, "GET", &format!("/api/customers/alice/orders?limit=1&after={next}"), None, None).await;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(page2["items"][0]["order_id"], page["items"][0]["order_id"]);
    let (_, cancelled) = call(&app, "GET", "/api/customers/alice/orders?status=cancelled", None, None).await;
    assert_eq!(cancelled["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(cancelled["items"][0]["order_id"].as_str(), Some(failed.as_str()));

    // Events: a stream, the log from a position and from a time.
    let (code, events) = call(&app, "GET", &format!("/api/streams/order-{id}/events"), None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        events.as_array().map(|a| a.iter().map(|e| e["event_type"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("OrderPlaced"), json!("OrderConfirmed")])
    );
    let (_, log) = call(&app, "GET", "/api/events?from_position=2&limit=3", None, None).await;
    assert_eq!(
        log.as_array().map(|a| a.iter().map(|e| e["position"].as_u64().unwrap_or(0)).collect::<Vec<_>>()),
        Some(vec![2, 3, 4])
    );
    let t = events[1]["recorded_at"].as_str().expect("time").to_owned();
    let (code, from_t) = call(&app, "GET", &format!("/api/events?from_time={t}&limit=1"), None, None).await;
    assert_eq!(code, StatusCode::OK, "{from_t}");
    assert!(from_t[0]["position"].as_u64() <= events[1]["position"].as_u64());
    let (code, letters) = call(&app, "GET", "/api/dead-letters", None, None).await;
    assert_eq!((code, letters.as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_4xx() {
    let (rt, app) = node();
    let id = "0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00";
    let cases: Vec<(&str, String, Option<Value>, StatusCode, &str)> = vec![
        ("GET", "/api/orders/not-a-uuid".into(), None, StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", format!("/api/orders/{id}"), None, StatusCode::NOT_FOUND, "not_found"),
        ("GET", format!("/api/sagas/{id}"), None, StatusCode::NOT_FOUND, "not_found"),
        ("GET", format!("/api/orders/{id}/payments"), None, StatusCode::NOT_FOUND, "not_found"),
        ("GET", "/api/products/NOPE/stock".into(), None, StatusCode::NOT_FOUND, "not_found"),
        ("POST", format!("/api/orders/{id}/cancel"), None, StatusCode::NOT_FOUND, "not_found"),
        ("GET", "/api/nothing".into(), None, StatusCode::NOT_FOUND, "not_found"),
        (
            "POST",
            "/api/orders".into(),
            Some(json!({"customer_id": "a"})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/orders".into(),
            Some(
                json!({"customer_id": "a", "items": [], "currency": "EUR", "shipping_address": null, "extra": 1}),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/orders".into(),
            Some(
                json!({"customer_id": "a", "items": [{"sku": "A", "quantity": -1, "unit_price_minor": 1}], "currency": "EUR", "shipping_address": null}),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/orders".into(),
            Some(json!({"customer_id": "a", "items": [], "currency": "EUR", "shipping_address": null})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
        (
            "POST",
            "/api/orders".into(),
            Some(
                json!({"customer_id": "a", "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 1}], "currency": "euro", "shipping_address": null}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
        (
            "POST",
            "/api/orders".into(),
            Some(json!({"customer_id": "", "items": [], "currency": "EUR", "shipping_address": null})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/api/products/SKU-1/stock".into(),
            Some(json!({"quantity": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
        (
            "POST",
            "/api/products/bad%20sku/stock".into(),
            Some(json!({"quantity": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
        ("GET", "/api/customers/alice/orders?limit=0".into(), None, StatusCode::BAD_REQUEST, "bad_request"),
        (
            "GET",
            "/api/customers/alice/orders?status=lost".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("GET", "/api/events?from_time=noon".into(), None, StatusCode::BAD_REQUEST, "bad_request"),
        (
            "GET",
            "/api/events?from_position=1&from_time=2026-01-01T00:00:00Z".into(),
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("GET", "/api/events?from_position=-3".into(), None, StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/api/streams/bad%20id/events".into(), None, StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (method, uri, body, status, code) in cases {
        let (got, err) = call(&app, method, &uri, body.clone(), None).await;
        assert_eq!(got, status, "{method} {uri} {body:?}: {err}");
        assert_eq!(err["error"]["code"].as_str(), Some(code), "{method} {uri}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Malformed JSON and a wrong content type.
    let req = Request::builder()
        .method("POST")
        .uri("/api/orders")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .expect("req");
    let (code, err) = raw(&app, req).await;
    assert_eq!((code, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    let req = Request::builder().method("POST").uri("/api/orders").body(Body::from("{}")).expect("req");
    let (code, err) = raw(&app, req).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
    );
    // An oversized body.
    let big = format!("{{\"customer_id\": \"{}\"}}", "x".repeat(100 * 1024));
    let req = Request::builder()
        .method("POST")
        .uri("/api/orders")
        .header("content-type", "application/json")
        .body(Body::from(big))
        .expect("req");
    let (code, err) = raw(&app, req).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_live_feed() {
    let (rt, app) = node();
    call(&app, "POST", "/api/products/SKU-9/stock", Some(json!({"quantity": 3})), None).await;
    call(&app, "GET", "/api/orders/not-a-uuid", None, None).await;
    // Prometheus text with HTTP, store and projection metrics.
    let req = Request::builder().uri("/metrics").body(Body::empty()).expect("req");
    let resp = app.clone().oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let text =
        String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8");
    for needle in [
        "causeway_http_requests_total",
        "status=\"400\"",
        "causeway_projection_lag_events",
        "projection=\"order-summaries\"",
        "causeway_store_events_appended_total",
        "causeway_store_head_position",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics:\n{text}");
    }
    // The live feed: catch-up from position 1, then new events as they are appended.
    let req = Request::builder().uri("/api/events/live?from_position=1").body(Body::empty()).expect("req");
    let resp = app.clone().oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut appended = false;
    while !(seen.contains("id: 1\n") && seen.contains("event: StockAdded") && seen.contains("SKU-10")) {
        if !appended && seen.contains("id: 1\n") {
            call(&app, "POST", "/api/products/SKU-10/stock", Some(json!({"quantity": 1})), None).await;
            appended = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, body.frame())
            .await
            .expect("feed kept up")
            .expect("frame")
            .expect("ok");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let (code, err) = call(&app, "GET", "/api/events/live?from_position=x", None, None).await;
    assert_eq!((code, err["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    rt.shutdown().await.expect("shutdown");
}
