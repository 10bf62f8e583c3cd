//! The Causeway event store: an append-only log of domain events on an ordered key-value engine
//! (sled by default).
//!
//! - [`EventStore`] (module `store`): atomic multi-stream appends with optimistic concurrency
//!   ([`ExpectedVersion`]), idempotent event ids, one writer thread with group commit and
//!   fsync/periodic durability, reads by stream, global position, timestamp and category,
//!   checkpoints, snapshots and an integrity check.
//! - [`Subscription`] (module `subscription`): catch-up-then-live subscriptions to the whole log
//!   or to the events of some categories.
//! - [`ParallelLogReader`] (module `replay`): the log read and decoded ahead by worker threads,
//!   in order, for rebuilds and replays.
//! - [`storage`]: the engine port ([`Storage`]) with [`SledStorage`] and [`MemoryStorage`].
//! - [`raw`]: the exact on-disk bytes, for benchmarks; the importer that writes a log recorded
//!   elsewhere (restore from Kafka), a SHA-256 digest of a log, and the migration of a store of
//!   an older format ([`raw::migrate`]).
//! - `keys`, `frame` and `codec`: the on-disk layout, the log frames that pack consecutive records
//!   under one key, and the record format (documented in ARCHITECTURE.md).
//!
//! ```
//! # use event_store::*;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let store = EventStore::open(MemoryStorage::new(), StoreConfig::default())?;
//! let stream = StreamId::new("order-1")?;
//! let r = store.append_to(&stream, ExpectedVersion::NoStream, vec![NewEvent::json("OrderPlaced", b"{}".to_vec())]).await?;
//! assert_eq!((r.first_position, r.version()), (1, 1));
//! let events: Vec<_> = store.read_stream(&stream, 1, Direction::Forward).collect::<Result<_>>()?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok(()) }
//! ```

mod codec;
mod error;
mod frame;
pub(crate) mod keys;
pub mod raw;
mod replay;
pub mod storage;
mod store;
mod subscription;
mod types;

pub use codec::MAX_EVENT_BYTES;
pub use error::{Error, Result};
pub use keys::APP as APP_KEY_PREFIX;
pub use replay::{ParallelLogReader, ReadAhead};
pub use storage::{MemoryStorage, SledConfig, SledStorage, Storage, StorageError, VolumeSpace};
pub use store::{
    CategoryReader, Durability, EventStore, LogReader, StoreConfig, Stored, StreamReader, VerifyReport,
    DEFAULT_GROUP_COMMIT_WAIT, DEFAULT_MAX_PENDING_APPENDS, MAX_GROUP_COMMIT_WAIT,
};
pub use subscription::Subscription;
pub use types::{
    category_of, nanos_to_time, time_to_nanos, AppendRequest, AppendResult, Direction, EventView,
    ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StreamAppend, StreamAppended, StreamId,
    MAX_STREAM_ID_BYTES,
};
