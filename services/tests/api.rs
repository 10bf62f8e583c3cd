//! The REST API through the router (`oneshot`): every route, including bad input.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use event_store::{EventStore, MemoryStorage, StoreConfig};
use http_body_util::BodyExt;
use projections::models::{OrderSummaries, PaymentLedger, SagaTimelines, StockLevels};
use serde_json::{json, Value};
use services::app::gateway::{SimulatedGateway, SimulatedGatewayConfig};
use services::http::{app, ApiState};
use services::node::{Runtime, RuntimeConfig};
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

const TOKEN: &str = "test-admin-token-0123456789";

fn node() -> (Rt, axum::Router) {
    node_with_admin(true)
}

fn node_with_admin(admin: bool) -> (Rt, axum::Router) {
    node_with(admin, None)
}

fn node_with(admin: bool, read_token: Option<&str>) -> (Rt, axum::Router) {
    node_configured(admin, read_token, RuntimeConfig::default())
}

fn node_configured(admin: bool, read_token: Option<&str>, config: RuntimeConfig) -> (Rt, axum::Router) {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let rt = Runtime::start(store.clone(), SimulatedGateway::new(SimulatedGatewayConfig::default()), config)
        .expect("start");
    let state = ApiState {
        store,
        models: rt.models().clone(),
        ready: rt.readiness().clone(),
        metrics: Some(recorder()),
        stopping: never_stopping(),
        admin: admin.then(|| services::http::AdminApi {
            token: TOKEN.into(),
            redrive: rt.redriver(),
            act: rt.actor(),
            simulator: Some(rt.simulator()),
        }),
        commands: services::http::CommandRoute::Local,
        admission: rt.admission().cloned(),
        feeds: services::http::LiveFeeds::default(),
        limits: services::http::HttpLimits::default(),
        read_token: read_token.map(str::to_owned),
        compat: services::http::CompatDefaults {
            currency: None,
            shipping_address: Some(aggregates::shipping::Address {
                line1: "1 Main St".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            }),
        },
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
        // An error is classified by its type, never by its words: a currency that reads like
        // another error's message is still just a bad currency.
        (
            "POST",
            "/api/orders".into(),
            Some(
                json!({"customer_id": "a", "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 1}], "currency": "already exists", "shipping_address": null}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
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

async fn admin_call(app: &axum::Router, uri: &str, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder().method("POST").uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    raw(app, req.body(Body::from(body.to_string())).expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_and_replay_and_redrive_on_the_running_node() {
    let (rt, app) = node();
    let replay = "/api/admin/projections/order-summaries/replay";
    // No token, a wrong one, another scheme: 401.
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let (code, err) = admin_call(&app, replay, json!({}), token).await;
        assert_eq!((code, err["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    }
    // A node without a token refuses every admin call.
    let (other, closed) = node_with_admin(false);
    let (code, err) = admin_call(&closed, replay, json!({}), Some(TOKEN)).await;
    assert_eq!((code, err["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    other.shutdown().await.expect("shutdown");

    call(&app, "POST", "/api/products/SKU-1/stock", Some(json!({"quantity": 10})), None).await;
    let (_, placed) = call(&app, "POST", "/api/orders", Some(order_body("SKU-1", 1, "DE")), None).await;
    let id = placed["order_id"].as_str().expect("id").to_owned();
    wait_status(&app, &rt, &id, "confirmed").await;
    let (_, before) = call(&app, "GET", &format!("/api/orders/{id}"), None, None).await;

    // Rebuild, back up, replay from a time (from that backup), as-of: all while serving.
    let (code, out) = admin_call(&app, replay, json!({}), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{out}");
    assert_eq!(out[0]["generation"], 1);
    let (code, out) = admin_call(&app, replay, json!({"backup": true}), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{out}");
    let backed_up = out[0]["checkpoint"].as_u64().expect("checkpoint");
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("t");
    let (code, out) = admin_call(&app, replay, json!({"from": now}), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{out}");
    assert_eq!((out[0]["generation"].as_u64(), out[0]["from_backup"].as_u64()), (Some(2), Some(backed_up)));
    let (code, out) = admin_call(&app, replay, json!({"as_of": now}), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{out}");
    assert!(out[0]["read_model"].as_str().is_some_and(|n| n.starts_with("order-summaries@")));
    let (code, after) = call(&app, "GET", &format!("/api/orders/{id}"), None, None).await;
    assert_eq!((code, &after), (StatusCode::OK, &before), "the replayed model serves the same order");
    let (code, out) = admin_call(&app, "/api/admin/projections/all/replay", json!({}), Some(TOKEN)).await;
    assert_eq!((code, out.as_array().map(Vec::len)), (StatusCode::OK, Some(5)), "{out}");

    // Bad admin input.
    for (uri, body, status) in [
        (replay, json!({"from": "yesterday"}), StatusCode::BAD_REQUEST),
        (replay, json!({"from": now, "as_of": now}), StatusCode::BAD_REQUEST),
        (replay, json!({"rebuild": true}), StatusCode::BAD_REQUEST),
        ("/api/admin/projections/nope/replay", json!({}), StatusCode::NOT_FOUND),
        (
            "/api/admin/dead-letters/nobody/0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00/redrive",
            json!({}),
            StatusCode::NOT_FOUND,
        ),
        ("/api/admin/dead-letters/saga-manager/not-a-uuid/redrive", json!({}), StatusCode::BAD_REQUEST),
        (
            "/api/admin/dead-letters/saga-manager/0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00/redrive",
            json!({}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (code, err) = admin_call(&app, uri, body.clone(), Some(TOKEN)).await;
        assert_eq!(code, status, "{uri} {body}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A poison command: its dead letter re-driven through the node fails again and stays open.
    let bad = event_store::NewEvent::json("ReserveStock", b"{not json".to_vec())
        .with_metadata(services::app::messages::COMMAND_ID, uuid::Uuid::now_v7().to_string());
    let bad_id = bad.event_id;
    rt.store()
        .append_to(
            &services::app::messages::commands_stream(
                aggregates::saga::Service::Inventory,
                aggregates::OrderId(uuid::Uuid::now_v7()),
            ),
            event_store::ExpectedVersion::Any,
            vec![bad],
        )
        .await
        .expect("append");
    let deadline = Instant::now() + Duration::from_secs(10);
    while services::app::consumer::list_dead_letters(rt.store(), "inventory-service")
        .expect("letters")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let uri = format!("/api/admin/dead-letters/inventory-service/{bad_id}/redrive");
    let (code, err) = admin_call(&app, &uri, json!({}), Some(TOKEN)).await;
    assert_eq!(
        (code, err["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("rejected")),
        "{err}"
    );
    assert!(
        !services::app::consumer::list_dead_letters(rt.store(), "inventory-service").expect("letters")[0]
            .resolved
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let (rt, app) = node();
    let (code, doc) = call(&app, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    let mut expected = vec![
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/openapi.json",
        "POST /api/orders",
        "GET /api/orders/{id}",
        "POST /api/orders/{id}/cancel",
        "GET /api/orders/{id}/payments",
        "GET /api/customers/{id}/orders",
        "POST /api/products/{sku}/stock",
        "GET /api/products/{sku}/stock",
        "GET /api/sagas/{id}",
        "GET /api/dead-letters",
        "GET /api/streams/{id}/events",
        "GET /api/events",
        "GET /api/events/live",
        "POST /api/admin/projections/{name}/replay",
        "POST /api/admin/dead-letters/{consumer}/{event_id}/redrive",
        "GET /api/events/by-id/{id}",
        "GET /api/sagas",
        "GET /api/overview",
        "POST /api/admin/sagas/{id}/{action}",
        "PUT /api/admin/simulator/gateway",
        "POST /api/saga/order",
    ];
    expected.sort();
    assert_eq!(operations, expected, "the document lists exactly the routes the router serves");
    // Each documented operation reaches a handler (not the fallback, not 405).
    for op in &operations {
        let (method, path) = op.split_once(' ').expect("op");
        let uri = path
            .replace("{id}", "0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00")
            .replace("{event_id}", "0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00")
            .replace("{sku}", "SKU-1")
            .replace("{name}", "stock-levels")
            .replace("{consumer}", "saga-manager")
            .replace("{action}", "retry");
        let req = Request::builder().method(method).uri(&uri).header("content-type", "application/json");
        let body = if method == "POST" || method == "PUT" { Body::from("{}") } else { Body::empty() };
        let resp = app.clone().oneshot(req.body(body).expect("req")).await.expect("resp");
        let status = resp.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{op}");
        if path != "/api/events/live" {
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            assert!(!String::from_utf8_lossy(&bytes).contains("no such route"), "{op} is not routed");
        }
    }
    // Every schema a response refers to is defined.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in text.split("#/components/schemas/").skip(1).map(|r| r.split('"').next().unwrap_or("")) {
        assert!(schemas.contains_key(name), "schema {name} is referenced but not defined");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    rt.shutdown().await.expect("shutdown");
}

const READ: &str = "test-read-token-0123456789";

async fn get_with(
    app: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method("GET").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.clone().oneshot(req.body(Body::empty()).expect("request")).await.expect("response");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_personal_data_and_the_console_need_the_read_token_when_one_is_set() {
    let (rt, app) = node_with(true, Some(READ));
    let (code, placed) = call(&app, "POST", "/api/orders", Some(order_body("A", 1, "DE")), None).await;
    assert_eq!(code, StatusCode::CREATED, "commands stay open: {placed}");
    let id = placed["order_id"].as_str().expect("id").to_owned();
    let protected = [
        "/api/events".to_owned(),
        "/api/events/live".to_owned(),
        format!("/api/streams/order-{id}/events"),
        format!("/api/events/by-id/{id}"),
        format!("/api/orders/{id}"),
        format!("/api/orders/{id}/payments"),
        "/api/customers/alice/orders".to_owned(),
        format!("/api/sagas/{id}"),
        "/api/sagas".to_owned(),
        "/api/overview".to_owned(),
        "/api/dead-letters".to_owned(),
        "/ui".to_owned(),
        format!("/ui/sagas/{id}"),
    ];
    let read = format!("Bearer {READ}");
    let admin = format!("Bearer {TOKEN}");
    for uri in &protected {
        let (code, body, _) = get_with(&app, uri, &[]).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{uri} without a credential");
        if uri.starts_with("/api") {
            assert_eq!(body["error"]["code"], "unauthorized", "{uri}");
        }
        let head = app
            .clone()
            .oneshot(
                Request::builder().method("HEAD").uri(uri.as_str()).body(Body::empty()).expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(head.status(), StatusCode::UNAUTHORIZED, "HEAD {uri} without a credential");
        let wrong = get_with(&app, uri, &[("authorization", "Bearer not-the-read-token-000")]).await.0;
        assert_eq!(wrong, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
        if uri == "/api/events/live" {
            continue; // a stream: its answer's status is enough below
        }
        for credential in [&read, &admin] {
            let code = get_with(&app, uri, &[("authorization", credential)]).await.0;
            assert!(
                code != StatusCode::UNAUTHORIZED && !code.is_server_error(),
                "{uri} with a token: {code}"
            );
        }
    }
    // The console's cookie: set by signing in, accepted for reads.
    let login = |token: &str| {
        Request::builder()
            .method("POST")
            .uri("/ui/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}&next=%2Fui%2Fsagas")))
            .expect("request")
    };
    let refused = app.clone().oneshot(login("wrong-token-0000000000")).await.expect("response");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get("set-cookie").is_none());
    let signed = app.clone().oneshot(login(READ)).await.expect("response");
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed.headers()["location"], "/ui/sagas");
    let cookie =
        signed.headers()["set-cookie"].to_str().expect("cookie").split(';').next().expect("pair").to_owned();
    assert!(signed.headers()["set-cookie"].to_str().expect("cookie").contains("HttpOnly"));
    assert_eq!(get_with(&app, "/ui/sagas", &[("cookie", &cookie)]).await.0, StatusCode::OK);
    assert_eq!(get_with(&app, "/api/sagas", &[("cookie", &cookie)]).await.0, StatusCode::OK);
    // Open: probes, metrics, stock levels, the document, the sign-in page and the assets.
    for uri in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/products/A/stock",
        "/api/openapi.json",
        "/ui/login",
        "/ui/assets/app.js",
        "/ui/assets/app.css",
    ] {
        let code = get_with(&app, uri, &[]).await.0;
        assert!(code != StatusCode::UNAUTHORIZED, "{uri} stays open: {code}");
    }
    // A cookie never carries an admin action.
    let (code, _) = raw(
        &app,
        Request::builder()
            .method("POST")
            .uri(format!("/api/admin/sagas/{id}/retry"))
            .header("content-type", "application/json")
            .header("cookie", &cookie)
            .body(Body::from(json!({"operator": "x"}).to_string()))
            .expect("request"),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    rt.shutdown().await.expect("shutdown");
    // Without a read token, reads are open.
    let (rt, app) = node_with(false, None);
    assert_eq!(get_with(&app, "/api/events", &[]).await.0, StatusCode::OK);
    assert_eq!(get_with(&app, "/ui", &[]).await.0, StatusCode::OK);
    rt.shutdown().await.expect("shutdown");
}

fn quick_quarantine() -> RuntimeConfig {
    RuntimeConfig {
        policy: aggregates::saga::RetryPolicy {
            step_timeout_ms: 200,
            backoff_base_ms: 10,
            backoff_cap_ms: 20,
            max_attempts: 2,
            on_exhausted: aggregates::saga::OnExhausted::Quarantine,
        },
        // The breaker lets a trial call through soon after the outage, so a retry reaches the
        // gateway.
        breaker: services::app::gateway::BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(100),
        },
        ..RuntimeConfig::default()
    }
}

async fn saga_status(app: &axum::Router, rt: &Rt, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        caught_up(rt).await;
        let (code, saga) = call(app, "GET", &format!("/api/sagas/{id}"), None, None).await;
        if code == StatusCode::OK && saga["status"] == want {
            return saga;
        }
        assert!(Instant::now() < deadline, "saga {id} never became {want}: {saga}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn act(
    app: &axum::Router,
    id: &str,
    action: &str,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("/api/admin/sagas/{id}/{action}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    raw(app, req.body(Body::from(body.to_string())).expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_quarantined_saga_once_and_the_action_is_in_its_stream() {
    let (rt, app) = node_configured(true, None, quick_quarantine());
    assert_eq!(
        call(&app, "POST", "/api/products/A/stock", Some(json!({"quantity": 10})), None).await.0,
        StatusCode::OK
    );
    let gateway = |rate: f64| {
        let app = app.clone();
        async move {
            let mut req = Request::builder()
                .method("PUT")
                .uri("/api/admin/simulator/gateway")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {TOKEN}"));
            req = req.header("x-test", "1");
            raw(&app, req.body(Body::from(json!({"failure_rate": rate}).to_string())).expect("request")).await
        }
    };
    assert_eq!(gateway(1.0).await.0, StatusCode::OK);
    let (_, placed) = call(&app, "POST", "/api/orders", Some(order_body("A", 1, "DE")), None).await;
    let id = placed["order_id"].as_str().expect("id").to_owned();
    let parked = saga_status(&app, &rt, &id, "quarantined").await;
    assert!(parked["reason"].as_str().is_some_and(|r| r.contains("no reply after 2 attempts")), "{parked}");
    let (_, listed) = call(&app, "GET", "/api/sagas?status=quarantined", None, None).await;
    assert_eq!(listed["sagas"][0]["order_id"], id.as_str());
    let (_, overview) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(overview["sagas"]["quarantined"], 1);
    // Not ended: counted under the definition that started it.
    let current = aggregates::saga::DEFINITION.to_string();
    assert_eq!(overview["open_by_definition"], json!({ current: 1 }), "{overview}");
    assert_eq!(overview["definition"], aggregates::saga::DEFINITION);
    assert_eq!(parked["definition"], aggregates::saga::DEFINITION);
    // Refusals: unknown action, no operator, no token, a state that does not allow it.
    assert_eq!(act(&app, &id, "restart", json!({"operator": "ops"}), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(act(&app, &id, "retry", json!({"operator": " "}), None).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        admin_call(&app, &format!("/api/admin/sagas/{id}/retry"), json!({"operator": "o"}), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let version = parked["version"].as_u64().expect("version");
    let (code, body) =
        act(&app, &id, "mark-compensation-done", json!({"operator": "ops", "reason": "r"}), None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "an expected version is required: {body}");
    let mark = |reason: &str, v: u64| json!({"operator": "ops", "reason": reason, "expected_version": v});
    let (code, body) = act(&app, &id, "mark-compensation-done", mark("", version), None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "a reason is required: {body}");
    let (code, body) = act(&app, &id, "mark-compensation-done", mark("r", version), None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["status"], "quarantined");
    assert_eq!(body["version"], version);
    // A stale version (the operator looked at an older saga) is refused before the state is.
    let (code, body) = act(&app, &id, "mark-compensation-done", mark("r", version - 1), None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains(&format!("at version {version}"))),
        "{body}"
    );
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        act(&app, &unknown.to_string(), "retry", json!({"operator": "o"}), None).await.0,
        StatusCode::NOT_FOUND
    );
    // The gateway recovers; one retry (sent twice with one key) completes the saga (its fresh
    // budget outlasts the breaker's open period).
    assert_eq!(gateway(0.0).await.0, StatusCode::OK);
    let body = json!({"operator": "ops@example.com", "reason": "gateway back"});
    let (code, first) = act(&app, &id, "retry", body.clone(), Some("incident-42")).await;
    assert_eq!(code, StatusCode::OK, "{first}");
    assert_eq!(first["repeated"], false);
    let (code, again) = act(&app, &id, "retry", body, Some("incident-42")).await;
    assert_eq!(code, StatusCode::OK, "{again}");
    assert_eq!(again["repeated"], true);
    assert_eq!(again["action_id"], first["action_id"]);
    // The same key for another request (another operator): refused, nothing done.
    let other = json!({"operator": "someone@example.com", "reason": "gateway back"});
    let (code, reused) = act(&app, &id, "retry", other, Some("incident-42")).await;
    assert_eq!(code, StatusCode::CONFLICT, "{reused}");
    assert!(reused["error"]["message"].as_str().is_some_and(|m| m.contains("Idempotency-Key")), "{reused}");
    saga_status(&app, &rt, &id, "completed").await;
    wait_status(&app, &rt, &id, "confirmed").await;
    let (code, body) = act(&app, &id, "resume", json!({"operator": "ops"}), None).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(body["status"], "completed");
    // The audit trail: one OperatorActed, with who, why and when.
    let (_, events) =
        call(&app, "GET", &format!("/api/streams/saga-{id}/events?limit=1000"), None, None).await;
    let acted: Vec<&Value> =
        events.as_array().expect("events").iter().filter(|e| e["event_type"] == "OperatorActed").collect();
    assert_eq!(acted.len(), 1, "{events}");
    assert_eq!(acted[0]["payload"]["operator"], "ops@example.com");
    assert_eq!(acted[0]["payload"]["reason"], "gateway back");
    assert_eq!(acted[0]["payload"]["action"], "retry");
    assert!(acted[0]["payload"]["at_ns"].as_u64().is_some_and(|t| t > 0));
    let (_, overview) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(
        (overview["sagas"]["quarantined"].clone(), overview["sagas"]["completed"].clone()),
        (json!(0), json!(1))
    );
    // Ended: no longer counted under its definition.
    assert_eq!(overview["open_by_definition"], json!({}), "{overview}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_compensates_a_quarantined_saga_and_the_order_is_cancelled() {
    let (rt, app) = node_configured(true, None, quick_quarantine());
    assert_eq!(
        call(&app, "POST", "/api/products/A/stock", Some(json!({"quantity": 10})), None).await.0,
        StatusCode::OK
    );
    rt.simulator()(SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() });
    let (_, placed) = call(&app, "POST", "/api/orders", Some(order_body("A", 2, "DE")), None).await;
    let id = placed["order_id"].as_str().expect("id").to_owned();
    let parked = saga_status(&app, &rt, &id, "quarantined").await;
    let version = parked["version"].as_u64().expect("version");
    let body = json!({"operator": "ops", "reason": "customer called", "expected_version": version});
    let (code, body) = act(&app, &id, "compensate", body, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let saga = saga_status(&app, &rt, &id, "compensated").await;
    assert!(saga["reason"].as_str().is_some_and(|r| r.contains("aborted by ops: customer called")), "{saga}");
    let order = wait_status(&app, &rt, &id, "cancelled").await;
    assert_eq!(order["cancel_reason"], "operator", "{order}");
    let (_, stock) = call(&app, "GET", "/api/products/A/stock", None, None).await;
    assert_eq!(stock["available"], 10, "the stock is back: {stock}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_list_pages_newest_first_and_filters() {
    let (rt, app) = node();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, placed) = call(&app, "POST", "/api/orders", Some(order_body("NONE", 1, "DE")), None).await;
        ids.push(placed["order_id"].as_str().expect("id").to_owned());
        caught_up(&rt).await;
    }
    for id in &ids {
        saga_status(&app, &rt, id, "compensated").await; // no stock
    }
    let (code, page) = call(&app, "GET", "/api/sagas?limit=2", None, None).await;
    assert_eq!(code, StatusCode::OK);
    let got: Vec<&str> =
        page["sagas"].as_array().expect("page").iter().filter_map(|s| s["order_id"].as_str()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let next = page["next"].as_str().expect("next");
    let (_, rest) = call(&app, "GET", &format!("/api/sagas?limit=2&after={next}"), None, None).await;
    assert_eq!(rest["sagas"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest["sagas"][0]["order_id"], ids[0].as_str());
    assert!(rest.get("next").is_none());
    let (_, by_state) = call(&app, "GET", "/api/sagas?status=compensated&limit=10", None, None).await;
    assert_eq!(by_state["sagas"].as_array().map(Vec::len), Some(3));
    let (_, none) = call(&app, "GET", "/api/sagas?status=completed", None, None).await;
    assert_eq!(none["sagas"].as_array().map(Vec::len), Some(0));
    let (_, old) = call(&app, "GET", "/api/sagas?older_than_secs=3600", None, None).await;
    assert_eq!(old["sagas"].as_array().map(Vec::len), Some(0));
    let (_, all) = call(&app, "GET", "/api/sagas?older_than_secs=0", None, None).await;
    assert_eq!(all["sagas"].as_array().map(Vec::len), Some(3), "every saga started at least 0 s ago");
    // A rebuilt read model holds the same lists and counts as the live one.
    let (_, before) = call(&app, "GET", "/api/overview", None, None).await;
    let (code, _) =
        admin_call(&app, "/api/admin/projections/saga-timelines/replay", json!({}), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK);
    let (_, after) = call(&app, "GET", "/api/overview", None, None).await;
    assert_eq!(before["sagas"], after["sagas"]);
    assert_eq!(before["open_by_definition"], after["open_by_definition"]);
    let (_, rebuilt) = call(&app, "GET", "/api/sagas?limit=10", None, None).await;
    let again: Vec<&str> =
        rebuilt["sagas"].as_array().expect("page").iter().filter_map(|s| s["order_id"].as_str()).collect();
    assert_eq!(again, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    let (_, one) = call(&app, "GET", &format!("/api/sagas?order_id={}", ids[1]), None, None).await;
    assert_eq!(one["sagas"][0]["order_id"], ids[1].as_str());
    for bad in [
        "/api/sagas?status=asleep",
        "/api/sagas?after=order%2Fx",
        "/api/sagas?order_id=nope",
        "/api/sagas?limit=0",
        "/api/sagas?older_than_secs=-1",
    ] {
        assert_eq!(call(&app, "GET", bad, None, None).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    rt.shutdown().await.expect("shutdown");
}

/// A request with headers, answered with its status, a header and the body.
async fn traced_post(
    app: &axum::Router,
    uri: &str,
    body: Value,
    key: &str,
    traceparent: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("Idempotency-Key", key)
        .header("content-type", "application/json");
    if let Some(t) = traceparent {
        req = req.header("traceparent", t).header("tracestate", "congo=t61rcWkgMzE");
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let answered = resp.headers().get("traceresponse").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, answered, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// The trace contexts the events of one order recorded, event type by event type.
fn traces_of(rt: &Rt, order: &str) -> Vec<(String, String, Option<String>)> {
    let order: uuid::Uuid = order.parse().expect("order id");
    rt.store()
        .read_all(1)
        .map(|e| e.expect("read"))
        .filter(|e| e.correlation_id == order)
        .map(|e| {
            let parent = e.metadata.get("traceparent").cloned().unwrap_or_default();
            (format!("{} {}", e.stream_id, e.event_type), parent, e.metadata.get("tracestate").cloned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_an_order_causes_records_the_trace_context_of_its_request() {
    let (rt, app) = node();
    assert_eq!(
        call(&app, "POST", "/api/products/A/stock", Some(json!({"quantity": 10})), Some("s")).await.0,
        StatusCode::OK
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (code, answered, placed) =
        traced_post(&app, "/api/orders", order_body("A", 1, "DE"), "traced-order", Some(parent)).await;
    assert_eq!(code, StatusCode::CREATED, "{placed}");
    // The answer names the caller's trace and the node's own operation in it (a new parent id):
    // that is the context every event records, the parent of whatever works on them.
    let own = answered.expect("a traceresponse");
    assert!(own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && own.ends_with("-01"), "{own}");
    assert!(!own.contains("00f067aa0ba902b7"), "{own}");
    let parent = own.as_str();
    let id = placed["order_id"].as_str().expect("id").to_owned();
    saga_status(&app, &rt, &id, "completed").await;
    let traces = traces_of(&rt, &id);
    // The order's own events, the saga's, every command and reply, payment and shipment.
    for kind in
        ["order-", "saga-", "replies-", "payment-", "shipment-", "inventory_commands-", "payment_commands-"]
    {
        assert!(traces.iter().any(|(what, ..)| what.starts_with(kind)), "no {kind} event: {traces:?}");
    }
    for (what, got, state) in &traces {
        assert_eq!(got, parent, "{what}");
        assert_eq!(state.as_deref(), Some("congo=t61rcWkgMzE"), "{what}");
    }
    // A retry of the request under another trace is the same request: 201, and the events keep
    // the first attempt's context.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (code, _, again) =
        traced_post(&app, "/api/orders", order_body("A", 1, "DE"), "traced-order", Some(other)).await;
    assert_eq!(code, StatusCode::CREATED, "{again}");
    assert_eq!(again["order_id"], placed["order_id"]);
    assert!(traces_of(&rt, &id).iter().all(|(_, got, _)| got == parent));
    // A request without a context (or with an invalid one) gets a new trace, named in the answer.
    let (code, answered, placed) =
        traced_post(&app, "/api/orders", order_body("A", 1, "DE"), "untraced-order", Some("00-zz-bad-01"))
            .await;
    assert_eq!(code, StatusCode::CREATED, "{placed}");
    let root = answered.expect("a traceresponse");
    assert!(root.starts_with("00-") && root.len() == 55 && !root.contains("zz"), "{root}");
    let id = placed["order_id"].as_str().expect("id").to_owned();
    saga_status(&app, &rt, &id, "completed").await;
    let traces = traces_of(&rt, &id);
    assert!(!traces.is_empty());
    for (what, got, state) in &traces {
        assert_eq!((got, state), (&root, &None), "{what}");
    }
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_order_api_is_mapped_onto_orders_and_its_saga_completes() {
    let (rt, app) = node();
    assert_eq!(
        call(&app, "POST", "/api/products/prod-1/stock", Some(json!({"quantity": 10})), Some("seed-stock"))
            .await
            .0,
        StatusCode::OK
    );
    // The seed's own check, as written (the node's default address ships it).
    let seed = json!({"customer_id": "customer-123", "items": [{"product_id": "prod-1", "quantity": 2}], "total_amount": 100.00});
    let (code, placed) = call(&app, "POST", "/api/saga/order", Some(seed.clone()), Some("seed-1")).await;
    assert_eq!(code, StatusCode::CREATED, "{placed}");
    let id = placed["order_id"].as_str().expect("id").to_owned();
    saga_status(&app, &rt, &id, "completed").await;
    let order = wait_status(&app, &rt, &id, "confirmed").await;
    assert_eq!(order["total"], 10_000, "{order}");
    assert_eq!(order["items"][0]["unit_price"], 5_000, "{order}");
    // A retry is the same order.
    let (code, again) = call(&app, "POST", "/api/saga/order", Some(seed.clone()), Some("seed-1")).await;
    assert_eq!((code, &again["order_id"]), (StatusCode::CREATED, &placed["order_id"]));
    // What cannot be mapped gets a clear 4xx, and nothing is recorded.
    let head = rt.store().head();
    for (body, want, says) in [
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 3}], "total_amount": 100.00}),
            422,
            "divide",
        ),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1}], "total_amount": 1.234}),
            400,
            "two decimals",
        ),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1}], "total_amount": -5}),
            400,
            "positive",
        ),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1}], "total_amount": 1e-9}),
            400,
            "positive",
        ),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1}], "total_amount": 5,
                "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "Germany"}}),
            422,
            "two-letter",
        ),
        (json!({"customer_id": "c", "items": [], "total_amount": 5}), 400, "unit"),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1}]}),
            400,
            "total_amount",
        ),
        (
            json!({"customer_id": "c", "items": [{"product_id": "prod-1", "quantity": 1, "price": 1}], "total_amount": 5}),
            400,
            "price",
        ),
    ] {
        let (code, err) = call(&app, "POST", "/api/saga/order", Some(body.clone()), None).await;
        assert_eq!(code.as_u16(), want, "{body}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains(says)), "{body}: {err}");
    }
    assert_eq!(rt.store().head(), head, "a refused request recorded something");
    rt.shutdown().await.expect("shutdown");
}
