//! The trace context of a request: its W3C `traceparent` / `tracestate` headers, or a new root
//! (which the middleware writes into the request's headers, so the handlers read one context
//! whichever it is: every event the request causes records it), answered in the `traceresponse`
//! header, so a client that sent none learns its trace id.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::app::trace::{TraceContext, TRACEPARENT, TRACESTATE};

/// The response header that names the request's trace (W3C Trace Context Level 2).
pub const TRACERESPONSE: &str = "traceresponse";

/// The context of a request, from its headers (an invalid `traceparent` starts a new trace).
pub fn of_headers(headers: &axum::http::HeaderMap) -> TraceContext {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text(TRACEPARENT)
        .and_then(|p| TraceContext::parse(p, text(TRACESTATE)))
        .unwrap_or_else(TraceContext::new_root)
}

/// Middleware: the request's context in its headers (a new root replaces a missing or invalid
/// `traceparent`), and in the answer's `traceresponse`.
pub(crate) async fn trace_context(mut req: Request, next: Next) -> Response {
    let trace = of_headers(req.headers());
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
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(trace.traceparent()) {
        resp.headers_mut().insert(TRACERESPONSE, v);
    }
    resp
}
