//! Spans: what a node is doing, as `tracing` spans that an OpenTelemetry exporter (OTLP, set up
//! by the binary when configured, off by default) sends while they run, one span per unit of
//! work: an HTTP request, an append (with its group-commit wait), a consumed message and each
//! attempt to handle it, a saga step, a relay batch and each record in it.
//!
//! The spans of one order form one tree across processes. The tree is joined through the trace
//! context the events record ([`crate::app::trace`]): an HTTP request's span is the child of the
//! caller's (`traceparent`), and the context its events record names the request's span as their
//! parent; whatever later works on one of those events, on this node or another (through Kafka's
//! `ce_traceparent`), opens its span as a child of that context. Events keep the request's
//! context as it was, not each step's span: their ids are deterministic and a repeated step must
//! write the same events, so the tree is the request's span with the work on its events under it
//! (and each piece of work's own spans under that).
//!
//! Every span has the target `spans`: off unless exported (or named in `RUST_LOG`, when they
//! give log lines their context), so a node that exports nothing does not pay for them. Without
//! an exporter the helpers here do nothing.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::app::trace::TraceContext;

/// The OpenTelemetry form of a recorded context (a remote parent).
fn span_context(t: &TraceContext) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(t.trace_id()).ok()?;
    let span_id = SpanId::from_hex(t.parent_id()).ok()?;
    let state = t.tracestate().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, TraceFlags::new(t.flags()), true, state))
}

/// Makes `span` (created, not yet entered) a child of the recorded context `trace`, unless the
/// span it was opened under is in that trace already (then it stays that span's child: a
/// handler's attempt under the message it handles). Does nothing without an exporter.
pub fn follow(span: &tracing::Span, trace: Option<&TraceContext>) {
    let Some(t) = trace else { return };
    if span.is_disabled() {
        return;
    }
    let Some(remote) = span_context(t) else { return };
    let current = tracing::Span::current().context();
    let local = current.span().span_context().clone();
    if local.is_valid() && local.trace_id() == remote.trace_id() {
        return;
    }
    // Fails only without an exporter's layer (nothing to do then) or for a span already
    // entered (a caller's mistake, which leaves the span where it was).
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// [`follow`] the context `event` recorded: its child, when spans are recorded (the event's
/// metadata is not read otherwise: this runs for every message a consumer or the relay takes).
pub fn follow_event(span: &tracing::Span, event: &event_store::RecordedEvent) {
    if !span.is_disabled() {
        follow(span, TraceContext::of_event(event).as_ref());
    }
}

/// The context `span` gives its children (its trace, its own id), when it is recorded by an
/// exporter; `tracestate` is carried over as it came.
pub fn context_of(span: &tracing::Span, tracestate: Option<&str>) -> Option<TraceContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    TraceContext::from_ids(
        &format!("{:032x}", sc.trace_id()),
        &format!("{:016x}", sc.span_id()),
        sc.trace_flags().to_u8(),
        tracestate,
    )
}

/// The context an incoming request's work records: the request span's own (a child of the
/// caller's `incoming`, or a new root) when spans are exported; otherwise a new span id in the
/// caller's trace (the request's own operation, which no one records), or a new root.
pub fn server_context(span: &tracing::Span, incoming: Option<&TraceContext>) -> TraceContext {
    follow(span, incoming);
    let state = incoming.and_then(TraceContext::tracestate);
    match (context_of(span, state), incoming) {
        (Some(own), _) => own,
        (None, Some(caller)) => caller.child(),
        (None, None) => TraceContext::new_root(),
    }
}

/// The span context of `span` if it is recorded (to link a batch to the records in it).
pub fn recorded(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to `to` (a batch to one of its records).
pub fn link(span: &tracing::Span, to: SpanContext) {
    span.add_link(to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_a_request_keeps_its_callers_trace_under_a_new_span_id() {
        let caller =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("k=v"))
                .expect("valid");
        let span = tracing::info_span!(target: "spans", "test");
        let own = server_context(&span, Some(&caller));
        assert_eq!(own.trace_id(), caller.trace_id());
        assert_ne!(own.parent_id(), caller.parent_id());
        assert_eq!(own.flags(), caller.flags());
        assert_eq!(own.tracestate(), Some("k=v"));
        let root = server_context(&span, None);
        assert_ne!(root.trace_id(), caller.trace_id());
    }
}
