//! Parallel read-ahead over the global log, for replays that read a long range.
//!
//! [`EventStore::read_all`] scans the engine and decodes each record on the caller's thread, so a
//! rebuild's fold waits for the engine and the decoder. [`ParallelLogReader`] splits the range
//! into fixed chunks of positions and hands them out round-robin to worker threads. Each worker
//! scans its chunks with its own engine iterator, verifies and decodes them, and passes each one
//! through a small bounded channel of its own. The caller takes the chunks in order from the
//! workers in turn, so events still arrive in log order, and at most `workers x depth` chunks are
//! decoded ahead of it. Dropping the reader stops the workers: their next send fails.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::storage::{Storage, StorageError};
use crate::store::EventStore;
use crate::types::RecordedEvent;

/// How a [`ParallelLogReader`] splits its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Positions per chunk (at least 1).
    pub chunk: u64,
    /// Chunks each worker may hold decoded ahead of the reader (at least 1).
    pub depth: usize,
}

impl Default for ReadAhead {
    /// As many workers as the machine has cores (at most 4), 4,096-event chunks, 2 ahead each.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self { workers: cores.clamp(1, 4), chunk: 4096, depth: 2 }
    }
}

type Chunk = Vec<Result<RecordedEvent>>;

/// Events `[from, to]` of the log, read ahead by worker threads (see the module docs).
pub struct ParallelLogReader {
    lanes: Vec<Receiver<Chunk>>,
    workers: Vec<JoinHandle<()>>,
    next_lane: usize,
    current: std::vec::IntoIter<Result<RecordedEvent>>,
    remaining_chunks: u64,
}

impl std::fmt::Debug for ParallelLogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelLogReader")
            .field("workers", &self.workers.len())
            .field("remaining_chunks", &self.remaining_chunks)
            .finish()
    }
}

impl ParallelLogReader {
    /// Reads `[from, to]`; with `categories`, only the events of those categories (the others
    /// are skipped undecoded, as [`EventStore::read_categories_until`] does).
    pub(crate) fn start<S: Storage>(
        store: &EventStore<S>,
        categories: Option<Vec<String>>,
        from: u64,
        to: u64,
        opts: ReadAhead,
    ) -> Result<Self> {
        let from = from.max(1);
        let chunk = opts.chunk.max(1);
        let chunks = if to < from { 0 } else { (to - from) / chunk + 1 };
        let workers = (opts.workers.max(1) as u64).min(chunks.max(1)) as usize;
        let mut lanes = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Chunk>(opts.depth.max(1));
            let store = store.clone();
            let categories = categories.clone();
            let handle = std::thread::Builder::new()
                .name(format!("log-read-ahead-{w}"))
                .spawn(move || {
                    let mut i = w as u64;
                    while i < chunks {
                        let start = from + i * chunk;
                        let end = start.saturating_add(chunk - 1).min(to);
                        let events: Chunk = match &categories {
                            None => store.read_range(start, end).collect(),
                            Some(c) => {
                                let c: Vec<&str> = c.iter().map(String::as_str).collect();
                                store.read_categories_until(&c, start, end).collect()
                            }
                        };
                        if tx.send(events).is_err() {
                            return; // the reader was dropped
                        }
                        i += workers as u64;
                    }
                })
                .map_err(|e| {
                    Error::Storage(StorageError::new(format!("cannot start a read-ahead thread: {e}")))
                })?;
            lanes.push(rx);
            handles.push(handle);
        }
        Ok(Self {
            lanes,
            workers: handles,
            next_lane: 0,
            current: Vec::new().into_iter(),
            remaining_chunks: chunks,
        })
    }
}

impl Iterator for ParallelLogReader {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.current.next() {
                return Some(e);
            }
            if self.remaining_chunks == 0 {
                return None;
            }
            self.remaining_chunks -= 1;
            let lane = self.next_lane;
            self.next_lane = (self.next_lane + 1) % self.lanes.len();
            match self.lanes[lane].recv() {
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(_) => {
                    // The worker ended without sending: it panicked.
                    self.remaining_chunks = 0;
                    return Some(Err(Error::Storage(StorageError::new("a read-ahead thread stopped"))));
                }
            }
        }
    }
}

impl Drop for ParallelLogReader {
    fn drop(&mut self) {
        // Closing the lanes makes every blocked or future send fail, so the workers end.
        self.lanes.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
