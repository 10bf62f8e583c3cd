//! The log's vocabulary: stream ids, expected versions, new and recorded events.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_BYTES: usize = 256;

/// A validated stream id such as `order-0192...`. The category is the part before the first `-`
/// (the whole id when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Validates `id`: non-empty, at most [`MAX_STREAM_ID_BYTES`], no control characters or
    /// whitespace, and a non-empty category.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let bad = |reason| Err(Error::InvalidStreamId { id: id.clone(), reason });
        if id.is_empty() {
            return bad("empty");
        }
        if id.len() > MAX_STREAM_ID_BYTES {
            return bad("longer than 256 bytes");
        }
        if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("contains whitespace or a control character");
        }
        if id.starts_with('-') {
            return bad("empty category (starts with '-')");
        }
        Ok(Self(id))
    }

    /// `<category>-<id>`.
    pub fn compose(category: &str, id: impl fmt::Display) -> Result<Self> {
        Self::new(format!("{category}-{id}"))
    }

    /// The category: the prefix before the first `-`.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The category of a raw stream id.
pub fn category_of(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<StreamId> for String {
    fn from(s: StreamId) -> String {
        s.0
    }
}

impl std::str::FromStr for StreamId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// What the caller believes about a stream's version before appending.
///
/// Versions are 1-based: the first event of a stream has version 1, and a stream's version is
/// its number of events, so `Exact(0)` means the same as `NoStream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = none) satisfies this expectation.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id (uuid v7); a retry with the same id is idempotent.
    pub event_id: Uuid,
    /// Stable event name, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// The business flow this belongs to (saga / order id); defaults to the event id.
    pub correlation_id: Uuid,
    /// The message that caused this one; defaults to the event id.
    pub causation_id: Uuid,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The payload bytes (JSON of the domain event).
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
}

impl NewEvent {
    /// A JSON event with a fresh uuid v7 id, schema version 1, correlated with itself.
    pub fn json(event_type: impl Into<String>, payload: Vec<u8>) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            event_type: event_type.into(),
            schema_version: 1,
            correlation_id: event_id,
            causation_id: event_id,
            metadata: BTreeMap::new(),
            payload,
            content_type: "application/json".to_owned(),
        }
    }

    /// Sets the event id (and the default correlation/causation ids that pointed at it).
    pub fn with_id(mut self, id: Uuid) -> Self {
        if self.correlation_id == self.event_id {
            self.correlation_id = id;
        }
        if self.causation_id == self.event_id {
            self.causation_id = id;
        }
        self.event_id = id;
        self
    }

    /// Sets correlation and causation ids.
    pub fn caused_by(mut self, correlation_id: Uuid, causation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self.causation_id = causation_id;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// An event read in place ([`crate::EventStore::fold_stream`]): the fields of a
/// [`RecordedEvent`] borrowed from the stored record, so a fold copies and allocates nothing per
/// event (metadata entries aside). The record was verified (checksum, position) like any read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView<'a> {
    /// Global position.
    pub position: u64,
    /// The stream.
    pub stream_id: &'a str,
    /// Version within the stream.
    pub version: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Stable event name.
    pub event_type: &'a str,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// Commit time, UTC nanoseconds since the Unix epoch.
    pub recorded_at_ns: u64,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Uuid,
    /// Metadata, in key order.
    pub metadata: Vec<(&'a str, &'a str)>,
    /// Payload bytes.
    pub payload: &'a [u8],
    /// MIME type of the payload.
    pub content_type: &'a str,
}

impl EventView<'_> {
    /// The same event, owned.
    pub fn to_recorded(&self) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            stream_id: self.stream_id.to_owned(),
            version: self.version,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            recorded_at_ns: self.recorded_at_ns,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            metadata: self.metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            payload: self.payload.to_vec(),
            content_type: self.content_type.to_owned(),
        }
    }
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global position: 1-based, gapless, in commit order.
    pub position: u64,
    /// The stream.
    pub stream_id: String,
    /// Version within the stream: 1-based, gapless.
    pub version: u64,
    /// Event id.
    pub event_id: Uuid,
    /// Stable event name.
    pub event_type: String,
    /// Schema version of the payload.
    pub schema_version: u32,
    /// Commit time, UTC nanoseconds since the Unix epoch; never decreases along the log.
    pub recorded_at_ns: u64,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Causation id.
    pub causation_id: Uuid,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// MIME type of the payload.
    pub content_type: String,
}

impl RecordedEvent {
    /// Commit time.
    pub fn recorded_at(&self) -> OffsetDateTime {
        nanos_to_time(self.recorded_at_ns)
    }

    /// The stream's category.
    pub fn category(&self) -> &str {
        category_of(&self.stream_id)
    }
}

impl From<&RecordedEvent> for NewEvent {
    /// The event as it was appended (for copying a log elsewhere).
    fn from(e: &RecordedEvent) -> Self {
        NewEvent {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            metadata: e.metadata.clone(),
            payload: e.payload.clone(),
            content_type: e.content_type.clone(),
        }
    }
}

/// Converts a time to UTC nanoseconds since the epoch, clamped to `u64`.
pub fn time_to_nanos(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos().max(0)).unwrap_or(u64::MAX)
}

/// Converts UTC nanoseconds since the epoch to a time.
pub fn nanos_to_time(ns: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// One stream's part of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version check.
    pub expected: ExpectedVersion,
    /// The events, in order. Must not be empty.
    pub events: Vec<NewEvent>,
}

/// An atomic append to one or more streams, optionally moving checkpoints in the same write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendRequest {
    /// Streams and their events; positions are assigned in this order.
    pub streams: Vec<StreamAppend>,
    /// Checkpoints (name, value) written in the same atomic batch.
    pub checkpoints: Vec<(String, u64)>,
}

impl AppendRequest {
    /// An append to one stream.
    pub fn single(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self { streams: vec![StreamAppend { stream, expected, events }], checkpoints: Vec::new() }
    }

    /// Adds a stream to the request.
    pub fn and(mut self, stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        self.streams.push(StreamAppend { stream, expected, events });
        self
    }

    /// Adds a checkpoint written atomically with the events.
    pub fn with_checkpoint(mut self, name: impl Into<String>, value: u64) -> Self {
        self.checkpoints.push((name.into(), value));
        self
    }

    pub(crate) fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// Where one stream's events landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAppended {
    /// The stream.
    pub stream_id: String,
    /// Version of its first appended event.
    pub first_version: u64,
    /// Version of its last appended event (the stream's version after the append).
    pub last_version: u64,
}

/// The outcome of an append. A retry with the same event ids returns the same value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Global position of the first event (0 for a checkpoint-only write).
    pub first_position: u64,
    /// Global position of the last event (0 for a checkpoint-only write).
    pub last_position: u64,
    /// Per stream, in request order.
    pub streams: Vec<StreamAppended>,
}

impl AppendResult {
    /// The version the (first) stream reached.
    pub fn version(&self) -> u64 {
        self.streams.first().map_or(0, |s| s.last_version)
    }
}

/// A stored snapshot of a stream's folded state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream version the state includes.
    pub version: u64,
    /// Version of the state's encoding; a reader that does not know it ignores the snapshot.
    pub schema_version: u32,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending versions.
    Forward,
    /// Descending versions.
    Backward,
}
