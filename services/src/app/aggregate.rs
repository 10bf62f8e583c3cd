//! Loading an aggregate from its stream (load → decide → append's first step), snapshots taken
//! automatically past a length, a bounded cache of folded states that spares the replay when
//! the stream has not moved, and turning a decider's events into log events with derived ids.

use std::collections::HashMap;
use std::sync::Mutex;

use aggregates::codec::DomainEvent;
use aggregates::Decider;
use event_store::{EventStore, NewEvent, Storage, StreamId};
use uuid::Uuid;

use crate::app::error::LoadError;
use crate::app::messages::{self, derived_id};

/// Most conflict retries of one load → decide → append.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Rebuilds an aggregate from its stream (from `from` with state `state`).
pub fn load_from<S: Storage, D>(
    store: &EventStore<S>,
    stream: &StreamId,
    state: D,
    version: u64,
) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    let mut folded = Some(state);
    let last = store.fold_stream(stream, version + 1, |e| {
        let event = D::Event::decode(e.event_type, e.schema_version, e.payload).map_err(|error| {
            LoadError::Undecodable { stream: stream.to_string(), version: e.version, error }
        })?;
        folded = folded.take().map(|s| s.evolve(&event));
        Ok::<_, LoadError>(())
    })?;
    Ok((folded.unwrap_or_default(), last.unwrap_or(version)))
}

/// Rebuilds an aggregate from its whole stream.
pub fn load<S: Storage, D>(store: &EventStore<S>, stream: &StreamId) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    load_from(store, stream, D::default(), 0)
}

/// How one kind of aggregate is snapshotted: its state encoded under `schema`, saved each time an
/// append through a [`StateCache`] carries its stream past a multiple of `every` events (and when
/// a stream at least that long had to be folded whole), read back as the start of the next cold
/// load.
///
/// Snapshots are an optimisation, never needed for correctness, and never trusted over the log:
/// a snapshot records the id of the event at its version, and is used only when the stream still
/// holds that event there. One that cannot be used (undecodable, of a newer schema, or taken
/// after an event the stream does not hold at that version) is logged and counted
/// ([`unusable_snapshots`], the metric `causeway_snapshots_unusable_total`) and the stream is
/// folded from its start; one of an older schema is skipped quietly. Either is replaced by the
/// next snapshot.
#[derive(Debug, Clone)]
pub struct Snapshots<D> {
    every: u64,
    schema: u32,
    encode: fn(&D) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<D, String>,
}

static UNUSABLE_SNAPSHOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Snapshots found unusable by this process (also the metric `causeway_snapshots_unusable_total`).
pub fn unusable_snapshots() -> u64 {
    UNUSABLE_SNAPSHOTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where [`Snapshots::load`] started the fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From a snapshot.
    Snapshot,
    /// From the stream's start: there was no snapshot, or only one of an older schema.
    Events,
    /// From the stream's start, because the snapshot could not be used (counted and logged).
    Refused,
}

/// The bytes a snapshot's payload begins with: the id of the event at its version.
const SNAPSHOT_EVENT_ID: usize = 16;

impl<D> Snapshots<D>
where
    D: Decider,
    D::Event: DomainEvent,
{
    /// Snapshots in bincode under `schema` (bump it whenever the state's shape changes), every
    /// `every` events (at least 1).
    pub fn bincode(every: u64, schema: u32) -> Self
    where
        D: serde::Serialize + serde::de::DeserializeOwned,
    {
        Self {
            every: every.max(1),
            schema,
            encode: |state| bincode::serialize(state).map_err(|e| e.to_string()),
            decode: |bytes| bincode::deserialize(bytes).map_err(|e| e.to_string()),
        }
    }

    /// Events between snapshots.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// The id of the event at `version` of `stream` (None when the stream is shorter).
    fn event_at<S: Storage>(
        store: &EventStore<S>,
        stream: &StreamId,
        version: u64,
    ) -> Result<Option<Uuid>, event_store::Error> {
        match store.read_stream(stream, version, event_store::Direction::Forward).next() {
            Some(Ok(e)) if e.version == version => Ok(Some(e.event_id)),
            Some(Ok(_)) | None => Ok(None),
            Some(Err(e)) => Err(e),
        }
    }

    /// Loads the aggregate from its snapshot when there is a usable one and the events after it,
    /// else from its whole stream; with where the fold started.
    pub fn load<S: Storage>(
        &self,
        store: &EventStore<S>,
        stream: &StreamId,
    ) -> Result<(D, u64, Start), LoadError> {
        let unusable = |reason: String| {
            UNUSABLE_SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("causeway_snapshots_unusable_total").increment(1);
            tracing::warn!(%stream, %reason, "a snapshot cannot be used; folding the stream from its start");
        };
        let refused = match store.load_snapshot(stream) {
            Ok(None) => false,
            Ok(Some(snap)) if snap.schema_version == self.schema => {
                match self.usable(store, stream, &snap)? {
                    Ok(state) => {
                        let (state, version) = load_from(store, stream, state, snap.version)?;
                        return Ok((state, version, Start::Snapshot));
                    }
                    Err(reason) => {
                        unusable(reason);
                        true
                    }
                }
            }
            // Written by an older build: replaced at the next snapshot, not an error.
            Ok(Some(snap)) if snap.schema_version < self.schema => {
                tracing::debug!(%stream, schema = snap.schema_version, "an older snapshot is not read");
                false
            }
            Ok(Some(snap)) => {
                unusable(format!("schema {} from a newer build", snap.schema_version));
                true
            }
            Err(e) => {
                unusable(e.to_string());
                true
            }
        };
        let (state, version) = load(store, stream)?;
        Ok((state, version, if refused { Start::Refused } else { Start::Events }))
    }

    /// The state in `snap` if the stream still holds, at the snapshot's version, the event it
    /// was taken after; else why not.
    fn usable<S: Storage>(
        &self,
        store: &EventStore<S>,
        stream: &StreamId,
        snap: &event_store::Snapshot,
    ) -> Result<Result<D, String>, LoadError> {
        let Some((id, encoded)) = snap.payload.split_first_chunk::<SNAPSHOT_EVENT_ID>() else {
            return Ok(Err(format!("{} bytes: too short to be a snapshot", snap.payload.len())));
        };
        let taken_after = Uuid::from_bytes(*id);
        match Self::event_at(store, stream, snap.version)? {
            Some(held) if held == taken_after => {}
            Some(held) => {
                return Ok(Err(format!(
                    "taken after event {taken_after} at version {}, where the stream holds {held}",
                    snap.version
                )))
            }
            None => {
                let current = store.stream_version(stream)?;
                return Ok(Err(format!("taken at version {}, the stream is at {current}", snap.version)));
            }
        }
        Ok((self.decode)(encoded).map_err(|e| format!("undecodable: {e}")))
    }

    /// Saves a snapshot of `state` at `version` (the state once the stream holds `version`
    /// events; that event must be durable). A failure is logged and counted
    /// (`causeway_snapshots_failed_total`), not returned: the events are the truth, and the
    /// next snapshot tries again.
    pub fn save<S: Storage>(&self, store: &EventStore<S>, stream: &StreamId, state: &D, version: u64) {
        let failed = |error: String| {
            metrics::counter!("causeway_snapshots_failed_total").increment(1);
            tracing::warn!(%stream, %error, "a snapshot was not saved");
        };
        let id = match Self::event_at(store, stream, version) {
            Ok(Some(id)) => id,
            Ok(None) => return failed(format!("the stream holds no event at version {version}")),
            Err(e) => return failed(e.to_string()),
        };
        let encoded = match (self.encode)(state) {
            Ok(p) => p,
            Err(e) => return failed(format!("encoding: {e}")),
        };
        let mut payload = Vec::with_capacity(SNAPSHOT_EVENT_ID + encoded.len());
        payload.extend_from_slice(id.as_bytes());
        payload.extend_from_slice(&encoded);
        let snap = event_store::Snapshot { version, schema_version: self.schema, payload };
        if let Err(e) = store.save_snapshot(stream, &snap) {
            failed(e.to_string());
        }
    }

    /// After an append took the stream from `before` to `after` events (leaving it in `state`):
    /// saves a snapshot when the append passed a multiple of `every`.
    pub fn after_append<S: Storage>(
        &self,
        store: &EventStore<S>,
        stream: &StreamId,
        state: &D,
        before: u64,
        after: u64,
    ) {
        if after / self.every > before / self.every {
            self.save(store, stream, state, after);
        }
    }
}

/// Folded states of aggregates as the last command left them, at most `capacity` of them, and
/// optionally [`Snapshots`] of them: the load → decide → append cycle of a command handler
/// without the replay.
///
/// [`StateCache::load`] checks in the store whether the stream moved past the cached version
/// (one point read of the stream index) before it uses a cached state, and reads only the events
/// appended since (by this node or any other writer): the cache saves the replay, not the check.
/// A stream not cached is loaded from its snapshot (when there are snapshots) or its whole
/// stream. The state is *taken out* of the cache by the load, not copied: it goes back with
/// [`StateCache::appended`] (the decided state, kept only when the append wrote new events
/// right after the loaded version, not when it was answered as a repeat of an earlier append)
/// or [`StateCache::keep`] (the command changed nothing). A command that fails, or whose append
/// conflicts, leaves nothing cached, so its retry loads afresh; two commands on one stream at
/// once each load it (the second from the store), and their appends' expected versions settle
/// which one wins, as without the cache. The cache belongs to one open store: streams only grow
/// while it is open (the process holds the store's lock; a restore writes a fresh store, offline),
/// so a cached version is never ahead of its stream. When full, the cache forgets an arbitrary
/// entry (in hash order: random with respect to the stream id).
///
/// Used by the inventory service for its SKU streams (long, and hot under load); the order,
/// payment and shipment streams are a few events each, read once or twice per saga, so they are
/// replayed. `causeway bench aggregates` measures both ways on the peer's workload.
#[derive(Debug)]
pub struct StateCache<D> {
    states: Mutex<HashMap<String, (D, u64)>>,
    capacity: usize,
    snapshots: Option<Snapshots<D>>,
}

impl<D> StateCache<D>
where
    D: Decider,
    D::Event: DomainEvent,
{
    /// A cache of at most `capacity` states (at least 1), without snapshots.
    pub fn new(capacity: usize) -> Self {
        Self { states: Mutex::new(HashMap::new()), capacity: capacity.max(1), snapshots: None }
    }

    /// The same, loading streams not cached from their snapshots and taking them by `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Snapshots<D>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (D, u64)>> {
        // The map is consistent after any panic (every change is one insert or remove).
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The aggregate's state and version, taken out of the cache: the cached state brought up to
    /// the stream's version (unchanged when the stream has not moved), or, when it is not cached,
    /// its snapshot and the events after it, or a full replay. A stream at least one snapshot
    /// interval long that had to be folded whole is snapshotted now.
    pub fn load<S: Storage>(&self, store: &EventStore<S>, stream: &StreamId) -> Result<(D, u64), LoadError> {
        let cached = self.lock().remove(stream.as_str());
        if let Some((state, version)) = cached {
            if !store.has_events_after(stream, version)? {
                return Ok((state, version));
            }
            return load_from(store, stream, state, version);
        }
        let Some(snapshots) = &self.snapshots else { return load(store, stream) };
        let (state, version, start) = snapshots.load(store, stream)?;
        if start != Start::Snapshot && version >= snapshots.every {
            snapshots.save(store, stream, &state, version);
        }
        Ok((state, version))
    }

    /// Puts back a state the command did not change (it was refused, or decided nothing).
    pub fn keep(&self, stream: &StreamId, state: D, version: u64) {
        self.remember(stream, state, version);
    }

    /// After an append of the events decided from the state loaded at `loaded`: keeps
    /// `decided` (that state with the events folded in) if the append wrote them right after
    /// `loaded`, and snapshots it when the append passed a snapshot interval; forgets the stream
    /// otherwise (a repeat answered with an earlier append's result, or an append without a
    /// version check that landed elsewhere).
    pub fn appended<S: Storage>(
        &self,
        store: &EventStore<S>,
        stream: &StreamId,
        loaded: u64,
        decided: D,
        result: &event_store::AppendResult,
    ) {
        match result.streams.iter().find(|s| s.stream_id == stream.as_str()) {
            Some(s) if s.first_version == loaded + 1 && s.last_version >= s.first_version => {
                if let Some(snapshots) = &self.snapshots {
                    snapshots.after_append(store, stream, &decided, loaded, s.last_version);
                }
                self.remember(stream, decided, s.last_version)
            }
            _ => self.forget(stream),
        }
    }

    /// Remembers `state` at `version` (the stream's state once it holds `version` events).
    pub fn remember(&self, stream: &StreamId, state: D, version: u64) {
        let mut states = self.lock();
        if states.len() >= self.capacity && !states.contains_key(stream.as_str()) {
            if let Some(victim) = states.keys().next().cloned() {
                states.remove(&victim);
            }
        }
        states.insert(stream.as_str().to_owned(), (state, version));
    }

    /// Forgets a stream's state.
    pub fn forget(&self, stream: &StreamId) {
        self.lock().remove(stream.as_str());
    }

    /// States held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A decider's events as log events with ids derived from `cause` (one per stream and index).
pub fn events_for<E: DomainEvent>(
    events: &[E],
    cause: Uuid,
    stream: &StreamId,
    correlation: Uuid,
    causation: Uuid,
) -> Vec<NewEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            messages::domain_event(e, derived_id(cause, stream.as_str(), i), correlation, causation)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aggregates::inventory::{Inventory, InventoryCommand};
    use aggregates::Sku;
    use event_store::{ExpectedVersion, MemoryStorage, Snapshot, StoreConfig};

    use super::*;

    fn add(store_state: &Inventory, quantity: u64) -> Vec<aggregates::inventory::InventoryEvent> {
        let sku = Sku("SKU-1".into());
        store_state.decide(InventoryCommand::AddStock { sku, quantity }).expect("decide")
    }

    async fn append_as(
        store: &EventStore<MemoryStorage>,
        stream: &StreamId,
        version: u64,
        events: &[aggregates::inventory::InventoryEvent],
        cause: Uuid,
    ) -> event_store::AppendResult {
        let new = events_for(events, cause, stream, Uuid::nil(), Uuid::nil());
        store.append_to(stream, ExpectedVersion::Exact(version), new).await.expect("append")
    }

    async fn append(
        store: &EventStore<MemoryStorage>,
        stream: &StreamId,
        version: u64,
        events: &[aggregates::inventory::InventoryEvent],
    ) -> u64 {
        append_as(store, stream, version, events, Uuid::now_v7()).await.streams[0].last_version
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_state_is_caught_up_with_what_other_writers_appended() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("open");
        let stream = StreamId::new("inventory-SKU-1").expect("id");
        let cache = StateCache::<Inventory>::new(16);
        let (state, version) = cache.load(&store, &stream).expect("load");
        assert_eq!(version, 0);
        // This writer appends and keeps the state it decided.
        let events = add(&state, 5);
        let cause = Uuid::now_v7();
        let done = append_as(&store, &stream, version, &events, cause).await;
        let state = events.iter().fold(state, |s, e| s.evolve(e));
        cache.appended(&store, &stream, version, state.clone(), &done);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.load(&store, &stream).expect("cached"), (state.clone(), 1));
        assert!(cache.is_empty(), "a load takes the state out");
        cache.keep(&stream, state.clone(), 1);
        // The same command again (same event ids) is answered with the first append's result:
        // the state it would fold twice is not kept.
        let twice = events.iter().fold(state.clone(), |s, e| s.evolve(e));
        let repeat = append_as(&store, &stream, 1, &events, cause).await;
        assert_eq!(repeat.streams[0].last_version, 1, "a repeat, not a new event");
        cache.appended(&store, &stream, 1, twice, &repeat);
        assert!(cache.is_empty(), "a repeat's result is not cached");
        assert_eq!(cache.load(&store, &stream).expect("replayed"), (state.clone(), 1));
        cache.keep(&stream, state.clone(), 1);
        // Another writer (not through this cache) appends twice: the cache reads those two.
        let (other, v) = load::<_, Inventory>(&store, &stream).expect("other load");
        let more = add(&other, 7);
        let v = append(&store, &stream, v, &more).await;
        let other = more.iter().fold(other, |s, e| s.evolve(e));
        let again = add(&other, 1);
        append(&store, &stream, v, &again).await;
        let (got, version) = cache.load(&store, &stream).expect("caught up");
        assert_eq!(version, 3);
        assert_eq!(got.available, 13, "5 + 7 + 1 units, not the cached 5");
        assert_eq!(got, load::<_, Inventory>(&store, &stream).expect("replay").0);
        // Were a cached state ever ahead of its stream, its append would still conflict (the
        // expected version is the guard), and since the load took the state out, the retry
        // loads from the store.
        let mut ahead = got.clone();
        ahead.available = 999;
        cache.remember(&stream, ahead.clone(), 9);
        assert_eq!(cache.load(&store, &stream).expect("cached"), (ahead.clone(), 9));
        let new = events_for(&add(&ahead, 1), Uuid::now_v7(), &stream, Uuid::nil(), Uuid::nil());
        let err = store.append_to(&stream, ExpectedVersion::Exact(9), new).await.expect_err("conflict");
        assert!(matches!(err, event_store::Error::Conflict { actual: 3, .. }), "{err}");
        assert_eq!(cache.load(&store, &stream).expect("reloaded").0.available, 13);
    }

    /// A cache with snapshots every 10 events, over a fresh store.
    fn snapshotting() -> (EventStore<MemoryStorage>, StreamId, StateCache<Inventory>) {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("open");
        let stream = StreamId::new("inventory-SKU-1").expect("id");
        let cache = StateCache::<Inventory>::new(16).with_snapshots(Snapshots::bincode(10, 2));
        (store, stream, cache)
    }

    /// Load → decide → append of `units` single-unit additions in one append, through `cache`.
    async fn add_through(
        store: &EventStore<MemoryStorage>,
        stream: &StreamId,
        cache: &StateCache<Inventory>,
        units: u64,
    ) -> u64 {
        let (state, version) = cache.load(store, stream).expect("load");
        let mut events = Vec::new();
        let mut decided = state;
        for _ in 0..units {
            let e = add(&decided, 1);
            decided = e.iter().fold(decided, |s, e| s.evolve(e));
            events.extend(e);
        }
        let done = append_as(store, stream, version, &events, Uuid::now_v7()).await;
        cache.appended(store, stream, version, decided, &done);
        done.streams[0].last_version
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_that_passes_a_snapshot_interval_is_snapshotted_even_when_it_jumps_over_it() {
        let (store, stream, cache) = snapshotting();
        assert_eq!(add_through(&store, &stream, &cache, 9).await, 9);
        assert!(store.load_snapshot(&stream).expect("read").is_none(), "9 events: no snapshot yet");
        // 9 → 12 passes 10 without landing on it.
        assert_eq!(add_through(&store, &stream, &cache, 3).await, 12);
        let snap = store.load_snapshot(&stream).expect("read").expect("a snapshot past 10");
        assert_eq!(snap.version, 12);
        let (id, encoded) = snap.payload.split_at(SNAPSHOT_EVENT_ID);
        let twelfth = store.read_stream(&stream, 12, event_store::Direction::Forward).next();
        assert_eq!(id, twelfth.expect("event 12").expect("read").event_id.as_bytes(), "taken after event 12");
        let state: Inventory = bincode::deserialize(encoded).expect("decode");
        assert_eq!(state.available, 12);
        // Within the next interval: the snapshot stays where it was.
        assert_eq!(add_through(&store, &stream, &cache, 7).await, 19);
        assert_eq!(store.load_snapshot(&stream).expect("read").expect("snapshot").version, 12);
        assert_eq!(add_through(&store, &stream, &cache, 1).await, 20);
        assert_eq!(store.load_snapshot(&stream).expect("read").expect("snapshot").version, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_load_starts_from_the_snapshot_and_a_long_stream_folded_whole_is_snapshotted() {
        let (store, stream, _) = snapshotting();
        // 25 events written without any cache: no snapshot.
        let plain = StateCache::<Inventory>::new(16);
        add_through(&store, &stream, &plain, 25).await;
        assert!(store.load_snapshot(&stream).expect("read").is_none());
        // A snapshotting cache that has not seen the stream folds it whole, and snapshots it.
        let (_, _, cold) = snapshotting();
        let (state, version) = cold.load(&store, &stream).expect("load");
        assert_eq!((state.available, version), (25, 25));
        assert_eq!(store.load_snapshot(&stream).expect("read").expect("snapshot").version, 25);
        // The next cold load starts from the snapshot (marked here: it says 999 units), and
        // folds the events after it.
        let mut marked = state.clone();
        marked.available = 999;
        let snapshots = Snapshots::<Inventory>::bincode(10, 2);
        snapshots.save(&store, &stream, &marked, 24);
        assert_eq!(store.load_snapshot(&stream).expect("read").expect("snapshot").version, 24);
        let (state, version, start) = snapshots.load(&store, &stream).expect("load");
        assert_eq!((state.available, version, start), (1000, 25, Start::Snapshot), "999 + event 25");
        let (_, _, cold) = snapshotting();
        assert_eq!(cold.load(&store, &stream).expect("load").0.available, 1000);
        // No snapshot is saved at a version the stream does not hold.
        snapshots.save(&store, &stream, &marked, 26);
        assert_eq!(store.load_snapshot(&stream).expect("read").expect("snapshot").version, 24);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_the_stream_does_not_bear_out_is_not_used() {
        let (store, stream, _) = snapshotting();
        add_through(&store, &stream, &StateCache::new(16), 5).await;
        let snapshots = Snapshots::<Inventory>::bincode(10, 2);
        let mut marked = Inventory::default();
        marked.available = 999;
        let encoded = bincode::serialize(&marked).expect("encode");
        let third = store.read_stream(&stream, 3, event_store::Direction::Forward).next();
        let third = third.expect("event 3").expect("read").event_id;
        let save = |version: u64, id: Uuid, state: &[u8]| {
            let payload = [id.as_bytes().as_slice(), state].concat();
            store.save_snapshot(&stream, &Snapshot { version, schema_version: 2, payload }).expect("save")
        };
        // Bound to event 3 at version 3: used.
        save(3, third, &encoded);
        let (state, version, start) = snapshots.load(&store, &stream).expect("load");
        assert_eq!((state.available, version, start), (1001, 5, Start::Snapshot), "999 + events 4 and 5");
        // Ahead of its stream (version 50 of 5), bound to an event the stream does not hold
        // there, too short to hold an event id, or undecodable: folded from the start, counted.
        let before = unusable_snapshots();
        for (version, id, state) in [
            (50, third, encoded.as_slice()),
            (3, Uuid::now_v7(), encoded.as_slice()),
            (3, third, &[0xff_u8; 3][..]),
        ] {
            save(version, id, state);
            let (state, version, start) = snapshots.load(&store, &stream).expect("load");
            assert_eq!((state.available, version, start), (5, 5, Start::Refused), "folded from the start");
        }
        store
            .save_snapshot(&stream, &Snapshot { version: 3, schema_version: 2, payload: vec![1; 15] })
            .expect("save");
        assert_eq!(snapshots.load(&store, &stream).expect("load").2, Start::Refused);
        assert!(unusable_snapshots() >= before + 4, "each refusal is counted");
        // One of an older schema is skipped, not refused.
        store
            .save_snapshot(&stream, &Snapshot { version: 3, schema_version: 1, payload: vec![] })
            .expect("save");
        assert_eq!(snapshots.load(&store, &stream).expect("load").2, Start::Events);
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let cache = StateCache::<Inventory>::new(3);
        for i in 0..10 {
            cache.remember(&StreamId::new(format!("inventory-{i}")).expect("id"), Inventory::default(), 1);
            assert!(cache.len() <= 3);
        }
        let last = StreamId::new("inventory-9").expect("id");
        assert!(cache.lock().contains_key(last.as_str()), "the newest state is kept");
        cache.forget(&last);
        assert_eq!(cache.len(), 2);
    }
}
