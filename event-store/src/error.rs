//! The crate's one error type.

use uuid::Uuid;

use crate::storage::StorageError;
use crate::types::ExpectedVersion;

/// Everything the event store can refuse or fail with.
///
/// Client mistakes ([`Error::is_client_error`]) are separated from infrastructure failures so
/// callers can map them to "try again differently" versus "the node is unwell".
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: the stream is not at the version the caller expected.
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 = no stream).
        actual: u64,
    },
    /// A stream id that breaks the naming rules.
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidStreamId {
        /// The offending id.
        id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An event (encoded envelope) over the size limit.
    #[error("event {event_id} is {size} bytes encoded; the limit is {limit} bytes")]
    EventTooLarge {
        /// The event.
        event_id: Uuid,
        /// Its encoded size.
        size: usize,
        /// The limit ([`crate::MAX_EVENT_BYTES`]).
        limit: usize,
    },
    /// A malformed append request (no events, a stream twice, a repeated event id, ...).
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// An event id that is already stored with different content, or an append that repeats
    /// only part of an earlier append.
    #[error("event id {event_id} was already used: {reason}")]
    EventIdReused {
        /// The event id.
        event_id: Uuid,
        /// How the retry differs from the original.
        reason: String,
    },
    /// A stored record that cannot be decoded or fails its checksum.
    #[error("corrupt record at {location}: {reason}")]
    Corrupt {
        /// Where: `position N`, `stream index ...`, `checkpoint NAME`, ...
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A durability sync failed earlier; the store refuses writes until it is reopened.
    #[error("the store is failed after an unsuccessful sync ({0}); reopen it")]
    Poisoned(String),
    /// The append queue stayed full for longer than the configured wait: the node is past what
    /// its disk takes; try again later.
    #[error("the event store is overloaded: {pending} appends are waiting; try again later")]
    Overloaded {
        /// Appends queued or awaiting their sync.
        pending: usize,
    },
    /// The store has been closed.
    #[error("the event store is closed")]
    Closed,
}

impl Error {
    /// True for mistakes of the caller (bad input, wrong expected version), false for failures.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. }
                | Error::InvalidStreamId { .. }
                | Error::EventTooLarge { .. }
                | Error::InvalidAppend(_)
                | Error::EventIdReused { .. }
        )
    }

    pub(crate) fn corrupt(location: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt { location: location.into(), reason: reason.to_string() }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
