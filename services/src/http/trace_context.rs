//! The trace context of a request and its span. The span (`http.request`) is a child of the
//! caller's W3C `traceparent` (or a new root); the context the request's work records names that
//! span as its parent (a new span id in the caller's trace when no exporter records spans). The
//! middleware writes that context into the request's headers, so the handlers read one context
//! whichever it is (every event the request causes records it), and answers it in the
//! `traceresponse` header (W3C Trace Context Level 2: the trace, and the server's span), so a
//! client that sent none learns its trace id.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::app::telemetry;
use crate::app::trace::{TraceContext, TRACEPARENT, TRACESTATE};

/// The response header that names the request's trace (W3C Trace Context Level 2).
pub const TRACERESPONSE: &str = "traceresponse";

/// A valid context in `headers`, if any.
fn incoming(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text(TRACEPARENT).and_then(|p| TraceContext::parse(p, text(TRACESTATE)))
}

/// The context of a request, from its headers (as the middleware left them: always valid there;
/// a new root for headers without a valid one).
pub fn of_headers(headers: &axum::http::HeaderMap) -> TraceContext {
    incoming(headers).unwrap_or_else(TraceContext::new_root)
}

/// Records the order a request is about on its span (the span's `order_id` and
/// `correlation_id`: an order's events are correlated by its id).
pub fn record_order(order: uuid::Uuid) {
    let span = tracing::Span::current();
    span.record("order_id", tracing::field::display(order));
    span.record("correlation_id", tracing::field::display(order));
}

/// Middleware: the request's span, and its context in the request's headers and in the answer's
/// `traceresponse`.
pub(crate) async fn trace_context(mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        target: "spans",
        "http.request",
        otel.kind = "server",
        otel.name = format!("{} {}", req.method(), route.as_deref().unwrap_or(&path)),
        http.request.method = %req.method(),
        http.route = route.as_deref(),
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
        order_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let trace = telemetry::server_context(&span, incoming(req.headers()).as_ref());
    let headers = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(trace.traceparent()) {
        headers.insert(TRACEPARENT, v);
    }
    match trace.tracestate().map(HeaderValue::from_str) {
        Some(Ok(v)) => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(trace.traceparent()) {
        resp.headers_mut().insert(TRACERESPONSE, v);
    }
    resp
}
