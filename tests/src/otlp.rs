//! A small OpenTelemetry collector for the tests: an OTLP/HTTP receiver (`POST /v1/traces`,
//! JSON encoding, as the OTLP specification defines it) on loopback that keeps every span it is
//! sent, with the resource it came from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace (32 hex digits).
    pub trace_id: String,
    /// Its id (16 hex digits).
    pub span_id: String,
    /// Its parent's id (empty for a root).
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// The `service.instance.id` of the process that sent it.
    pub instance: String,
    /// Its attributes (values as text).
    pub attributes: BTreeMap<String, String>,
    /// The span ids it links to.
    pub links: Vec<String>,
}

/// The receiver; it stops with the runtime that started it.
#[derive(Debug, Clone)]
pub struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

fn text(v: &Value) -> String {
    // An OTLP AnyValue: {"stringValue": ..} | {"intValue": ..} | {"boolValue": ..} | ...
    match v.as_object().and_then(|o| o.values().next()) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("key")?.as_str()?.to_owned(), text(a.get("value")?))))
        .collect()
}

fn spans_of(request: &Value) -> Option<Vec<Span>> {
    let mut out = Vec::new();
    for rs in request.get("resourceSpans")?.as_array()? {
        let resource = attributes(rs.pointer("/resource/attributes").unwrap_or(&Value::Null));
        let instance = resource.get("service.instance.id").cloned().unwrap_or_default();
        for ss in rs.get("scopeSpans")?.as_array()? {
            for s in ss.get("spans")?.as_array()? {
                let field = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                out.push(Span {
                    trace_id: field("traceId"),
                    span_id: field("spanId"),
                    parent_span_id: field("parentSpanId"),
                    name: field("name"),
                    instance: instance.clone(),
                    attributes: attributes(s.get("attributes").unwrap_or(&Value::Null)),
                    links: s
                        .get("links")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l.get("spanId")?.as_str().map(str::to_owned))
                        .collect(),
                });
            }
        }
    }
    Some(out)
}

async fn receive(State(c): State<Collector>, headers: HeaderMap, body: Bytes) -> (StatusCode, &'static str) {
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json {
        c.refused.lock().unwrap_or_else(|p| p.into_inner()).push("not application/json".into());
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}");
    }
    match serde_json::from_slice::<Value>(&body).ok().as_ref().and_then(spans_of) {
        Some(spans) => {
            c.spans.lock().unwrap_or_else(|p| p.into_inner()).extend(spans);
            (StatusCode::OK, "{}")
        }
        None => {
            c.refused.lock().unwrap_or_else(|p| p.into_inner()).push(String::from_utf8_lossy(&body).into());
            (StatusCode::BAD_REQUEST, "{}")
        }
    }
}

impl Collector {
    /// Starts a receiver on a free loopback port (on the current tokio runtime).
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let port = listener.local_addr().expect("its address").port();
        let c = Collector { port, spans: Arc::default(), refused: Arc::default() };
        // OTLP allows requests of up to 64 MiB: no lower bound than the exporter's own.
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(c.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        c
    }

    /// Its base URL (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| s.trace_id == trace_id).collect()
    }

    /// Requests it could not read (a test asserts there were none).
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
