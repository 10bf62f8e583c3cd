//! Record encoding.
//!
//! A log record is a fixed header followed by a bincode body:
//!
//! ```text
//! [format u8 = 1][crc32 u32 LE of bytes 5..][position u64 BE][version u64 BE][recorded_at_ns u64 BE][body]
//! ```
//!
//! The body (`BodyRef` written, `BodyView` read) holds everything the appender chose (stream, ids, type, metadata,
//! payload), so appenders encode it on their own tasks, in parallel; the single writer only fills
//! in the header. Equal bodies mean equal content, which is how an idempotent retry is checked.
//! The fixed header lets a timestamp seek read 8 bytes instead of decoding an event, and the
//! checksum lets a read report a damaged record by position instead of decoding garbage.

use std::collections::BTreeMap;

use bincode::Options;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::types::{EventView, NewEvent, RecordedEvent};

/// Largest encoded event body accepted by `append` (1 MiB): payload, metadata, ids and names.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

const FORMAT_V1: u8 = 1;
/// Bytes before the body.
pub(crate) const HEADER: usize = 29;

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_EVENT_BYTES as u64 + 64 * 1024)
}

/// Encodes an event body for `stream`.
pub(crate) fn encode_body(stream: &str, e: &NewEvent) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct BodyRef<'a> {
        stream_id: &'a str,
        event_id: &'a Uuid,
        event_type: &'a str,
        schema_version: u32,
        correlation_id: &'a Uuid,
        causation_id: &'a Uuid,
        metadata: &'a BTreeMap<String, String>,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
        content_type: &'a str,
    }
    let body = BodyRef {
        stream_id: stream,
        event_id: &e.event_id,
        event_type: &e.event_type,
        schema_version: e.schema_version,
        correlation_id: &e.correlation_id,
        causation_id: &e.causation_id,
        metadata: &e.metadata,
        payload: &e.payload,
        content_type: &e.content_type,
    };
    options().serialize(&body).map_err(|e| Error::InvalidAppend(format!("cannot encode event: {e}")))
}

/// Builds a record from a header and an encoded body.
pub(crate) fn record(position: u64, version: u64, recorded_at_ns: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    write_record(&mut out, position, version, recorded_at_ns, body);
    out
}

/// Appends a record to `out` (a log frame being built).
pub(crate) fn write_record(out: &mut Vec<u8>, position: u64, version: u64, recorded_at_ns: u64, body: &[u8]) {
    let start = out.len();
    out.push(FORMAT_V1);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&position.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&recorded_at_ns.to_be_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + 5..]);
    out[start + 1..start + 5].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub position: u64,
    pub version: u64,
    pub recorded_at_ns: u64,
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Reads the header without checking the checksum (for seeks; full reads verify it).
pub(crate) fn header(bytes: &[u8], position: u64) -> Result<Header> {
    if bytes.len() < HEADER {
        return Err(Error::corrupt(
            format!("position {position}"),
            format!("record of {} bytes is truncated", bytes.len()),
        ));
    }
    if bytes[0] != FORMAT_V1 {
        return Err(Error::corrupt(
            format!("position {position}"),
            format!("unknown record format {}", bytes[0]),
        ));
    }
    Ok(Header { position: be_u64(bytes, 5), version: be_u64(bytes, 13), recorded_at_ns: be_u64(bytes, 21) })
}

/// The stream id of a record without decoding it (bincode varint length, then the bytes).
/// `None` when the bytes are too short or not UTF-8; a full decode then reports the damage.
pub(crate) fn peek_stream(bytes: &[u8]) -> Option<&str> {
    let body = bytes.get(HEADER..)?;
    let (len, skip) = match *body.first()? {
        n @ 0..=250 => (usize::from(n), 1),
        251 => (usize::from(u16::from_le_bytes(body.get(1..3)?.try_into().ok()?)), 3),
        _ => return None, // stream ids are at most 256 bytes
    };
    std::str::from_utf8(body.get(skip..skip + len)?).ok()
}

/// The body bytes of a record (after the header).
pub(crate) fn body(bytes: &[u8]) -> &[u8] {
    bytes.get(HEADER..).unwrap_or_default()
}

/// Decodes and verifies the record stored at `position`.
pub(crate) fn decode_record(bytes: &[u8], position: u64) -> Result<RecordedEvent> {
    let h = check_record(bytes, position)?;
    decode_checked(bytes, h)
}

/// Verifies a record stored at `position` (header, checksum, position) and returns its header.
pub(crate) fn check_record(bytes: &[u8], position: u64) -> Result<Header> {
    let h = header(bytes, position)?;
    let mut crc = [0; 4];
    crc.copy_from_slice(&bytes[1..5]);
    if crc32fast::hash(&bytes[5..]) != u32::from_le_bytes(crc) {
        return Err(Error::corrupt(format!("position {position}"), "checksum mismatch"));
    }
    if h.position != position {
        return Err(Error::corrupt(
            format!("position {position}"),
            format!("record says it is at position {}", h.position),
        ));
    }
    Ok(h)
}

/// Decodes a record [`check_record`] passed.
pub(crate) fn decode_checked(bytes: &[u8], h: Header) -> Result<RecordedEvent> {
    view_checked(bytes, h).map(|v| v.to_recorded())
}

/// The body of a record, borrowed (bincode lays out a map and a sequence of pairs alike).
#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(borrow)]
    stream_id: &'a str,
    event_id: Uuid,
    #[serde(borrow)]
    event_type: &'a str,
    schema_version: u32,
    correlation_id: Uuid,
    causation_id: Uuid,
    #[serde(borrow)]
    metadata: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    payload: &'a [u8],
    #[serde(borrow)]
    content_type: &'a str,
}

/// A record [`check_record`] passed, read in place.
pub(crate) fn view_checked(bytes: &[u8], h: Header) -> Result<EventView<'_>> {
    let b: BodyView<'_> = options()
        .deserialize(bytes.get(HEADER..).unwrap_or_default())
        .map_err(|e| Error::corrupt(format!("position {}", h.position), e))?;
    Ok(EventView {
        position: h.position,
        stream_id: b.stream_id,
        version: h.version,
        event_id: b.event_id,
        event_type: b.event_type,
        schema_version: b.schema_version,
        recorded_at_ns: h.recorded_at_ns,
        correlation_id: b.correlation_id,
        causation_id: b.causation_id,
        metadata: b.metadata,
        payload: b.payload,
        content_type: b.content_type,
    })
}

/// Encodes a non-event value (snapshots, metadata) with a format byte and checksum.
pub(crate) fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let body = options().serialize(value).map_err(|e| Error::InvalidAppend(format!("cannot encode: {e}")))?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a value written by [`encode_value`]; `location` names it in errors.
pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8], location: &str) -> Result<T> {
    if bytes.len() < 5 || bytes[0] != FORMAT_V1 {
        return Err(Error::corrupt(location, "truncated or unknown format"));
    }
    let mut crc = [0; 4];
    crc.copy_from_slice(&bytes[1..5]);
    if crc32fast::hash(&bytes[5..]) != u32::from_le_bytes(crc) {
        return Err(Error::corrupt(location, "checksum mismatch"));
    }
    options().deserialize(&bytes[5..]).map_err(|e| Error::corrupt(location, e))
}

/// Bytes of a stream-index value before its inline records.
pub(crate) const RUN_HEAD: usize = 12;

/// A stream-index entry's value: the position of the first event of a run of the stream's
/// consecutive versions at consecutive positions, the run's length, and, for a short run, a copy
/// of its records as one log frame (`frame`), so a stream read needs no log lookup for them.
pub(crate) fn encode_run(position: u64, count: u32, inline: Option<&[u8]>) -> Vec<u8> {
    let inline = inline.unwrap_or_default();
    let mut v = Vec::with_capacity(RUN_HEAD + inline.len());
    v.extend_from_slice(&position.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(inline);
    v
}

/// Decodes a stream-index entry's value: `(first position, count, whether its records are
/// inline)`, count at least 1. The inline frame is checked where it is read.
pub(crate) fn decode_run(bytes: &[u8], location: impl Fn() -> String) -> Result<(u64, u64, bool)> {
    let damaged = |why: String| Error::corrupt(location(), why);
    let Some(head) = bytes.get(..RUN_HEAD) else {
        return Err(damaged(format!("expected at least {RUN_HEAD} bytes, found {}", bytes.len())));
    };
    let position =
        u64::from_be_bytes([head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]]);
    let count = u64::from(u32::from_be_bytes([head[8], head[9], head[10], head[11]]));
    if count == 0 || position == 0 || position.checked_add(count).is_none() {
        return Err(damaged(format!("run of {count} events at position {position}")));
    }
    Ok((position, count, bytes.len() > RUN_HEAD))
}

/// Reads a big-endian u64 value.
pub(crate) fn decode_u64(bytes: &[u8], location: impl FnOnce() -> String) -> Result<u64> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::corrupt(location(), format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (NewEvent, Vec<u8>) {
        let e = NewEvent::json("OrderPlaced", br#"{"a":1}"#.to_vec()).with_metadata("k", "v");
        let body = encode_body("order-1", &e).expect("encode");
        (e, body)
    }

    #[test]
    fn record_round_trips() {
        let (e, body) = sample();
        let rec = record(7, 3, 99, &body);
        let got = decode_record(&rec, 7).expect("decode");
        assert_eq!(got.position, 7);
        assert_eq!(got.version, 3);
        assert_eq!(got.recorded_at_ns, 99);
        assert_eq!(got.stream_id, "order-1");
        assert_eq!(got.event_id, e.event_id);
        assert_eq!(got.payload, e.payload);
        assert_eq!(got.metadata, e.metadata);
        assert_eq!(header(&rec, 7).expect("header").recorded_at_ns, 99);
        assert_eq!(peek_stream(&rec), Some("order-1"));
        let long = "x".repeat(256);
        let rec = record(1, 1, 1, &encode_body(&long, &e).expect("encode"));
        assert_eq!(peek_stream(&rec), Some(long.as_str()));
        assert_eq!(peek_stream(&rec[..HEADER + 2]), None);
    }

    #[test]
    fn a_view_reads_what_a_decode_reads() {
        let (e, body) = sample();
        let e = e.with_metadata("a", "1");
        let body2 = encode_body("order-1", &e).expect("encode");
        for body in [body, body2] {
            let rec = record(7, 3, 99, &body);
            let full = decode_record(&rec, 7).expect("decode");
            let view = view_checked(&rec, check_record(&rec, 7).expect("check")).expect("view");
            assert_eq!(view.payload, full.payload.as_slice());
            assert_eq!((view.position, view.version, view.recorded_at_ns), (7, 3, 99));
            assert_eq!(
                (view.stream_id, view.event_type),
                (full.stream_id.as_str(), full.event_type.as_str())
            );
            assert_eq!(
                (view.event_id, view.correlation_id, view.causation_id),
                (full.event_id, full.correlation_id, full.causation_id)
            );
            assert_eq!(
                (view.schema_version, view.content_type),
                (full.schema_version, full.content_type.as_str())
            );
            let meta: Vec<_> = full.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(view.metadata, meta);
            assert!(view_checked(&rec[..HEADER + 3], check_record(&rec, 7).expect("check")).is_err());
        }
    }

    #[test]
    fn flipped_bit_is_reported_with_its_position() {
        let (_, body) = sample();
        let mut rec = record(7, 3, 99, &body);
        let last = rec.len() - 1;
        rec[last] ^= 0x40;
        let err = decode_record(&rec, 7).unwrap_err();
        assert!(matches!(err, Error::Corrupt { ref location, .. } if location == "position 7"), "{err}");
    }

    #[test]
    fn misplaced_truncated_and_unknown_records_are_errors() {
        let (_, body) = sample();
        let rec = record(7, 3, 99, &body);
        assert!(decode_record(&rec, 8).is_err());
        assert!(decode_record(&rec[..10], 7).is_err());
        let mut other = rec.clone();
        other[0] = 9;
        assert!(decode_record(&other, 7).is_err());
    }

    #[test]
    fn values_round_trip_and_u64_must_be_eight_bytes() {
        let v = (1u32, "x".to_owned());
        let bytes = encode_value(&v).expect("encode");
        assert_eq!(decode_value::<(u32, String)>(&bytes, "x").expect("decode"), v);
        assert!(decode_value::<(u32, String)>(&bytes[..3], "x").is_err());
        assert_eq!(decode_u64(&7u64.to_be_bytes(), || "x".into()).expect("u64"), 7);
        assert!(decode_u64(&[1, 2, 3], || "x".into()).is_err());
    }
}
