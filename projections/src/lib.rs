//! Causeway's read side: named, checkpointed projections of the log.
//!
//! - [`store`]: read-model storage ([`ReadModels`]): JSON documents per projection and
//!   generation (LZ4-compressed past 128 bytes), written atomically with the projection's
//!   checkpoint (so an event is never
//!   applied twice or skipped, across crashes), and generations so a rebuild never blocks
//!   queries of the current model.
//! - [`runner`]: the [`Projection`] trait and its operations: run live (taking backups), full
//!   rebuild, replay from a timestamp (from the newest backup before it), as-of (the state at a
//!   time, into a separate model), lag. One writer per model at a time: a rebuild's switch never
//!   races the live runner's commits. A fold of 50,000 positions or more reads the log with the
//!   store's parallel read-ahead ([`Fold`]), so the folding thread does not wait on the engine.
//! - [`models`]: the read models (order summaries with customer history, stock levels, payment
//!   ledger, saga timelines, dead letters).

pub mod models;
pub mod runner;
pub mod store;

pub use runner::{
    as_of, catch_up, catch_up_with, rebuild, replay_from, run, run_with, verify, Fold, Projection, Rebuilt,
    RunOptions, KEEP_AS_OF,
};
pub use store::{ReadModels, Tx};

/// A read-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] event_store::StorageError),
    /// A stored document or pointer is damaged.
    #[error("corrupt read model: {0}")]
    Corrupt(String),
    /// An event the projection needs could not be read.
    #[error("event at position {position}: {reason}")]
    Event {
        /// Where.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A background task failed.
    #[error("task failed: {0}")]
    Task(String),
}

/// `Result` with [`ProjectionError`].
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
