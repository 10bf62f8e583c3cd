//! The on-disk format, for tools that must produce or read the exact bytes the store writes
//! (benchmarks comparing against the raw engine, restore, offline inspection).

use crate::codec;
use crate::error::Result;
use crate::keys;
use crate::types::{NewEvent, RecordedEvent};

/// The name of the sled tree holding the store's key space.
pub const SLED_TREE: &str = crate::storage::SLED_TREE;

/// The key-value entries the writer stores for one event: the log record and its stream and
/// event-id index entries.
pub fn entries(
    position: u64,
    version: u64,
    recorded_at_ns: u64,
    stream: &str,
    event: &NewEvent,
) -> Result<[(Vec<u8>, Vec<u8>); 3]> {
    let body = codec::encode_body(stream, event)?;
    Ok([
        (keys::log(position).to_vec(), codec::record(position, version, recorded_at_ns, &body)),
        (keys::stream(stream, version), position.to_be_bytes().to_vec()),
        (keys::event_id(&event.event_id).to_vec(), position.to_be_bytes().to_vec()),
    ])
}

/// The key of the log record at `position`.
pub fn log_key(position: u64) -> [u8; 9] {
    keys::log(position)
}

/// The end (exclusive) of the log's key range.
pub fn log_end() -> [u8; 1] {
    keys::log_end()
}

/// Decodes and verifies a log record stored at `position`.
pub fn decode_record(bytes: &[u8], position: u64) -> Result<RecordedEvent> {
    codec::decode_record(bytes, position)
}
