//! Records in the CloudEvents Kafka protocol binding, binary content mode: the value is the event's
//! payload as stored (JSON for domain events), the attributes are `ce_*` headers, and
//! `content-type` carries `datacontenttype`. Any Kafka client can read them without Causeway.
//!
//! | header | holds |
//! |--------|-------|
//! | `ce_specversion` | `1.0` |
//! | `ce_id` | the event id (UUID) |
//! | `ce_source` | `causeway://<node id>` |
//! | `ce_type` | the event type, e.g. `OrderPlaced` |
//! | `ce_time` | recorded-at, RFC 3339 with nanoseconds |
//! | `ce_subject` | the stream id |
//! | `ce_partitionkey` | the shard key, also the record key (CloudEvents partitioning extension) |
//! | `content-type` | the payload's media type |
//! | `ce_position` | the global log position |
//! | `ce_streamversion` | the version within the stream |
//! | `ce_correlationid`, `ce_causationid` | the saga/order, and what caused this event |
//! | `ce_schemaversion` | the payload's schema version |
//! | `ce_recordedatns` | recorded-at in Unix nanoseconds (exact) |
//! | `ce_metadata` | the event's metadata as a JSON object of strings |
//! | `ce_traceparent`, `ce_tracestate` | the W3C trace context the event recorded (the CloudEvents distributed-tracing extension; absent when it recorded none) |

use std::collections::BTreeMap;

use event_store::RecordedEvent;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";

/// The headers of `e`'s record.
pub fn headers(e: &RecordedEvent, source: &str) -> OwnedHeaders {
    let time = e.recorded_at().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let metadata = serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into());
    let fields: [(&str, String); 15] = [
        ("ce_specversion", SPEC_VERSION.to_owned()),
        ("ce_id", e.event_id.to_string()),
        ("ce_source", source.to_owned()),
        ("ce_type", e.event_type.clone()),
        ("ce_time", time),
        ("ce_subject", e.stream_id.clone()),
        ("ce_partitionkey", crate::app::messages::shard_key(&e.stream_id).to_owned()),
        ("content-type", e.content_type.clone()),
        ("ce_position", e.position.to_string()),
        ("ce_streamversion", e.version.to_string()),
        ("ce_correlationid", e.correlation_id.to_string()),
        ("ce_causationid", e.causation_id.to_string()),
        ("ce_schemaversion", e.schema_version.to_string()),
        ("ce_recordedatns", e.recorded_at_ns.to_string()),
        ("ce_metadata", metadata),
    ];
    let mut h = OwnedHeaders::new_with_capacity(fields.len() + 2);
    for (key, value) in &fields {
        h = h.insert(Header { key, value: Some(value.as_bytes()) });
    }
    // The distributed-tracing extension, so a plain consumer sees the trace too.
    use crate::app::trace::{TRACEPARENT, TRACESTATE};
    for (key, name) in [("ce_traceparent", TRACEPARENT), ("ce_tracestate", TRACESTATE)] {
        if let Some(value) = e.metadata.get(name) {
            h = h.insert(Header { key, value: Some(value.as_bytes()) });
        }
    }
    h
}

/// The header values of a record, by name.
pub fn header_map<H: Headers>(headers: Option<&H>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(h) = headers {
        for header in h.iter() {
            if let Some(v) = header.value {
                out.insert(header.key.to_owned(), String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    out
}

/// Why a record is not a Causeway event.
pub type Malformed = String;

fn field<'a>(h: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, Malformed> {
    h.get(name).map(String::as_str).ok_or_else(|| format!("header {name} is missing"))
}

fn number<T: std::str::FromStr>(h: &BTreeMap<String, String>, name: &str) -> Result<T, Malformed> {
    let v = field(h, name)?;
    v.parse().map_err(|_| format!("header {name} is not a number: {v:?}"))
}

fn uuid(h: &BTreeMap<String, String>, name: &str) -> Result<Uuid, Malformed> {
    let v = field(h, name)?;
    v.parse().map_err(|_| format!("header {name} is not a UUID: {v:?}"))
}

/// Reads an event back from a record's headers and value. Never panics on bad input.
pub fn decode(
    headers: &BTreeMap<String, String>,
    payload: Option<&[u8]>,
) -> Result<RecordedEvent, Malformed> {
    let spec = field(headers, "ce_specversion")?;
    if spec != SPEC_VERSION {
        return Err(format!("CloudEvents version {spec:?}, expected {SPEC_VERSION}"));
    }
    let metadata: BTreeMap<String, String> = match headers.get("ce_metadata") {
        None => BTreeMap::new(),
        Some(m) => serde_json::from_str(m).map_err(|e| format!("header ce_metadata: {e}"))?,
    };
    let position: u64 = number(headers, "ce_position")?;
    let version: u64 = number(headers, "ce_streamversion")?;
    if position == 0 || version == 0 {
        return Err("ce_position and ce_streamversion start at 1".into());
    }
    Ok(RecordedEvent {
        position,
        stream_id: field(headers, "ce_subject")?.to_owned(),
        version,
        event_id: uuid(headers, "ce_id")?,
        event_type: field(headers, "ce_type")?.to_owned(),
        schema_version: number(headers, "ce_schemaversion")?,
        recorded_at_ns: number(headers, "ce_recordedatns")?,
        correlation_id: uuid(headers, "ce_correlationid")?,
        causation_id: uuid(headers, "ce_causationid")?,
        metadata,
        payload: payload.unwrap_or_default().to_vec(),
        content_type: field(headers, "content-type")?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordedEvent {
        RecordedEvent {
            position: 42,
            stream_id: "order-0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00".into(),
            version: 3,
            event_id: Uuid::now_v7(),
            event_type: "OrderConfirmed".into(),
            schema_version: 2,
            recorded_at_ns: 1_764_000_000_123_456_789,
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
            metadata: BTreeMap::from([("command_id".to_owned(), "abc".to_owned())]),
            payload: br#"{"order_id":"x"}"#.to_vec(),
            content_type: "application/json".into(),
        }
    }

    #[test]
    fn an_event_survives_the_round_trip_exactly() {
        let e = sample();
        let h = headers(&e, "causeway://node-1");
        let map = header_map(Some(&h));
        assert_eq!(map["ce_time"], "2025-11-24T16:00:00.123456789Z");
        assert_eq!(map["ce_source"], "causeway://node-1");
        assert_eq!(decode(&map, Some(&e.payload)), Ok(e));
    }

    #[test]
    fn the_trace_context_travels_as_the_distributed_tracing_extension() {
        let mut e = sample();
        let untraced = header_map(Some(&headers(&e, "s")));
        assert!(!untraced.contains_key("ce_traceparent") && !untraced.contains_key("ce_tracestate"));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        e.metadata.insert("traceparent".into(), parent.into());
        e.metadata.insert("tracestate".into(), "congo=t61rcWkgMzE".into());
        let map = header_map(Some(&headers(&e, "s")));
        assert_eq!(map["ce_traceparent"], parent);
        assert_eq!(map["ce_tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(decode(&map, Some(&e.payload)), Ok(e));
    }

    #[test]
    fn a_malformed_record_is_an_error_not_a_panic() {
        let e = sample();
        let good = header_map(Some(&headers(&e, "s")));
        assert!(decode(&BTreeMap::new(), None).is_err());
        for (name, bad) in [
            ("ce_specversion", "0.3"),
            ("ce_position", "minus one"),
            ("ce_position", "0"),
            ("ce_id", "not-a-uuid"),
            ("ce_metadata", "[1,2"),
            ("ce_recordedatns", "-5"),
        ] {
            let mut h = good.clone();
            h.insert(name.into(), bad.into());
            let err = decode(&h, Some(b"{}")).expect_err(name);
            assert!(err.contains(name) || err.contains("version") || err.contains("start at 1"), "{err}");
        }
        let mut h = good;
        h.remove("ce_subject");
        assert_eq!(decode(&h, None), Err("header ce_subject is missing".into()));
    }
}
