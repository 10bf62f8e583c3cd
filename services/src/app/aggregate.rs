//! Loading an aggregate from its stream (load → decide → append's first step) and turning a
//! decider's events into log events with derived ids.

use aggregates::codec::DomainEvent;
use aggregates::Decider;
use event_store::{Direction, EventStore, NewEvent, Storage, StreamId};
use uuid::Uuid;

use crate::app::error::LoadError;
use crate::app::messages::{self, derived_id};

/// Most conflict retries of one load → decide → append.
pub const MAX_CONFLICT_RETRIES: usize = 8;

/// Rebuilds an aggregate from its stream (from `from` with state `state`).
pub fn load_from<S: Storage, D>(
    store: &EventStore<S>,
    stream: &StreamId,
    mut state: D,
    mut version: u64,
) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    for e in store.read_stream(stream, version + 1, Direction::Forward) {
        let e = e?;
        let event = D::Event::decode(&e.event_type, e.schema_version, &e.payload).map_err(|error| {
            LoadError::Undecodable { stream: stream.to_string(), version: e.version, error }
        })?;
        state = state.evolve(&event);
        version = e.version;
    }
    Ok((state, version))
}

/// Rebuilds an aggregate from its whole stream.
pub fn load<S: Storage, D>(store: &EventStore<S>, stream: &StreamId) -> Result<(D, u64), LoadError>
where
    D: Decider,
    D::Event: DomainEvent,
{
    load_from(store, stream, D::default(), 0)
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
