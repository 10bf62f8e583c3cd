//! Catch-up-then-live subscriptions.
//!
//! A subscription is a cursor on the global log (all of it, or the events of some categories).
//! It reads in chunks up to the durable head, and when it has caught up it waits for the head to
//! move, then reads again.
//! Catching up and following live are the same loop over positions, so there is no switch-over
//! where an event could be missed or delivered twice.

use std::collections::VecDeque;

use futures::Stream;

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::store::EventStore;
use crate::types::RecordedEvent;

const CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub(crate) enum Source {
    All,
    /// One or more categories (an event of any of them is delivered).
    Categories(Vec<String>),
}

/// A live subscription; see [`EventStore::subscribe_all`].
pub struct Subscription<S: Storage> {
    store: EventStore<S>,
    source: Source,
    /// The last position delivered (or the starting point).
    cursor: u64,
    buf: VecDeque<RecordedEvent>,
    /// Everything up to here was scanned (for a category: the events found are in `buf`).
    scanned: u64,
    head: tokio::sync::watch::Receiver<u64>,
}

impl<S: Storage> std::fmt::Debug for Subscription<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("source", &self.source).field("cursor", &self.cursor).finish()
    }
}

impl<S: Storage> Subscription<S> {
    pub(crate) fn new(store: EventStore<S>, source: Source, after: u64) -> Self {
        let head = store.watch_head();
        Self { store, source, cursor: after, buf: VecDeque::new(), scanned: after, head }
    }

    /// The position of the last event handed out (a checkpoint to resume from).
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// The next event, waiting for one to be appended when caught up. `None` once the store is
    /// closed and everything before that was delivered.
    pub async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                self.cursor = e.position;
                return Some(Ok(e));
            }
            self.cursor = self.cursor.max(self.scanned);
            let head = *self.head.borrow_and_update();
            if self.cursor < head {
                match self.fill().await {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.head.changed().await.is_err() {
                // Store closed: deliver what became durable before it closed, then end.
                if self.cursor < *self.head.borrow() {
                    continue;
                }
                return None;
            }
        }
    }

    /// The next event if one is available without waiting.
    pub async fn try_next(&mut self) -> Option<Result<RecordedEvent>> {
        if self.buf.is_empty() && self.cursor < self.store.head() {
            if let Err(e) = self.fill().await {
                return Some(Err(e));
            }
        }
        let e = self.buf.pop_front()?;
        self.cursor = e.position;
        Some(Ok(e))
    }

    async fn fill(&mut self) -> Result<()> {
        let store = self.store.clone();
        let source = self.source.clone();
        let from = self.cursor + 1;
        let chunk = tokio::task::spawn_blocking(move || -> Result<(Vec<RecordedEvent>, u64)> {
            let mut out = Vec::with_capacity(CHUNK);
            let mut last = from - 1;
            match source {
                Source::All => {
                    for e in store.read_all(from).take(CHUNK) {
                        let e = e?;
                        last = e.position;
                        out.push(e);
                    }
                }
                Source::Categories(cs) => {
                    // Bound the scan by a head taken before it, so "nothing more up to the
                    // head" is true of exactly the range scanned.
                    let head = store.head();
                    for e in store.read_categories_until(&cs, from, head).take(CHUNK) {
                        let e = e?;
                        last = e.position;
                        out.push(e);
                    }
                    if out.len() < CHUNK {
                        last = last.max(head);
                    }
                }
            }
            Ok((out, last))
        })
        .await
        .map_err(|e| Error::corrupt("subscription", format!("reader task failed: {e}")))??;
        let (events, scanned) = chunk;
        if events.is_empty() {
            // A category with no new events up to `scanned`: move past what was scanned.
            self.cursor = self.cursor.max(scanned);
        }
        self.scanned = scanned;
        self.buf.extend(events);
        Ok(())
    }

    /// This subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl Stream<Item = Result<RecordedEvent>> + Send {
        futures::stream::unfold(self, |mut sub| async move { sub.next().await.map(|e| (e, sub)) })
    }
}
