//! W3C trace context on the log: the `traceparent` (and `tracestate`) of the request that caused
//! an event, kept in the event's metadata, so one order's events carry one trace id on every
//! node, through the saga and through Kafka (where the relay also sends them as the CloudEvents
//! distributed-tracing extension, `ce_traceparent` / `ce_tracestate`).
//!
//! An HTTP request brings its context in the `traceparent` and `tracestate` headers, or gets a
//! new root. Every event it causes records that context, and so does every event those events
//! cause: a saga keeps the context of the order that started it for all its events and commands
//! (also those its timer causes), and a service's outputs take their command's. Events have
//! deterministic ids and an idempotent append compares their content, metadata included, so a
//! retried request with another context takes the context its first attempt recorded
//! ([`adopt_stored`]): a retry is the same request, not a new one.

use event_store::{EventStore, NewEvent, RecordedEvent, Storage};

/// Metadata key (and HTTP header) of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Metadata key (and HTTP header) of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` kept (the W3C limit for what a vendor must propagate).
pub const MAX_TRACESTATE: usize = 512;

/// A W3C trace context: `traceparent` (version 00) and an optional `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceContext {
    /// Reads a `traceparent` (and `tracestate`). `None` for a `traceparent` that is not a valid
    /// version-00 one (the receiver then starts a new trace, as the W3C recommendation says); a
    /// `tracestate` that is too long or not printable is dropped.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else { return None };
        let valid = *version == "00"
            && trace_id.len() == 32
            && parent_id.len() == 16
            && flags.len() == 2
            && [*trace_id, *parent_id, *flags].iter().all(|p| is_lower_hex(p))
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        if !valid {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_TRACESTATE && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Some(Self { traceparent: traceparent.trim().to_owned(), tracestate })
    }

    /// A new trace (random trace and parent ids, sampled).
    pub fn new_root() -> Self {
        let trace: u128 = rand::random::<u128>().max(1);
        let span: u64 = rand::random::<u64>().max(1);
        Self { traceparent: format!("00-{trace:032x}-{span:016x}-01"), tracestate: None }
    }

    /// The context an event recorded, if any (and valid).
    pub fn of_event(e: &RecordedEvent) -> Option<Self> {
        let parent = e.metadata.get(TRACEPARENT)?;
        Self::parse(parent, e.metadata.get(TRACESTATE).map(String::as_str))
    }

    /// The `traceparent`.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The parent id (16 hex digits): the span whose work this context's holder is part of.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0)
    }

    /// A context from its parts (`None` if they do not make a valid one).
    pub fn from_ids(trace_id: &str, parent_id: &str, flags: u8, tracestate: Option<&str>) -> Option<Self> {
        Self::parse(&format!("00-{trace_id}-{parent_id}-{flags:02x}"), tracestate)
    }

    /// The same trace (flags and state) under a new parent id: the context of an operation this
    /// holder starts.
    pub fn child(&self) -> Self {
        let span: u64 = rand::random::<u64>().max(1);
        Self {
            traceparent: format!("{}{span:016x}{}", &self.traceparent[..36], &self.traceparent[52..]),
            tracestate: self.tracestate.clone(),
        }
    }

    /// `event` with this context in its metadata.
    pub fn stamp(&self, event: NewEvent) -> NewEvent {
        let event = event.with_metadata(TRACEPARENT, self.traceparent.clone());
        match &self.tracestate {
            Some(state) => event.with_metadata(TRACESTATE, state.clone()),
            None => event,
        }
    }
}

/// `event` with `trace` in its metadata (unchanged without one).
pub fn traced(event: NewEvent, trace: Option<&TraceContext>) -> NewEvent {
    match trace {
        Some(t) => t.stamp(event),
        None => event,
    }
}

/// The context `events` record when their first one is stored already (a retried request): each
/// takes the stored one's context (or none, if it recorded none), so that the retry compares
/// equal to what its first attempt appended. Events not stored are left as they are.
pub fn adopt_stored<S: Storage>(
    store: &EventStore<S>,
    events: &mut [NewEvent],
) -> Result<(), event_store::Error> {
    let Some(first) = events.first() else { return Ok(()) };
    let Some(stored) = store.find_event(first.event_id)? else { return Ok(()) };
    for e in events.iter_mut() {
        for key in [TRACEPARENT, TRACESTATE] {
            match stored.metadata.get(key) {
                Some(v) => {
                    e.metadata.insert(key.to_owned(), v.clone());
                }
                None => {
                    e.metadata.remove(key);
                }
            }
        }
    }
    Ok(())
}

/// How long a retried request waits for an attempt of it still in flight (appended, not yet
/// durable, so not yet readable) before it is answered as overloaded (try again later).
pub const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Appends `events` (deterministic ids) to `stream`, each taking the trace context the same
/// events recorded if they are stored already. An attempt of the same request still in flight
/// is waited for, up to [`IN_FLIGHT_WAIT`], and its context adopted once it is durable; if it is
/// not by then, the answer is [`event_store::Error::Overloaded`] (the store is slow: try again),
/// not a reused key. What is still refused as a reused key is another request under the same ids
/// (stored, with other content).
pub async fn append_adopting<S: Storage>(
    store: &EventStore<S>,
    stream: &event_store::StreamId,
    expected: event_store::ExpectedVersion,
    mut events: Vec<NewEvent>,
) -> Result<event_store::AppendResult, event_store::Error> {
    let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
    let mut wait = std::time::Duration::from_millis(2);
    loop {
        adopt_stored(store, &mut events)?;
        match store.append_to(stream, expected, events.clone()).await {
            Err(reused @ event_store::Error::EventIdReused { .. }) => {
                let stored = match events.first() {
                    Some(first) => store.find_event(first.event_id)?.is_some(),
                    None => true,
                };
                if stored {
                    // Readable, adopted, and still different: another request.
                    return Err(reused);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(event_store::Error::Overloaded { pending: store.pending_appends() });
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_contexts_are_kept_and_invalid_ones_refused() {
        let t = TraceContext::parse(PARENT, Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
        let child = t.child();
        assert_eq!((child.trace_id(), child.flags(), child.tracestate()), (t.trace_id(), 1, t.tracestate()));
        assert_ne!(child.parent_id(), t.parent_id());
        assert_eq!(
            TraceContext::parse(child.traceparent(), None).map(|c| c.parent_id().to_owned()),
            Some(child.parent_id().to_owned())
        );
        assert_eq!(t.tracestate(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?}");
        }
        let long = "a".repeat(MAX_TRACESTATE + 1);
        assert_eq!(TraceContext::parse(PARENT, Some(&long)).expect("valid").tracestate(), None);
        assert_eq!(TraceContext::parse(PARENT, Some("a=\u{7}")).expect("valid").tracestate(), None);
    }

    #[test]
    fn a_new_root_is_a_valid_context() {
        let t = TraceContext::new_root();
        assert_eq!(TraceContext::parse(t.traceparent(), None), Some(t.clone()));
        assert_ne!(t.trace_id(), TraceContext::new_root().trace_id());
    }

    #[tokio::test]
    async fn a_retry_takes_the_context_its_first_attempt_recorded() {
        let store = EventStore::open(event_store::MemoryStorage::new(), event_store::StoreConfig::default())
            .expect("store");
        let stream = event_store::StreamId::new("order-1").expect("stream");
        let id = uuid::Uuid::now_v7();
        let first = TraceContext::new_root();
        let event = || NewEvent::json("OrderPlaced", b"{}".to_vec()).with_id(id);
        store
            .append_to(&stream, event_store::ExpectedVersion::Any, vec![first.stamp(event())])
            .await
            .expect("append");
        let mut retry = vec![TraceContext::new_root().stamp(event())];
        adopt_stored(&store, &mut retry).expect("adopt");
        assert_eq!(retry[0].metadata.get(TRACEPARENT).map(String::as_str), Some(first.traceparent()));
        store.append_to(&stream, event_store::ExpectedVersion::Any, retry).await.expect("the same append");
        // Without adopting, the retry is another request under the same id.
        let other = vec![TraceContext::new_root().stamp(event())];
        assert!(matches!(
            store.append_to(&stream, event_store::ExpectedVersion::Any, other).await,
            Err(event_store::Error::EventIdReused { .. })
        ));
    }
}
