//! The storage engine port: an ordered key-value space with atomic batches.
//!
//! The event store keeps its whole layout (see ARCHITECTURE.md, "Storage layout") in one ordered
//! key space, so a single atomic batch covers an append's log frames, its indexes and any
//! checkpoints. Another engine replaces sled by implementing [`Storage`]; [`MemoryStorage`] is the
//! second implementation, used by tests.

mod memory;
mod sled_engine;

pub use memory::MemoryStorage;
pub use sled_engine::{SledConfig, SledStorage};

/// The sled tree that holds the store's key space.
pub const SLED_TREE: &str = "causeway";

/// A failure inside the storage engine (I/O, the engine's own corruption checks, a lock).
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct StorageError(pub String);

impl StorageError {
    pub(crate) fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// One write in a batch: a value to set, or `None` to remove the key.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A set of writes applied atomically: after a crash either all of them are visible or none.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub(crate) writes: Vec<Write>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    /// Number of writes queued.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The keys it writes or removes, in order (for engines and wrappers that inspect a batch).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.writes.iter().map(|(k, _)| k.as_slice())
    }
}

/// An ordered key-value engine. Keys compare as byte strings.
pub trait Storage: Send + Sync + 'static {
    /// A value (or key) handed out by reads; cheap to keep, no copy needed to decode it.
    type Value: AsRef<[u8]> + Send + 'static;
    /// A streaming range iterator, owning what it needs (it may outlive the borrow of `self`).
    type Iter: Iterator<Item = Result<(Self::Value, Self::Value), StorageError>> + Send + 'static;

    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StorageError>;

    /// Iterates the keys in `[start, end)`, ascending, or descending when `reverse`.
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter;

    /// Applies a batch atomically. Visible to reads at once; durable only after [`Storage::sync`].
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Makes everything applied so far durable against power loss.
    fn sync(&self) -> Result<(), StorageError>;

    /// Makes everything applied so far survive a crash of this process (not of the machine).
    /// Engines without a user-space buffer may make this a no-op.
    fn flush_to_os(&self) -> Result<(), StorageError>;

    /// Bytes the engine occupies on disk (0 for memory engines).
    fn size_on_disk(&self) -> Result<u64, StorageError>;

    /// The volume the engine's files live on: bytes available to it and in all (`None` for
    /// memory engines), for the disk-filling alert.
    fn volume_space(&self) -> Result<Option<VolumeSpace>, StorageError> {
        Ok(None)
    }
}

/// The space of a volume, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSpace {
    /// Available to this process.
    pub available: u64,
    /// In all.
    pub total: u64,
}
