//! Overload: past its bounds the node refuses with 429/503 + `Retry-After`, records nothing for
//! what it refuses, finishes what it accepted, and drops slow live-feed clients.

use std::time::{Duration, Instant};

use aggregates::OrderId;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use event_store::{Direction, EventStore, MemoryStorage, StoreConfig, StreamId};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use services::app::admission::AdmissionConfig;
use services::app::gateway::{SimulatedGateway, SimulatedGatewayConfig};
use services::http::{app, ApiState, CommandRoute, HttpLimits, LiveFeeds};
use services::node::{Runtime, RuntimeConfig};
use tower::ServiceExt;
use uuid::Uuid;

type Rt = Runtime<MemoryStorage, SimulatedGateway>;

fn state(rt: &Rt, stopping: tokio::sync::watch::Receiver<bool>) -> ApiState<MemoryStorage> {
    ApiState {
        store: rt.store().clone(),
        models: rt.models().clone(),
        ready: rt.readiness().clone(),
        metrics: None,
        stopping,
        admin: None,
        commands: CommandRoute::Local,
        admission: rt.admission().cloned(),
        feeds: LiveFeeds::default(),
        limits: HttpLimits::default(),
        read_token: None,
        compat: Default::default(),
    }
}

fn start(gateway_latency: Duration, config: RuntimeConfig) -> Rt {
    let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
    let gateway =
        SimulatedGateway::new(SimulatedGatewayConfig { latency: gateway_latency, ..Default::default() });
    Runtime::start(store, gateway, config).expect("start")
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let retry_after =
        resp.headers().get("retry-after").map(|v| v.to_str().expect("retry-after is text").to_owned());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("json body") };
    (status, retry_after, v)
}

fn place(key: &str) -> Request<Body> {
    let body = json!({
        "customer_id": "c-1",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 100}],
        "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
    });
    Request::builder()
        .method("POST")
        .uri("/api/orders")
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// The order id the API derives from an Idempotency-Key.
fn order_of_key(key: &str) -> OrderId {
    let k = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("causeway:idempotency:{key}").as_bytes());
    OrderId(Uuid::new_v5(&k, b"order"))
}

fn saga_ended(store: &EventStore<MemoryStorage>, order: OrderId) -> bool {
    let stream = StreamId::new(format!("saga-{}", order.0)).expect("stream");
    store
        .read_stream(&stream, 1, Direction::Forward)
        .filter_map(Result::ok)
        .any(|e| matches!(e.event_type.as_str(), "SagaCompleted" | "SagaCompensated" | "SagaFailed"))
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_saga_limit_orders_get_429_with_retry_after_and_leave_nothing_behind() {
    // Payments take 2 s, so the first sagas are still in flight while the rest arrive.
    let config = RuntimeConfig { admission: AdmissionConfig::fixed(4), ..RuntimeConfig::default() };
    let rt = start(Duration::from_secs(2), config);
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let app = app(state(&rt, stopping));
    let stock = Request::builder()
        .method("POST")
        .uri("/api/products/SKU-1/stock")
        .header("content-type", "application/json")
        .body(Body::from(json!({"quantity": 100}).to_string()))
        .expect("request");
    assert_eq!(send(&app, stock).await.0, StatusCode::OK);

    let keys: Vec<String> = (0..10).map(|i| format!("overload-{i}")).collect();
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for key in &keys {
        let (status, retry_after, body) = send(&app, place(key)).await;
        match status {
            StatusCode::CREATED => accepted.push(key.clone()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                let secs: u64 = retry_after.expect("a 429 carries Retry-After").parse().expect("seconds");
                assert!(secs >= 1);
                refused.push(key.clone());
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 4, "the limit admits four sagas");
    assert_eq!(refused.len(), 6);
    // A retry of an accepted order is no new saga: it is answered, not refused.
    assert_eq!(send(&app, place(&accepted[0])).await.0, StatusCode::CREATED);

    // Nothing of a refused order is on the log.
    let store = rt.store().clone();
    for key in &refused {
        let order = order_of_key(key);
        for category in ["order", "saga"] {
            let stream = StreamId::new(format!("{category}-{}", order.0)).expect("stream");
            assert_eq!(store.stream_version(&stream).expect("version"), 0, "{category} of refused {key}");
        }
    }
    // Every accepted saga ends, and their places come free.
    wait_until("every accepted saga ended", Duration::from_secs(60), || {
        accepted.iter().all(|k| saga_ended(&store, order_of_key(k)))
    })
    .await;
    let admission = rt.admission().expect("the embedded node admits").clone();
    wait_until("the places came free", Duration::from_secs(10), || admission.load().in_flight == 0).await;
    assert_eq!(admission.load().rejected, 6);
    assert_eq!(send(&app, place(&refused[0])).await.0, StatusCode::CREATED, "a refused order may retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_in_flight_bound_get_429_and_slow_ones_504() {
    // A forwarding node waits for answers no one sends: each command stays in flight.
    let rt = start(Duration::ZERO, RuntimeConfig::default());
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let forward = CommandRoute::Forward {
        answers: services::app::commands::Answers::default(),
        source: "test-node".into(),
        wait: Duration::from_secs(3),
    };
    let limits = HttpLimits { max_in_flight: 1, request_timeout: Duration::from_secs(60) };
    let app1 = app(ApiState { commands: forward.clone(), limits, ..state(&rt, stopping.clone()) });
    let slow = tokio::spawn({
        let app = app1.clone();
        async move { send(&app, place("held")).await }
    });
    let store = rt.store().clone();
    wait_until("the first command is forwarded", Duration::from_secs(10), || store.head() >= 1).await;
    let (status, retry_after, body) = send(&app1, place("second")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(retry_after.is_some());
    // Probes are outside the bound.
    let health = Request::builder().uri("/healthz").body(Body::empty()).expect("request");
    assert_eq!(send(&app1, health).await.0, StatusCode::OK);
    assert_eq!(slow.await.expect("join").0, StatusCode::ACCEPTED);

    let limits = HttpLimits { max_in_flight: 16, request_timeout: Duration::from_millis(300) };
    let app2 = app(ApiState { commands: forward, limits, ..state(&rt, stopping) });
    let (status, _, body) = send(&app2, place("timed-out")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_are_capped_and_a_client_that_stops_reading_is_dropped() {
    let rt = start(Duration::ZERO, RuntimeConfig::default());
    let store = rt.store().clone();
    for i in 0..200 {
        services::app::commands::add_stock(
            &store,
            Uuid::now_v7(),
            aggregates::Sku(format!("SKU-{i}")),
            5,
            None,
        )
        .await
        .expect("stock");
    }
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let mut feeds = LiveFeeds::new(2);
    feeds.buffer = 8;
    feeds.stall = Duration::from_millis(300);
    let app = app(ApiState { feeds: feeds.clone(), ..state(&rt, stopping) });
    let live =
        || Request::builder().uri("/api/events/live?from_position=1").body(Body::empty()).expect("req");
    // Two clients that never read.
    let a = app.clone().oneshot(live()).await.expect("a");
    let b = app.clone().oneshot(live()).await.expect("b");
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(feeds.open(), 2);
    let (status, retry_after, body) = send(&app, live()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());
    // They are dropped once their buffers stay full past the stall time.
    wait_until("the stalled feeds were dropped", Duration::from_secs(10), || feeds.open() == 0).await;
    // What a dropped client gets is its buffer, then the end of the stream, not the log.
    let body = tokio::time::timeout(Duration::from_secs(10), a.into_body().collect())
        .await
        .expect("the dropped feed ends")
        .expect("body")
        .to_bytes();
    let events = String::from_utf8_lossy(&body).matches("\nid:").count()
        + usize::from(String::from_utf8_lossy(&body).starts_with("id:"));
    assert!(events <= 8 + 1, "a stalled client was sent {events} events, more than its buffer");
    drop(b);
    // A client that reads gets the log.
    let c = app.clone().oneshot(live()).await.expect("c");
    assert_eq!(c.status(), StatusCode::OK);
    let mut body = c.into_body();
    let mut seen = String::new();
    while seen.matches("event:").count() < 200 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("events keep coming")
            .expect("a frame")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_wait_and_an_idle_one_is_closed() {
    use std::future::IntoFuture;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = start(Duration::ZERO, RuntimeConfig::default());
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bounded = services::http::BoundedListener::new(listener, 1, Duration::from_millis(500));
    tokio::spawn(axum::serve(bounded, app(state(&rt, stopping))).into_future());
    // One connection that says nothing holds the only place.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect (backlog)");
    second.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut answer))
        .await
        .expect("the second connection is served once the idle one is closed")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(asked.elapsed() >= Duration::from_millis(300), "it waited for the place: {:?}", asked.elapsed());
    // The idle connection was closed by the node.
    let mut buf = [0u8; 16];
    let n =
        tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");
}
