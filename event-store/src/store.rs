//! [`EventStore`]: the append path (one writer thread, one syncer thread) and the read API.
//!
//! ```text
//!  append() ──validate + encode body──▶ channel ──▶ writer thread ──apply batch──▶ storage
//!     ▲                                               │ (check ids, versions,          │
//!     │                                               │  assign positions)             ▼
//!     └────────── reply once durable ◀── waiters ◀────┴──────────────── syncer thread: sync()
//! ```
//!
//! The writer drains every queued append into one group, checks it, and writes it as one atomic
//! batch; it does not wait for the disk. The syncer makes everything applied so far durable with
//! one sync (fsync mode: as soon as there is something to sync; periodic mode: every N ms) and
//! then answers every waiter the sync covered. While one sync runs the writer keeps applying the
//! next groups, so many concurrent appenders share each sync (group commit).
//!
//! Readers only see the durable prefix of the log: every read is capped at the durable position,
//! so no reader (or subscriber) acts on an event that a crash could still take back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::codec::{self, MAX_EVENT_BYTES};
use crate::error::{Error, Result};
use crate::frame::{self, FrameBuilder, FrameCache, RecordScan};
use crate::keys;
use crate::replay::{ParallelLogReader, ReadAhead};
use crate::storage::{Storage, StorageError, WriteBatch};
use crate::types::{
    category_of, time_to_nanos, AppendRequest, AppendResult, Direction, EventView, ExpectedVersion,
    RecordedEvent, Snapshot, StreamAppended, StreamId,
};

/// What [`EventStore::stored_as`] found for an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No event with that id.
    Absent,
    /// The same event (an append of it would be answered with its original result).
    Same {
        /// Its position.
        position: u64,
        /// Its version in its stream.
        version: u64,
    },
    /// Another event with that id (an append of it would be `EventIdReused`).
    Different {
        /// The stored event's position.
        position: u64,
    },
}

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Power-loss safe: each group is synced with `fdatasync` before it is acknowledged.
    #[default]
    Fsync,
    /// Process-crash safe: a flush of the writes out of the process starts every `interval` (or
    /// as soon as the previous one ends, if it took longer), and an append is acknowledged after
    /// the flush that covers it.
    Periodic {
        /// Flush interval.
        interval: Duration,
    },
}

/// Tuning of an [`EventStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Durability mode (default: fsync).
    pub durability: Durability,
    /// Most events the writer puts into one batch.
    pub max_group_events: usize,
    /// Most appends queued for the writer or waiting for their sync. Past it an append waits for
    /// room, up to `max_append_wait`, then fails with [`Error::Overloaded`].
    pub max_pending_appends: usize,
    /// How long an append waits for room in a full queue.
    pub max_append_wait: Duration,
    /// Fsync mode: how long a sync may wait for the appenders active at the end of the previous
    /// sync (those it answered and those still waiting) to append again, so one sync covers them
    /// all instead of alternating between halves of them. It waits only while fewer appends
    /// wait than there were active appenders, so a lone appender does not wait (except once,
    /// right after a burst of others); zero never waits; at most [`MAX_GROUP_COMMIT_WAIT`].
    pub group_commit_wait: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            max_group_events: 8192,
            max_pending_appends: DEFAULT_MAX_PENDING_APPENDS,
            max_append_wait: Duration::from_secs(30),
            group_commit_wait: DEFAULT_GROUP_COMMIT_WAIT,
        }
    }
}

/// The default of [`StoreConfig::group_commit_wait`]: about half a sync on a virtual disk.
pub const DEFAULT_GROUP_COMMIT_WAIT: Duration = Duration::from_micros(200);

/// The longest [`StoreConfig::group_commit_wait`] the store applies (longer ones are cut to it).
pub const MAX_GROUP_COMMIT_WAIT: Duration = Duration::from_millis(100);

/// The default of [`StoreConfig::max_pending_appends`].
pub const DEFAULT_MAX_PENDING_APPENDS: usize = 4_096;

/// An event body encoded on the appender's side.
struct PreparedEvent {
    event_id: Uuid,
    body: Vec<u8>,
}

struct PreparedStream {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<PreparedEvent>,
}

struct Prepared {
    streams: Vec<PreparedStream>,
    checkpoints: Vec<(String, u64)>,
}

/// Where an append's answer goes. It holds the append's place in the bounded queue until the
/// answer is sent, so a caller that gave up waiting does not free room its append still takes.
struct Reply {
    tx: oneshot::Sender<Result<AppendResult>>,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Reply {
    fn send(self, answer: Result<AppendResult>) -> std::result::Result<(), Result<AppendResult>> {
        // The place is free before the caller hears the answer.
        let Reply { tx, _place } = self;
        drop(_place);
        tx.send(answer)
    }
}

struct Job {
    request: Prepared,
    reply: Reply,
}

struct Waiter {
    seq: u64,
    reply: Reply,
    result: AppendResult,
}

#[derive(Default)]
struct SyncState {
    /// Batches applied by the writer.
    applied_seq: u64,
    /// Highest position applied.
    applied_position: u64,
    /// Batches made durable.
    durable_seq: u64,
    /// Answers waiting for a sync, in `seq` order.
    waiters: VecDeque<Waiter>,
    /// The writer has stopped; the syncer exits once everything is durable.
    writer_done: bool,
}

struct Shared {
    syncs: AtomicU64,
    /// Nanoseconds spent in syncs since open.
    sync_nanos: AtomicU64,
    sync: Mutex<SyncState>,
    wake: Condvar,
    durable_position: AtomicU64,
    durable_tx: watch::Sender<u64>,
    poisoned: OnceLock<String>,
}

impl Shared {
    /// The state of a store whose log ends at `head`.
    fn new(head: u64) -> Self {
        let (durable_tx, _) = watch::channel(head);
        Self {
            syncs: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            sync: Mutex::new(SyncState { applied_position: head, ..SyncState::default() }),
            wake: Condvar::new(),
            durable_position: AtomicU64::new(head),
            durable_tx,
            poisoned: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        // A panic while holding this lock would be a bug; keep serving with the data as is.
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn durable(&self) -> u64 {
        self.durable_position.load(Ordering::Acquire)
    }
}

struct Inner<S: Storage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    /// Room in the append queue: one permit per append queued or awaiting its sync.
    room: Arc<tokio::sync::Semaphore>,
    max_pending: usize,
    max_wait: Duration,
}

impl<S: Storage> Drop for Inner<S> {
    fn drop(&mut self) {
        // Closing the channel stops the writer; the syncer then makes the rest durable and stops.
        self.tx.take();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("event store thread panicked");
            }
        }
    }
}

/// The event log. Cheap to clone; the last clone dropped stops the writer after a final sync.
pub struct EventStore<S: Storage> {
    inner: Arc<Inner<S>>,
}

impl<S: Storage> Clone for EventStore<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<S: Storage> std::fmt::Debug for EventStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").field("durable_position", &self.head()).finish()
    }
}

pub(crate) const FORMAT_KEY: &str = "format";
/// 2: log records packed into frames (see `frame`); 3: one stream-index entry per run of a
/// stream's events in an append; 4: a short run's stream-index entry carries a copy of its
/// records. Stores of an older format are refused (`causeway migrate` converts them).
pub(crate) const FORMAT_VERSION: u64 = 4;

/// A run whose records take at most this many bytes (as a frame) keeps a copy of them in its
/// stream-index entry: a stream written one event at a time is then read by one scan of its
/// index, instead of one log lookup per event. Longer runs are read from the log, where their
/// records lie together.
pub(crate) const INLINE_RUN_BYTES: usize = 1024;

impl<S: Storage> EventStore<S> {
    /// Opens the store on `storage` and starts its writer and syncer threads.
    pub fn open(storage: S, config: StoreConfig) -> Result<Self> {
        let storage = Arc::new(storage);
        match storage.get(&keys::meta(FORMAT_KEY))? {
            Some(v) => {
                let found = codec::decode_u64(v.as_ref(), || "store format marker".into())?;
                if found == 3 {
                    // A format-3 store is a format-4 store without copies in its index (its runs
                    // are read from the log): it only needs the new marker, so builds that cannot
                    // read copies refuse it from now on.
                    let mut b = WriteBatch::default();
                    b.put(keys::meta(FORMAT_KEY), FORMAT_VERSION.to_be_bytes().to_vec());
                    storage.apply(b)?;
                    storage.sync()?;
                } else if found != FORMAT_VERSION {
                    return Err(Error::corrupt(
                        "store format marker",
                        format!(
                            "store format {found}, this build reads format {FORMAT_VERSION}: convert it with \
                             `causeway migrate`, or restore the node from Kafka"
                        ),
                    ));
                }
            }
            None => {
                let mut b = WriteBatch::default();
                b.put(keys::meta(FORMAT_KEY), FORMAT_VERSION.to_be_bytes().to_vec());
                storage.apply(b)?;
                storage.sync()?;
            }
        }
        let (head, last_ts) = match storage.range(&keys::log(0), &keys::log_end(), true).next() {
            None => (0, 0),
            Some(item) => {
                let (k, v) = item?;
                let pos =
                    keys::trailing_u64(k.as_ref()).ok_or_else(|| Error::corrupt("log key", "short key"))?;
                let h = codec::header(frame::record_at(v.as_ref(), pos, pos)?, pos)?;
                (pos, h.recorded_at_ns)
            }
        };
        let shared = Arc::new(Shared::new(head));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            storage: storage.clone(),
            shared: shared.clone(),
            head_cache: HashMap::new(),
            next_position: head + 1,
            last_ts,
            seq: 0,
            max_group_events: config.max_group_events.max(1),
        };
        let syncer = Syncer {
            storage: storage.clone(),
            shared: shared.clone(),
            durability: config.durability,
            group_wait: config.group_commit_wait.min(MAX_GROUP_COMMIT_WAIT),
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("causeway-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| StorageError(format!("spawn writer: {e}")))?,
            std::thread::Builder::new()
                .name("causeway-syncer".into())
                .spawn(move || syncer.run())
                .map_err(|e| StorageError(format!("spawn syncer: {e}")))?,
        ];
        let max_pending = config.max_pending_appends.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let room = Arc::new(tokio::sync::Semaphore::new(max_pending));
        Ok(Self {
            inner: Arc::new(Inner {
                storage,
                shared,
                tx: Some(tx),
                threads,
                room,
                max_pending,
                max_wait: config.max_append_wait,
            }),
        })
    }

    /// How many durability syncs have run since open (each covers a whole group of appends).
    pub fn sync_count(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    /// The time spent in durability syncs since open (with [`EventStore::sync_count`], what one
    /// sync costs).
    pub fn sync_time(&self) -> Duration {
        Duration::from_nanos(self.inner.shared.sync_nanos.load(Ordering::Relaxed))
    }

    /// The storage engine.
    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    /// Appends atomically; answers once the append is durable under the configured mode.
    ///
    /// Runs in a `store.append` span (the first stream, how many streams and events, the
    /// positions taken, and `commit_wait_us`: how long the append waited for the writer's group
    /// commit and its sync).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        let span = tracing::info_span!(
            target: "spans",
            "store.append",
            stream = request.streams.first().map(|s| s.stream.as_str()),
            streams = request.streams.len(),
            events = request.streams.iter().map(|s| s.events.len()).sum::<usize>(),
            first_position = tracing::field::Empty,
            last_position = tracing::field::Empty,
            commit_wait_us = tracing::field::Empty,
        );
        let recorded = span.clone();
        tracing::Instrument::instrument(
            async move {
                let result = self.append_queued(request, &recorded).await;
                if let Ok(r) = &result {
                    recorded.record("first_position", r.first_position);
                    recorded.record("last_position", r.last_position);
                }
                result
            },
            span,
        )
        .await
    }

    async fn append_queued(&self, request: AppendRequest, span: &tracing::Span) -> Result<AppendResult> {
        let prepared = prepare(request)?;
        if let Some(reason) = self.inner.shared.poisoned.get() {
            return Err(Error::Poisoned(reason.clone()));
        }
        // Hold a place in the bounded queue until the append is answered.
        let room = self.inner.room.clone();
        let place = match room.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(self.inner.max_wait, room.acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::Overloaded { pending: self.pending_appends() }),
            },
        };
        let (reply, rx) = oneshot::channel();
        let reply = Reply { tx: reply, _place: place };
        let tx = self.inner.tx.as_ref().ok_or(Error::Closed)?;
        let queued = Instant::now();
        tx.send(Job { request: prepared, reply }).map_err(|_| Error::Closed)?;
        let answer = rx.await.map_err(|_| Error::Closed)?;
        span.record("commit_wait_us", queued.elapsed().as_micros() as u64);
        answer
    }

    /// The live data by kind of entry: (kind, entries, bytes of keys and values), in key order.
    /// Kinds: log frames, stream index, event-id index, checkpoints, snapshots, store metadata,
    /// application data (read models). What the engine holds on disk beyond their sum is its own
    /// overhead and garbage. Reads every key: for reports, not for a hot path.
    pub fn space_by_kind(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        let kinds: [(u8, &'static str); 7] = [
            (keys::LOG, "log frames"),
            (keys::STREAM, "stream index"),
            (keys::EVENT_ID, "event-id index"),
            (keys::CHECKPOINT, "checkpoints"),
            (keys::SNAPSHOT, "snapshots"),
            (keys::META, "store metadata"),
            (keys::APP, "read models (application data)"),
        ];
        let mut out = Vec::new();
        for (tag, name) in kinds {
            let (mut n, mut bytes) = (0u64, 0u64);
            for item in self.inner.storage.range(&[tag], &[tag + 1], false) {
                let (k, v) = item?;
                n += 1;
                bytes += (k.as_ref().len() + v.as_ref().len()) as u64;
            }
            out.push((name, n, bytes));
        }
        Ok(out)
    }

    /// Appends queued for the writer or waiting for their sync.
    pub fn pending_appends(&self) -> usize {
        self.inner.max_pending - self.inner.room.available_permits().min(self.inner.max_pending)
    }

    /// The bound on [`EventStore::pending_appends`] ([`StoreConfig::max_pending_appends`]).
    pub fn max_pending_appends(&self) -> usize {
        self.inner.max_pending
    }

    /// Appends events to one stream.
    pub async fn append_to(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<crate::NewEvent>,
    ) -> Result<AppendResult> {
        self.append(AppendRequest::single(stream.clone(), expected, events)).await
    }

    /// Durably stores a checkpoint (in the same database, ordered with appends).
    pub async fn save_checkpoint(&self, name: &str, value: u64) -> Result<()> {
        let request = AppendRequest { streams: Vec::new(), checkpoints: vec![(name.to_owned(), value)] };
        self.append(request).await.map(|_| ())
    }

    /// Reads a checkpoint.
    pub fn checkpoint(&self, name: &str) -> Result<Option<u64>> {
        match self.inner.storage.get(&keys::checkpoint(name))? {
            None => Ok(None),
            Some(v) => codec::decode_u64(v.as_ref(), || format!("checkpoint {name}")).map(Some),
        }
    }

    /// Every checkpoint, by name.
    pub fn checkpoints(&self) -> Result<Vec<(String, u64)>> {
        let start = [keys::CHECKPOINT];
        let end = keys::prefix_end(&start);
        self.inner
            .storage
            .range(&start, &end, false)
            .map(|item| {
                let (k, v) = item?;
                let name = String::from_utf8_lossy(&k.as_ref()[1..]).into_owned();
                let value = codec::decode_u64(v.as_ref(), || format!("checkpoint {name}"))?;
                Ok((name, value))
            })
            .collect()
    }

    /// Why the store refuses writes, once a sync failed (`None` while it is healthy). A node
    /// checks it to stop instead of serving from a store that can no longer make data durable.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.shared.poisoned.get().cloned()
    }

    /// The durable head: the position of the last event readers can see (0 when empty).
    pub fn head(&self) -> u64 {
        self.inner.shared.durable()
    }

    /// A receiver that sees the durable head move.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.shared.durable_tx.subscribe()
    }

    /// Whether an append wrote an event after `version` of the stream, where `version` is one
    /// the stream reached at the end of an append (its version after it, or 0): every append
    /// starts a stream-index entry at the next version, so this is one point read, cheaper than
    /// [`EventStore::stream_version`]. The event may not be durable yet (readers see it once it
    /// is); a cache of folded state uses this to tell whether its state is still current.
    pub fn has_events_after(&self, stream: &StreamId, version: u64) -> Result<bool> {
        let Some(next) = version.checked_add(1) else { return Ok(false) };
        Ok(self.inner.storage.get(&keys::stream(stream.as_str(), next))?.is_some())
    }

    /// The stream's current version (0 when it has no events).
    pub fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        // The stream index alone answers this: its last key (skipping entries not yet durable).
        let prefix = keys::stream_prefix(stream.as_str());
        let durable = self.head();
        for item in self.inner.storage.range(&prefix, &keys::prefix_end(&prefix), true) {
            let (k, v) = item?;
            let run = Run::from_entry(k.as_ref(), v.as_ref())?;
            if run.position <= durable {
                // A run is one append's events of the stream: durable all together.
                return Ok(run.last_version());
            }
        }
        Ok(0)
    }

    /// Reads a stream from `from_version` (inclusive): forward to its end, or backward to its
    /// start (`u64::MAX` = from the last event).
    pub fn read_stream(&self, stream: &StreamId, from_version: u64, direction: Direction) -> StreamReader<S> {
        let prefix = keys::stream_prefix(stream.as_str());
        let mut pending = None;
        let (start, end, reverse) = match direction {
            Direction::Forward => {
                // Start at the run holding `from_version` (its key is the run's first version).
                // Every stream starts at version 1: from there, no need to look for the run.
                let holding = if from_version <= 1 {
                    Ok(None)
                } else {
                    run_holding(&*self.inner.storage, stream.as_str(), from_version)
                };
                let first = match holding {
                    Ok(Some((run, _))) => run.first_version,
                    Ok(None) => from_version,
                    Err(e) => {
                        pending = Some(e);
                        from_version
                    }
                };
                (keys::stream(stream.as_str(), first), keys::prefix_end(&prefix), false)
            }
            Direction::Backward => {
                let end = match from_version.checked_add(1) {
                    Some(v) => keys::stream(stream.as_str(), v),
                    None => keys::prefix_end(&prefix),
                };
                (prefix, end, true)
            }
        };
        StreamReader {
            index: self.inner.storage.range(&start, &end, reverse),
            store: self.clone(),
            frames: FrameCache::default(),
            limit: self.head(),
            reverse,
            from_version,
            run: None,
            inline: None,
            pending,
        }
    }

    /// Folds a stream's events from `from_version` (inclusive) forward, in place: `f` gets each
    /// one as an [`EventView`] borrowing the stored bytes (verified like any read), so nothing is
    /// copied per event. What a load by replay needs; [`EventStore::read_stream`] hands out owned
    /// events. Returns the version of the last event folded (`None` when there was none).
    pub fn fold_stream<E: From<Error>>(
        &self,
        stream: &StreamId,
        from_version: u64,
        mut f: impl FnMut(EventView<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<Option<u64>, E> {
        let mut reader = self.read_stream(stream, from_version, Direction::Forward);
        let mut last = None;
        while let Some(read) = reader.next_raw(|rec, h| {
            last = Some(h.version);
            codec::view_checked(rec, h).map_err(E::from).and_then(&mut f)
        }) {
            read??;
        }
        Ok(last)
    }

    /// Reads the global log from `from_position` (inclusive) up to the durable head.
    pub fn read_all(&self, from_position: u64) -> LogReader<S> {
        LogReader { scan: RecordScan::new(&*self.inner.storage, from_position, self.head()) }
    }

    /// Reads the global log from `from` (inclusive) to `to` (inclusive, capped at the head).
    pub fn read_range(&self, from: u64, to: u64) -> LogReader<S> {
        LogReader { scan: RecordScan::new(&*self.inner.storage, from, to.min(self.head())) }
    }

    /// Reads the global log from `from_position` to the current head with worker threads reading
    /// and decoding ahead of the caller ([`ParallelLogReader`]): for rebuilds and replays of a
    /// long range. Same events, same order, same errors as [`EventStore::read_all`].
    pub fn read_all_parallel(&self, from_position: u64, opts: ReadAhead) -> Result<ParallelLogReader> {
        ParallelLogReader::start(self, None, from_position, self.head(), opts)
    }

    /// [`EventStore::read_categories_until`] with worker threads reading and decoding ahead of
    /// the caller ([`ParallelLogReader`]).
    pub fn read_categories_parallel(
        &self,
        categories: &[&str],
        from_position: u64,
        until: u64,
        opts: ReadAhead,
    ) -> Result<ParallelLogReader> {
        let categories = categories.iter().map(|c| (*c).to_owned()).collect();
        ParallelLogReader::start(self, Some(categories), from_position, until.min(self.head()), opts)
    }

    /// Reads the global log from the first event recorded at or after `from`.
    pub fn read_from_time(&self, from: OffsetDateTime) -> Result<LogReader<S>> {
        Ok(self.read_all(self.seek_time(from)?))
    }

    /// The position of the first event recorded at or after `t` (head + 1 when there is none).
    /// A binary search over the log: recorded-at never decreases along it.
    pub fn seek_time(&self, t: OffsetDateTime) -> Result<u64> {
        let target = time_to_nanos(t);
        let (mut lo, mut hi) = (1, self.head() + 1);
        let mut frames = FrameCache::default();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = frames
                .with_record(&*self.inner.storage, mid, |r| Ok(codec::header(r, mid)?.recorded_at_ns))?;
            if at < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Reads the events of every stream in `category` from `from_position` (inclusive).
    pub fn read_category(&self, category: &str, from_position: u64) -> CategoryReader<S> {
        self.read_category_until(category, from_position, self.head())
    }

    /// Like [`EventStore::read_category`], up to `head` (inclusive; capped at the durable head).
    ///
    /// There is no category index: the reader scans the log and peeks each record's stream id
    /// (a few bytes after the fixed header), decoding only the records of the category. That
    /// keeps appends free of a category index; see ARCHITECTURE.md.
    pub fn read_category_until(&self, category: &str, from_position: u64, head: u64) -> CategoryReader<S> {
        self.read_categories_until(&[category], from_position, head)
    }

    /// The events of any of `categories` from `from_position` up to `head` (inclusive; capped at
    /// the durable head), in log order.
    pub fn read_categories_until(
        &self,
        categories: &[impl AsRef<str>],
        from_position: u64,
        head: u64,
    ) -> CategoryReader<S> {
        let head = head.min(self.head());
        CategoryReader {
            scan: RecordScan::new(&*self.inner.storage, from_position, head),
            categories: categories.iter().map(|c| c.as_ref().to_owned()).collect(),
        }
    }

    /// Reads one event by global position (None when beyond the durable head).
    pub fn read_event(&self, position: u64) -> Result<Option<RecordedEvent>> {
        if position == 0 || position > self.head() {
            return Ok(None);
        }
        frame::with_record(&*self.inner.storage, position, |r| codec::decode_record(r, position)).map(Some)
    }

    /// Finds a durable event by its id.
    pub fn find_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        match self.inner.storage.get(&keys::event_id(&event_id))? {
            None => Ok(None),
            Some(p) => {
                let pos = codec::decode_u64(p.as_ref(), || format!("event id index of {event_id}"))?;
                self.read_event(pos)
            }
        }
    }

    /// Whether `event` is in the log (by its id), and if so whether with the same content
    /// (`stream` and everything the appender chose): the check an idempotent append makes,
    /// without appending. Sees durable events only.
    pub fn stored_as(&self, stream: &StreamId, event: &crate::NewEvent) -> Result<Stored> {
        let Some(p) = self.inner.storage.get(&keys::event_id(&event.event_id))? else {
            return Ok(Stored::Absent);
        };
        let pos = codec::decode_u64(p.as_ref(), || format!("event id index of {}", event.event_id))?;
        if pos > self.head() {
            return Ok(Stored::Absent);
        }
        let body = codec::encode_body(stream.as_str(), event)?;
        frame::with_record(&*self.inner.storage, pos, |rec| {
            let h = codec::header(rec, pos)?;
            Ok(if codec::body(rec) == body.as_slice() {
                Stored::Same { position: pos, version: h.version }
            } else {
                Stored::Different { position: pos }
            })
        })
    }

    /// Stores a snapshot of a stream's state. Snapshots are an optimisation: they ride along with
    /// the next sync and are never needed for correctness.
    pub fn save_snapshot(&self, stream: &StreamId, snapshot: &Snapshot) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put(keys::snapshot(stream.as_str()), codec::encode_value(snapshot)?);
        self.inner.storage.apply(b)?;
        Ok(())
    }

    /// Loads a stream's snapshot, if any. A damaged snapshot is an error, not a silent miss.
    pub fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        match self.inner.storage.get(&keys::snapshot(stream.as_str()))? {
            None => Ok(None),
            Some(v) => codec::decode_value(v.as_ref(), &format!("snapshot of {stream}")).map(Some),
        }
    }

    /// Removes a stream's snapshot.
    pub fn delete_snapshot(&self, stream: &StreamId) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete(keys::snapshot(stream.as_str()));
        self.inner.storage.apply(b)?;
        Ok(())
    }

    /// A catch-up-then-live subscription to the whole log after position `after`.
    pub fn subscribe_all(&self, after: u64) -> crate::Subscription<S> {
        crate::Subscription::new(self.clone(), crate::subscription::Source::All, after)
    }

    /// A catch-up-then-live subscription to one category after position `after`.
    pub fn subscribe_category(&self, category: &str, after: u64) -> crate::Subscription<S> {
        self.subscribe_categories(&[category], after)
    }

    /// Like [`EventStore::subscribe_category`], for the events of any of `categories` (in log
    /// order). Records of other categories are skipped by their stream id, without decoding.
    pub fn subscribe_categories(&self, categories: &[impl AsRef<str>], after: u64) -> crate::Subscription<S> {
        crate::Subscription::new(
            self.clone(),
            crate::subscription::Source::Categories(
                categories.iter().map(|c| c.as_ref().to_owned()).collect(),
            ),
            after,
        )
    }

    /// Checks the whole log: gapless positions, checksums, non-decreasing timestamps, gapless
    /// stream versions, and that every index entry matches a record (so no half batch exists).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_observed(&|_| {})
    }

    /// [`verify`](Self::verify), telling `progress` the positions checked so far every 4,096
    /// events (for a progress bar: a large log takes minutes).
    pub fn verify_observed(&self, progress: &dyn Fn(u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut last_ts = 0;
        let storage = &self.inner.storage;
        let mut scan = RecordScan::new(&**storage, 1, u64::MAX);
        while let Some((pos, record)) = scan.next_record() {
            report.events += 1;
            if pos % 4096 == 0 {
                progress(pos);
            }
            if pos != report.events {
                report.problems.push(format!("gap: expected position {}, found {pos}", report.events));
                report.events = pos;
            }
            let (e, record) = match record.and_then(|r| Ok((codec::decode_record(r, pos)?, r))) {
                Ok(found) => found,
                Err(err) => {
                    report.problems.push(err.to_string());
                    continue;
                }
            };
            if e.recorded_at_ns < last_ts {
                report.problems.push(format!("position {pos}: recorded-at goes backwards"));
            }
            last_ts = e.recorded_at_ns;
            let v = versions.entry(e.stream_id.clone()).or_insert(0);
            if e.version != *v + 1 {
                report
                    .problems
                    .push(format!("position {pos}: {} version {} follows {}", e.stream_id, e.version, v));
            }
            *v = e.version;
            match run_holding(&**storage, &e.stream_id, e.version)? {
                Some((run, entry)) if run.position_of(e.version) == pos => {
                    // An inline copy must be the log's record, byte for byte, and hold the run
                    // (checked once per run, at its first version).
                    let holds_run = || {
                        let copy = entry.as_ref().get(codec::RUN_HEAD..).unwrap_or_default();
                        frame::parse(copy, run.position + run.count - 1)
                            .is_ok_and(|f| f.first == run.position)
                    };
                    if run.inline && e.version == run.first_version && !holds_run() {
                        report.problems.push(format!(
                            "stream index of {} version {}: its copy does not hold the run's {} records",
                            e.stream_id, e.version, run.count
                        ));
                    }
                    match run.inline.then(|| run.inline_record(entry.as_ref(), e.version)) {
                        Some(Ok(copy)) if copy != record => report.problems.push(format!(
                            "position {pos}: the stream index's copy of {} version {} differs from the log",
                            e.stream_id, e.version
                        )),
                        Some(Err(err)) => {
                            report.problems.push(format!("stream index of {}: {err}", e.stream_id))
                        }
                        _ => {}
                    }
                }
                _ => report.problems.push(format!("position {pos}: stream index entry missing or wrong")),
            }
            let idx = storage.get(&keys::event_id(&e.event_id))?;
            if idx.as_ref().map(|p| p.as_ref()) != Some(&pos.to_be_bytes()[..]) {
                report.problems.push(format!("position {pos}: event id index entry missing or wrong"));
            }
        }
        report.streams = versions.len() as u64;
        let mut indexed = 0u64;
        for item in storage.range(&[keys::STREAM], &[keys::STREAM + 1], false) {
            let (k, v) = item?;
            match Run::from_entry(k.as_ref(), v.as_ref()) {
                Ok(run) => indexed += run.count,
                Err(e) => report.problems.push(e.to_string()),
            }
        }
        if indexed != report.events {
            report.problems.push(format!("stream index entries cover {indexed} events of {}", report.events));
        }
        let n = storage.range(&[keys::EVENT_ID], &[keys::EVENT_ID + 1], false).count() as u64;
        if n != report.events {
            report.problems.push(format!("{n} event id index entries for {} events", report.events));
        }
        Ok(report)
    }
}

/// What [`EventStore::verify`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events in the log.
    pub events: u64,
    /// Distinct streams.
    pub streams: u64,
    /// Every inconsistency found (empty when the log is sound).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Validates a request and encodes its bodies (on the caller's task).
fn prepare(request: AppendRequest) -> Result<Prepared> {
    if request.streams.is_empty() && request.checkpoints.is_empty() {
        return Err(Error::InvalidAppend("no events and no checkpoints".into()));
    }
    let mut streams_seen = HashSet::new();
    let mut ids_seen = HashSet::with_capacity(request.event_count());
    let mut streams = Vec::with_capacity(request.streams.len());
    for s in request.streams {
        if s.events.is_empty() {
            return Err(Error::InvalidAppend(format!("no events for stream {}", s.stream)));
        }
        if !streams_seen.insert(s.stream.clone()) {
            return Err(Error::InvalidAppend(format!("stream {} appears twice", s.stream)));
        }
        let mut events = Vec::with_capacity(s.events.len());
        for e in &s.events {
            if !ids_seen.insert(e.event_id) {
                return Err(Error::InvalidAppend(format!("event id {} appears twice", e.event_id)));
            }
            if e.event_type.is_empty() || e.event_type.len() > 256 {
                return Err(Error::InvalidAppend(format!(
                    "event {}: type must be 1 to 256 bytes",
                    e.event_id
                )));
            }
            let body = codec::encode_body(s.stream.as_str(), e)?;
            if body.len() > MAX_EVENT_BYTES {
                return Err(Error::EventTooLarge {
                    event_id: e.event_id,
                    size: body.len(),
                    limit: MAX_EVENT_BYTES,
                });
            }
            events.push(PreparedEvent { event_id: e.event_id, body });
        }
        streams.push(PreparedStream { stream: s.stream.into(), expected: s.expected, events });
    }
    for (name, _) in &request.checkpoints {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::InvalidAppend("checkpoint names must be 1 to 256 bytes".into()));
        }
    }
    Ok(Prepared { streams, checkpoints: request.checkpoints })
}

/// What the writer decided for one request.
enum Plan {
    /// New events: write them. Carries the current version of each stream.
    New(Vec<u64>),
    /// Every event exists already: answer with the original result once those are durable.
    Duplicate(AppendResult, u64),
}

/// An event applied in the current group but not yet visible through storage reads.
struct GroupEvent {
    position: u64,
    version: u64,
    body: Vec<u8>,
}

/// Streams whose head version the writer remembers between groups (it is the only mutator, so
/// the cache is exact; it is cleared when full and after a failed batch). 100k streams cover
/// the streams of ~10k sagas in flight, in ~12 MiB; a miss costs one index seek.
const HEAD_CACHE_STREAMS: usize = 100_000;

struct Writer<S: Storage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
    head_cache: HashMap<String, u64>,
    next_position: u64,
    last_ts: u64,
    seq: u64,
    max_group_events: usize,
}

impl<S: Storage> Writer<S> {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut events = first.request.streams.iter().map(|s| s.events.len()).sum::<usize>();
            let mut group = vec![first];
            while events < self.max_group_events {
                match rx.try_recv() {
                    Ok(job) => {
                        events += job.request.streams.iter().map(|s| s.events.len()).sum::<usize>();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.process(group);
        }
        let mut st = self.shared.lock();
        st.writer_done = true;
        self.shared.wake.notify_all();
    }

    fn process(&mut self, group: Vec<Job>) {
        if let Some(reason) = self.shared.poisoned.get() {
            for job in group {
                let _ = job.reply.send(Err(Error::Poisoned(reason.clone())));
            }
            return;
        }
        let mut batch = WriteBatch::default();
        let mut heads: HashMap<String, u64> = HashMap::new();
        let mut group_events: HashMap<Uuid, GroupEvent> = HashMap::new();
        let mut accepted: Vec<(Reply, AppendResult)> = Vec::with_capacity(group.len());
        let mut duplicates: Vec<(Reply, AppendResult, u64)> = Vec::new();
        let start_position = self.next_position;
        let now = time_to_nanos(OffsetDateTime::now_utc()).max(self.last_ts);
        let mut frame = FrameBuilder::default();
        for job in group {
            match self.plan(&job.request, &heads, &group_events) {
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
                Ok(Plan::Duplicate(result, max_position)) => {
                    duplicates.push((job.reply, result, max_position))
                }
                Ok(Plan::New(versions)) => {
                    let staged = Staged { now, batch: &mut batch, frame: &mut frame };
                    let result = self.stage(job.request, versions, staged, &mut heads, &mut group_events);
                    accepted.push((job.reply, result));
                }
            }
        }
        if !frame.is_empty() {
            let (last, bytes) = frame.take();
            batch.put(keys::log(last).to_vec(), bytes);
        }
        let mut failed = None;
        if !batch.is_empty() {
            let events = self.next_position - start_position;
            if let Err(e) = self.storage.apply(batch) {
                tracing::error!(error = %e, "applying an append batch failed");
                // The batch is atomic: nothing of it was written. Undo the in-memory counters.
                self.next_position = start_position;
                for (reply, _) in accepted {
                    let _ = reply.send(Err(Error::Storage(e.clone())));
                }
                accepted = Vec::new();
                failed = Some(e);
            } else {
                self.last_ts = now;
                if self.head_cache.len() + heads.len() > HEAD_CACHE_STREAMS {
                    self.head_cache.clear();
                }
                self.head_cache.extend(heads);
                metrics::counter!("causeway_store_events_appended_total").increment(events);
                metrics::histogram!("causeway_store_group_events").record(events as f64);
            }
        }
        if accepted.is_empty() && duplicates.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let durable = self.shared.durable();
        // Every group before this one is durable.
        let earlier_durable = st.durable_seq >= self.seq;
        if !accepted.is_empty() {
            self.seq += 1;
            st.applied_seq = self.seq;
            st.applied_position = self.next_position - 1;
        }
        for (reply, result) in accepted {
            st.waiters.push_back(Waiter { seq: self.seq, reply, result });
        }
        for (reply, result, max_position) in duplicates {
            if max_position >= start_position {
                // Its original is in this very group: it shares the group's fate, and is
                // answered with the sync that covers this group, never before.
                match &failed {
                    Some(e) => {
                        let _ = reply.send(Err(Error::Storage(e.clone())));
                    }
                    None => st.waiters.push_back(Waiter { seq: self.seq, reply, result }),
                }
            } else if max_position <= durable || earlier_durable {
                let _ = reply.send(Ok(result));
            } else {
                // Its original is in an earlier group, applied but not yet durable: answer with
                // the next sync.
                st.waiters.push_back(Waiter { seq: self.seq, reply, result });
            }
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    fn head_of(&self, stream: &str, heads: &HashMap<String, u64>) -> Result<u64> {
        if let Some(v) = heads.get(stream).or_else(|| self.head_cache.get(stream)) {
            return Ok(*v);
        }
        let prefix = keys::stream_prefix(stream);
        match self.storage.range(&prefix, &keys::prefix_end(&prefix), true).next() {
            None => Ok(0),
            Some(item) => {
                let (k, v) = item?;
                Ok(Run::from_entry(k.as_ref(), v.as_ref())?.last_version())
            }
        }
    }

    fn plan(
        &self,
        req: &Prepared,
        heads: &HashMap<String, u64>,
        group: &HashMap<Uuid, GroupEvent>,
    ) -> Result<Plan> {
        // Idempotency first: a retry of a completed append must not fail its version check.
        let mut found = Vec::new();
        let mut missing = 0usize;
        for s in &req.streams {
            for e in &s.events {
                if let Some(g) = group.get(&e.event_id) {
                    found.push((s, e, g.position, g.version, g.body.as_slice() == e.body.as_slice()));
                    continue;
                }
                match self.storage.get(&keys::event_id(&e.event_id))? {
                    None => missing += 1,
                    Some(p) => {
                        let pos =
                            codec::decode_u64(p.as_ref(), || format!("event id index of {}", e.event_id))?;
                        let (version, same) = frame::with_record(&*self.storage, pos, |rec| {
                            Ok((codec::header(rec, pos)?.version, codec::body(rec) == e.body.as_slice()))
                        })?;
                        found.push((s, e, pos, version, same));
                    }
                }
            }
        }
        if !found.is_empty() {
            if let Some((_, e, ..)) = found.iter().find(|f| !f.4) {
                return Err(Error::EventIdReused {
                    event_id: e.event_id,
                    reason: "stored with different content (stream, type, payload or metadata)".into(),
                });
            }
            if missing > 0 {
                return Err(Error::EventIdReused {
                    event_id: found[0].1.event_id,
                    reason: "the request repeats only part of an earlier append".into(),
                });
            }
            let mut result = AppendResult { first_position: u64::MAX, last_position: 0, streams: Vec::new() };
            for s in &req.streams {
                let mine: Vec<_> = found.iter().filter(|f| std::ptr::eq(f.0, s)).collect();
                let first = mine.iter().map(|f| f.3).min().unwrap_or(0);
                let last = mine.iter().map(|f| f.3).max().unwrap_or(0);
                result.streams.push(StreamAppended {
                    stream_id: s.stream.clone(),
                    first_version: first,
                    last_version: last,
                });
            }
            for f in &found {
                result.first_position = result.first_position.min(f.2);
                result.last_position = result.last_position.max(f.2);
            }
            let max = result.last_position;
            return Ok(Plan::Duplicate(result, max));
        }
        let mut versions = Vec::with_capacity(req.streams.len());
        for s in &req.streams {
            let actual = self.head_of(&s.stream, heads)?;
            if !s.expected.accepts(actual) {
                return Err(Error::Conflict { stream: s.stream.clone(), expected: s.expected, actual });
            }
            versions.push(actual);
        }
        Ok(Plan::New(versions))
    }

    fn stage(
        &mut self,
        req: Prepared,
        versions: Vec<u64>,
        staged: Staged<'_>,
        heads: &mut HashMap<String, u64>,
        group: &mut HashMap<Uuid, GroupEvent>,
    ) -> AppendResult {
        let Staged { now, batch, frame } = staged;
        let first_position = if req.streams.is_empty() { 0 } else { self.next_position };
        let mut result =
            AppendResult { first_position, last_position: 0, streams: Vec::with_capacity(req.streams.len()) };
        for (s, mut version) in req.streams.into_iter().zip(versions) {
            let first_version = version + 1;
            let stream_first_position = self.next_position;
            let inline_bytes = s.events.iter().map(|e| 4 + codec::HEADER + e.body.len()).sum::<usize>();
            let mut inline = (frame::HEAD + inline_bytes <= INLINE_RUN_BYTES).then(FrameBuilder::default);
            for e in s.events {
                version += 1;
                let position = self.next_position;
                self.next_position += 1;
                let len = codec::HEADER + e.body.len();
                let write = |out: &mut Vec<u8>| codec::write_record(out, position, version, now, &e.body);
                if let Some((last, bytes)) = frame.push(position, len, write) {
                    batch.put(keys::log(last).to_vec(), bytes);
                }
                if let Some(inline) = inline.as_mut() {
                    inline.push_copy(position, frame.last_record());
                }
                batch.put(keys::event_id(&e.event_id).to_vec(), position.to_be_bytes().to_vec());
                group.insert(e.event_id, GroupEvent { position, version, body: e.body });
                result.last_position = position;
            }
            let count = version + 1 - first_version;
            let inline = inline.filter(|b| !b.is_empty()).map(|mut b| b.take().1);
            for (k, v) in
                stream_runs(&s.stream, first_version, stream_first_position, count, inline.as_deref())
            {
                batch.put(k, v);
            }
            heads.insert(s.stream.clone(), version);
            result.streams.push(StreamAppended { stream_id: s.stream, first_version, last_version: version });
        }
        for (name, value) in req.checkpoints {
            batch.put(keys::checkpoint(&name), value.to_be_bytes().to_vec());
        }
        result
    }
}

/// The stream-index entries of `count` consecutive versions of `stream` from `first_version`,
/// stored at consecutive positions from `first_position`: one entry per run (split only past
/// `u32::MAX` events), keyed by the run's first version. `inline` (a frame of the run's records,
/// for a short run) is copied into the entry.
pub(crate) fn stream_runs<'a>(
    stream: &'a str,
    first_version: u64,
    first_position: u64,
    count: u64,
    inline: Option<&'a [u8]>,
) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + 'a {
    let step = u64::from(u32::MAX);
    let inline = inline.filter(|_| count <= step);
    (0..count.div_ceil(step)).map(move |i| {
        let n = (count - i * step).min(step) as u32;
        (
            keys::stream(stream, first_version + i * step),
            codec::encode_run(first_position + i * step, n, inline),
        )
    })
}

/// A stream-index entry: the run of versions `[first_version, first_version + count)` at
/// positions from `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub first_version: u64,
    pub position: u64,
    pub count: u64,
    /// The entry holds a copy of the run's records (after [`codec::RUN_HEAD`]).
    pub inline: bool,
}

impl Run {
    fn from_entry(k: &[u8], v: &[u8]) -> Result<Self> {
        let location = || format!("stream index key {:?}", String::from_utf8_lossy(k));
        let first_version = keys::trailing_u64(k).ok_or_else(|| Error::corrupt(location(), "short key"))?;
        let (position, count, inline) = codec::decode_run(v, location)?;
        if first_version == 0 || first_version.checked_add(count).is_none() {
            return Err(Error::corrupt(location(), format!("run of {count} from version {first_version}")));
        }
        Ok(Self { first_version, position, count, inline })
    }

    /// The raw record of `version` (which the run must hold) from the entry's inline copy, whose
    /// value is `entry`.
    fn inline_record<'v>(&self, entry: &'v [u8], version: u64) -> Result<&'v [u8]> {
        let last = self.position + self.count - 1;
        frame::record_at(entry.get(codec::RUN_HEAD..).unwrap_or_default(), last, self.position_of(version))
    }

    fn last_version(&self) -> u64 {
        self.first_version + self.count - 1
    }

    /// The position of `version` (which the run must hold).
    fn position_of(&self, version: u64) -> u64 {
        self.position + (version - self.first_version)
    }
}

/// The stream-index entry holding `version` of `stream`, if any, and its value.
fn run_holding<S: Storage>(storage: &S, stream: &str, version: u64) -> Result<Option<(Run, S::Value)>> {
    let prefix = keys::stream_prefix(stream);
    let end = match version.checked_add(1) {
        Some(v) => keys::stream(stream, v),
        None => keys::prefix_end(&prefix),
    };
    match storage.range(&prefix, &end, true).next() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item?;
            let run = Run::from_entry(k.as_ref(), v.as_ref())?;
            Ok((run.last_version() >= version).then_some((run, v)))
        }
    }
}

/// Where [`Writer::stage`] puts a request's writes: the group's batch and its open log frame.
struct Staged<'a> {
    now: u64,
    batch: &'a mut WriteBatch,
    frame: &'a mut FrameBuilder,
}

struct Syncer<S: Storage> {
    storage: Arc<S>,
    shared: Arc<Shared>,
    durability: Durability,
    group_wait: Duration,
}

impl<S: Storage> Syncer<S> {
    fn run(self) {
        let mut last_sync = Instant::now();
        // The appenders the previous sync answered plus those still waiting then: the
        // appenders active now, which the next sync should cover together.
        let mut active = 0usize;
        loop {
            {
                let mut st = self.shared.lock();
                while st.applied_seq == st.durable_seq && !st.writer_done {
                    st = self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.applied_seq == st.durable_seq && st.writer_done {
                    return;
                }
            }
            if let Some(reason) = self.shared.poisoned.get() {
                let mut st = self.shared.lock();
                st.durable_seq = st.applied_seq;
                for w in st.waiters.drain(..) {
                    let _ = w.reply.send(Err(Error::Poisoned(reason.clone())));
                }
                continue;
            }
            match self.durability {
                Durability::Periodic { interval } => {
                    let due = last_sync + interval;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                Durability::Fsync if !self.group_wait.is_zero() => self.gather(active),
                Durability::Fsync => {}
            }
            let (target_seq, target_position) = {
                let st = self.shared.lock();
                (st.applied_seq, st.applied_position)
            };
            let started = Instant::now();
            let outcome = match self.durability {
                Durability::Fsync => self.storage.sync(),
                Durability::Periodic { .. } => self.storage.flush_to_os(),
            };
            // Flushes start every `interval`: the time a flush takes is not added to the wait.
            last_sync = started;
            let took = started.elapsed();
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
            self.shared.sync_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            metrics::histogram!("causeway_store_sync_seconds").record(took.as_secs_f64());
            let mut st = self.shared.lock();
            match outcome {
                Ok(()) => {
                    st.durable_seq = target_seq;
                    self.shared.durable_position.store(target_position, Ordering::Release);
                    self.shared.durable_tx.send_replace(target_position);
                    let mut answered = 0;
                    while st.waiters.front().is_some_and(|w| w.seq <= target_seq) {
                        if let Some(w) = st.waiters.pop_front() {
                            let _ = w.reply.send(Ok(w.result));
                            answered += 1;
                        }
                    }
                    active = answered + st.waiters.len();
                }
                Err(e) => {
                    // After a failed fsync the kernel may have dropped the dirty pages: nothing
                    // applied since the last good sync can be trusted. Refuse further writes.
                    tracing::error!(error = %e, "durability sync failed; the store is now read-only");
                    let reason = e.to_string();
                    let _ = self.shared.poisoned.set(reason.clone());
                    st.durable_seq = st.applied_seq;
                    for w in st.waiters.drain(..) {
                        let _ = w.reply.send(Err(Error::Poisoned(reason.clone())));
                    }
                }
            }
        }
    }
}

impl<S: Storage> Syncer<S> {
    /// Group commit: waits (up to `group_wait`) until as many appends wait for a sync as there
    /// were active appenders when the previous sync ended (`expected`), or the writer stops. With
    /// one appender it never waits; with ten, one sync covers all ten instead of alternating
    /// between two halves.
    fn gather(&self, expected: usize) {
        let now = Instant::now();
        let deadline = now.checked_add(self.group_wait).unwrap_or(now + Duration::from_secs(1));
        let mut st = self.shared.lock();
        while st.waiters.len() < expected && !st.writer_done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.shared.wake.wait_timeout(st, deadline - now).map_or_else(|p| p.into_inner().0, |r| r.0);
        }
    }
}

/// Iterator over a stream's events (see [`EventStore::read_stream`]).
pub struct StreamReader<S: Storage> {
    index: S::Iter,
    store: EventStore<S>,
    frames: FrameCache<S>,
    limit: u64,
    reverse: bool,
    from_version: u64,
    /// The run being read: the next version to return and how many of the run are left.
    run: Option<(Run, u64, u64)>,
    /// The run's index entry, when it holds the records.
    inline: Option<S::Value>,
    pending: Option<Error>,
}

impl<S: Storage> std::fmt::Debug for StreamReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").field("limit", &self.limit).finish()
    }
}

impl<S: Storage> Iterator for StreamReader<S> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_raw(codec::decode_checked).map(|r| r.and_then(|e| e))
    }
}

impl<S: Storage> StreamReader<S> {
    /// Runs `f` on the next record's bytes, verified (header, checksum, position), with its
    /// header; an error of the read itself instead when it fails.
    fn next_raw<T>(&mut self, f: impl FnOnce(&[u8], codec::Header) -> T) -> Option<Result<T>> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        loop {
            let (run, version) = match &mut self.run {
                Some((run, version, left)) if *left > 0 => {
                    let taken = (*run, *version);
                    *left -= 1;
                    if self.reverse {
                        *version = version.saturating_sub(1);
                    } else {
                        *version += 1;
                    }
                    taken
                }
                _ => {
                    let (k, v) = match self.index.next()? {
                        Ok(kv) => kv,
                        Err(e) => return Some(Err(e.into())),
                    };
                    let run = match Run::from_entry(k.as_ref(), v.as_ref()) {
                        Ok(run) => run,
                        Err(e) => return Some(Err(e)),
                    };
                    self.inline = run.inline.then_some(v);
                    // Only the versions from `from_version` on (forward) or up to it (backward).
                    self.run = if self.reverse {
                        let top = run.last_version().min(self.from_version);
                        (top >= run.first_version).then_some((run, top, top - run.first_version + 1))
                    } else {
                        let bottom = run.first_version.max(self.from_version);
                        (bottom <= run.last_version()).then_some((
                            run,
                            bottom,
                            run.last_version() - bottom + 1,
                        ))
                    };
                    continue;
                }
            };
            let pos = run.position_of(version);
            if pos > self.limit {
                if self.reverse {
                    continue; // newest first: skip what is not durable yet
                }
                return None;
            }
            if let Some(entry) = self.inline.as_ref().filter(|_| run.inline) {
                let copy = run.inline_record(entry.as_ref(), version);
                match copy.and_then(|rec| Ok((rec, codec::check_record(rec, pos)?))) {
                    Ok((rec, h)) => return Some(Ok(f(rec, h))),
                    // A damaged copy: the log still has the record (`verify` reports the copy).
                    Err(error) => {
                        tracing::warn!(%error, version, "damaged stream-index copy; reading the record from the log");
                        metrics::counter!("causeway_store_damaged_index_copies_total").increment(1);
                    }
                }
            }
            let storage = &*self.store.inner.storage;
            return Some(
                self.frames.with_record(storage, pos, |rec| Ok(f(rec, codec::check_record(rec, pos)?))),
            );
        }
    }
}

/// Iterator over the global log (see [`EventStore::read_all`]).
pub struct LogReader<S: Storage> {
    scan: RecordScan<S>,
}

impl<S: Storage> std::fmt::Debug for LogReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReader")
    }
}

impl<S: Storage> Iterator for LogReader<S> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let (pos, record) = self.scan.next_record()?;
        Some(record.and_then(|r| codec::decode_record(r, pos)))
    }
}

/// Iterator over a category (see [`EventStore::read_category`]).
pub struct CategoryReader<S: Storage> {
    scan: RecordScan<S>,
    categories: Vec<String>,
}

impl<S: Storage> std::fmt::Debug for CategoryReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CategoryReader").field("categories", &self.categories).finish()
    }
}

impl<S: Storage> Iterator for CategoryReader<S> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let categories = &self.categories;
            let (pos, record) = self.scan.next_record()?;
            let v = match record {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            let wanted = |stream: &str| categories.iter().any(|c| c == category_of(stream));
            match codec::peek_stream(v) {
                Some(stream) if !wanted(stream) => continue,
                // In the category, or unreadable: a full decode verifies it (and reports damage).
                _ => {
                    return Some(codec::decode_record(v, pos).and_then(|e| {
                        if wanted(&e.stream_id) {
                            Ok(e)
                        } else {
                            Err(Error::corrupt(
                                format!("position {pos}"),
                                "stream id does not match its record",
                            ))
                        }
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
