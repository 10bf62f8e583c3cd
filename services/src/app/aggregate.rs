//! Loading an aggregate from its stream (load → decide → append's first step), a bounded cache
//! of folded states that spares the replay when the stream has not moved, and turning a
//! decider's events into log events with derived ids.

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

/// Folded states of aggregates as the last command left them, at most `capacity` of them.
///
/// [`StateCache::load`] checks in the store whether the stream moved past the cached version
/// (one point read of the stream index) before it uses a cached state, and reads only the events
/// appended since (by this node or any other writer): the cache saves the replay, not the check.
/// The append that follows still carries the expected version, so a race with another writer is
/// a conflict, as without the cache; on a conflict, [`StateCache::forget`] the stream before the
/// retry (that also covers a stream behind its cached version, as after a restore to an earlier
/// point, which the check cannot see). After the append,
/// [`StateCache::appended`] keeps the decided state only when the append wrote new events right
/// after the loaded version (not when it was answered as a repeat of an earlier append). When
/// full, it forgets an arbitrary entry (in hash order: random with respect to the stream id) to
/// make room. Offered to command handlers; the services' own handlers replay their streams,
/// which are short, and the benchmark `causeway bench aggregates` measures both.
#[derive(Debug)]
pub struct StateCache<D> {
    states: Mutex<HashMap<String, (D, u64)>>,
    capacity: usize,
}

impl<D> StateCache<D>
where
    D: Decider,
    D::Event: DomainEvent,
{
    /// A cache of at most `capacity` states (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { states: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (D, u64)>> {
        // The map is consistent after any panic (every change is one insert or remove).
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The aggregate's state and version: the cached state brought up to the stream's version
    /// (unchanged when the stream has not moved), or a full replay when it is not cached.
    pub fn load<S: Storage>(&self, store: &EventStore<S>, stream: &StreamId) -> Result<(D, u64), LoadError> {
        let cached = self.lock().get(stream.as_str()).cloned();
        let (state, version) = match cached {
            Some((state, version)) => {
                if !store.has_events_after(stream, version)? {
                    return Ok((state, version));
                }
                load_from(store, stream, state, version)?
            }
            None => load(store, stream)?,
        };
        self.remember(stream, state.clone(), version);
        Ok((state, version))
    }

    /// After an append of the events decided from the state loaded at `loaded`: keeps
    /// `decided` (that state with the events folded in) if the append wrote them right after
    /// `loaded`, forgets the stream otherwise (a repeat answered with an earlier append's
    /// result, or an append without a version check that landed elsewhere).
    pub fn appended(&self, stream: &StreamId, loaded: u64, decided: D, result: &event_store::AppendResult) {
        match result.streams.iter().find(|s| s.stream_id == stream.as_str()) {
            Some(s) if s.first_version == loaded + 1 && s.last_version >= s.first_version => {
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
    use event_store::{ExpectedVersion, MemoryStorage, StoreConfig};

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
        cache.appended(&stream, version, state.clone(), &done);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.load(&store, &stream).expect("cached"), (state.clone(), 1));
        // The same command again (same event ids) is answered with the first append's result:
        // the state it would fold twice is not kept.
        let twice = events.iter().fold(state.clone(), |s, e| s.evolve(e));
        let repeat = append_as(&store, &stream, 1, &events, cause).await;
        assert_eq!(repeat.streams[0].last_version, 1, "a repeat, not a new event");
        cache.appended(&stream, 1, twice, &repeat);
        assert!(cache.is_empty(), "a repeat's result is not cached");
        assert_eq!(cache.load(&store, &stream).expect("replayed"), (state.clone(), 1));
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
        // A cached state ahead of its stream (a store restored to an earlier point): its append
        // conflicts, the stream is forgotten, and the retry replays.
        let mut ahead = got.clone();
        ahead.available = 999;
        cache.remember(&stream, ahead.clone(), 9);
        assert_eq!(cache.load(&store, &stream).expect("cached"), (ahead.clone(), 9));
        let new = events_for(&add(&ahead, 1), Uuid::now_v7(), &stream, Uuid::nil(), Uuid::nil());
        let err = store.append_to(&stream, ExpectedVersion::Exact(9), new).await.expect_err("conflict");
        assert!(matches!(err, event_store::Error::Conflict { actual: 3, .. }), "{err}");
        cache.forget(&stream);
        assert_eq!(cache.load(&store, &stream).expect("reloaded").0.available, 13);
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
