//! A checkpointed, partitioned consumer of the local log or of a Kafka partition (the same
//! handlers on either transport).
//!
//! One feed (a subscription to the local log, or one Kafka partition) reads events after the
//! consumer's checkpoint. Events the handler wants are
//! routed by a partition key to one of N workers (so events of one order stay in order, and
//! different orders proceed in parallel). The checkpoint is a watermark: every position at or
//! below it is done. Handlers write it in the same atomic append as their outputs, and the
//! consumer also saves it every second. After a crash the consumer resumes from the watermark;
//! anything after it that was already done is recognised by the handler (idempotent decisions and
//! deterministic event ids), so nothing is applied twice and nothing is skipped.
//!
//! A message that fails for good (poison, or transient failures past the retry budget) goes to
//! the consumer's dead-letter stream with the reason and the original event, and the consumer
//! moves on. Dead letters can be listed and re-driven ([`list_dead_letters`], [`redrive`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_store::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, Storage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::error::{HandlerError, Poison};
use crate::app::messages::{self, derived_id, DeadLetterResolved, DeadLettered};
use crate::app::telemetry;

/// What a consumer reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// The whole log.
    All,
    /// The events of these categories (other records are skipped without being decoded).
    Categories(Vec<String>),
}

/// A message handler run by a consumer ([`run`] on the local log, or on Kafka partitions).
pub trait Handler: Send + Sync + 'static {
    /// The consumer's name (its checkpoint and dead-letter stream).
    fn name(&self) -> &str;
    /// What to read.
    fn source(&self) -> Source;
    /// Whether to handle this event (others only move the checkpoint).
    fn accepts(&self, event: &RecordedEvent) -> bool;
    /// Events with the same key are handled in order, by one worker.
    fn partition_key(&self, event: &RecordedEvent) -> u64;
    /// Handles one event. It must be idempotent, and should append `checkpoint` with its outputs.
    fn handle(
        &self,
        event: &RecordedEvent,
        checkpoint: (String, u64),
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Consumer settings.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerConfig {
    /// Parallel workers.
    pub workers: usize,
    /// Attempts for a transiently failing message before it is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay (doubles each attempt).
    pub retry_base: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { workers: 32, max_attempts: 5, retry_base: Duration::from_millis(20) }
    }
}

#[derive(Debug, Default)]
struct Tracker {
    in_flight: BTreeSet<u64>,
    seen: u64,
}

impl Tracker {
    fn watermark(&self) -> u64 {
        self.in_flight.first().map_or(self.seen, |p| p - 1)
    }
}

/// The checkpoint of the consumer `consumer` on the local log (how far it has handled the log).
pub fn checkpoint_name(consumer: &str) -> String {
    format!("consumer.{consumer}")
}

/// Whether a node's consumers hold their inputs and have read from them once (`/readyz`).
/// Every consumer of Kafka is registered, not ready, when the node starts it; it reports ready
/// once the broker has answered a watermark request for each of its partitions, and is not
/// ready again once it ends. A consumer of the local log needs nothing: its input is always
/// there.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    waiting: Arc<Mutex<BTreeSet<String>>>,
    serving: Arc<std::sync::atomic::AtomicBool>,
}

impl Readiness {
    /// Registers a consumer that is not ready yet.
    pub fn expect(&self, consumer: &str) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(consumer.to_owned());
    }

    /// A registered consumer is ready.
    pub fn ready(&self, consumer: &str) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(consumer);
    }

    /// The node serves (or, with `false`, stops serving: it is draining).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, std::sync::atomic::Ordering::Release);
    }

    /// The consumers not ready yet.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The node serves and every consumer is ready.
    pub fn is_ready(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Acquire) && self.waiting().is_empty()
    }
}

/// One item of a consumer's feed: an event with its sequence number in the feed (its log
/// position locally, offset + 1 in a Kafka partition), or a record that could not be read.
#[derive(Debug)]
pub enum FeedItem {
    /// An event.
    Event(u64, RecordedEvent),
    /// A record that is not an event: dead-lettered as it is (`event` carries its raw bytes).
    Malformed(u64, RecordedEvent, String),
}

/// Runs `handler` on the local log until `shutdown` turns true; then stops reading, finishes what
/// was dispatched, saves the checkpoint and returns.
pub async fn run<S: Storage, H: Handler>(
    store: EventStore<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), event_store::Error> {
    let cp_name = checkpoint_name(handler.name());
    let start = store.checkpoint(&cp_name)?.unwrap_or(0);
    let sub = match handler.source() {
        Source::All => store.subscribe_all(start),
        Source::Categories(cs) => store.subscribe_categories(&cs, start),
    };
    let feed = futures::stream::unfold(sub, |mut sub| async move {
        let item = sub.next().await?;
        Some((item.map(|e| FeedItem::Event(e.position, e)), sub))
    });
    run_feed(store, handler, config, shutdown, cp_name, start, Box::pin(feed)).await
}

/// The checkpoint of `consumer` over one Kafka partition.
pub fn kafka_checkpoint_name(consumer: &str, topic: &str, partition: i32) -> String {
    format!("consumer.{consumer}@{topic}/{partition}")
}

/// Where a consumer of a Kafka partition resumes: the offset after the last one done.
pub fn kafka_resume_offset<S: Storage>(
    store: &EventStore<S>,
    consumer: &str,
    topic: &str,
    partition: i32,
) -> Result<u64, event_store::Error> {
    Ok(store.checkpoint(&kafka_checkpoint_name(consumer, topic, partition))?.unwrap_or(0))
}

/// Runs `handler` on `feed` (whose sequence numbers start after `start`), with checkpoint
/// `cp_name`, until `shutdown` turns true or the feed ends.
pub async fn run_feed<S: Storage, H: Handler>(
    store: EventStore<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    mut shutdown: watch::Receiver<bool>,
    cp_name: String,
    start: u64,
    mut feed: std::pin::Pin<Box<dyn futures::Stream<Item = Result<FeedItem, event_store::Error>> + Send>>,
) -> Result<(), event_store::Error> {
    use futures::StreamExt;
    let tracker = Arc::new(Mutex::new(Tracker { in_flight: BTreeSet::new(), seen: start }));
    let workers = config.workers.max(1);
    let mut senders = Vec::with_capacity(workers);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (tx, mut rx) = mpsc::channel::<(u64, RecordedEvent)>(1024);
        senders.push(tx);
        let handler = handler.clone();
        let tracker = tracker.clone();
        let store = store.clone();
        let cp_name = cp_name.clone();
        tasks.spawn(async move {
            while let Some((seq, event)) = rx.recv().await {
                // A message that could be neither handled nor dead-lettered stays in flight, so
                // the watermark never passes it: the consumer stops, and resumes before it.
                process(&store, handler.as_ref(), &event, &cp_name, &tracker, config).await?;
                lock(&tracker).in_flight.remove(&seq);
            }
            Ok::<(), event_store::Error>(())
        });
    }
    let mut saved = start;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            Some(ended) = tasks.join_next() => {
                // A worker only ends early on a failure it could not get past.
                let failure = match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => event_store::Error::Closed,
                    Err(e) => event_store::Error::Storage(event_store::StorageError(format!("a worker panicked: {e}"))),
                };
                tasks.abort_all();
                return Err(failure);
            }
            _ = tick.tick() => {
                // A store that failed a sync takes the consumer (and so the node) down, whether
                // or not there is a checkpoint to save.
                if let Some(reason) = store.poisoned() {
                    return Err(event_store::Error::Poisoned(reason));
                }
                let w = lock(&tracker).watermark();
                if w > saved {
                    store.save_checkpoint(&cp_name, w).await?;
                    saved = w;
                }
            }
            next = feed.next() => {
                let Some(item) = next else { break };
                match item? {
                    FeedItem::Event(seq, event) if handler.accepts(&event) => {
                        let worker = (handler.partition_key(&event) % workers as u64) as usize;
                        {
                            let mut t = lock(&tracker);
                            t.in_flight.insert(seq);
                            t.seen = seq;
                        }
                        if senders[worker].send((seq, event)).await.is_err() {
                            break;
                        }
                    }
                    FeedItem::Event(seq, _) => lock(&tracker).seen = seq,
                    FeedItem::Malformed(seq, raw, reason) => {
                        tracing::warn!(consumer = handler.name(), seq, %reason, "dead-lettering a malformed record");
                        metrics::counter!("causeway_dead_letters_total", "consumer" => handler.name().to_owned())
                            .increment(1);
                        dead_letter(&store, handler.name(), &raw, &reason).await?;
                        lock(&tracker).seen = seq;
                    }
                }
            }
        }
    }
    drop(senders);
    let mut failure = None;
    while let Some(ended) = tasks.join_next().await {
        if let Ok(Err(e)) = ended {
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let w = lock(&tracker).watermark();
    if w > saved {
        store.save_checkpoint(&cp_name, w).await?;
    }
    Ok(())
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handles one message: retries transient failures, dead-letters what fails for good. An error
/// means the message was neither handled nor dead-lettered (the store failed to take the dead
/// letter, again and again).
async fn process<S: Storage, H: Handler>(
    store: &EventStore<S>,
    handler: &H,
    event: &RecordedEvent,
    cp_name: &str,
    tracker: &Mutex<Tracker>,
    config: ConsumerConfig,
) -> Result<(), event_store::Error> {
    let span = tracing::info_span!(
        target: "spans",
        "consume",
        otel.kind = "consumer",
        consumer = handler.name(),
        stream = %event.stream_id,
        event_type = %event.event_type,
        position = event.position,
        correlation_id = %event.correlation_id,
        order_id = %event.correlation_id,
    );
    telemetry::follow_event(&span, event);
    handle_or_dead_letter(store, handler, event, (cp_name, tracker), config).instrument(span).await
}

async fn handle_or_dead_letter<S: Storage, H: Handler>(
    store: &EventStore<S>,
    handler: &H,
    event: &RecordedEvent,
    (cp_name, tracker): (&str, &Mutex<Tracker>),
    config: ConsumerConfig,
) -> Result<(), event_store::Error> {
    let mut delay = config.retry_base;
    let mut attempt = 0;
    let reason = loop {
        attempt += 1;
        let checkpoint = (cp_name.to_owned(), lock(tracker).watermark());
        let span = tracing::info_span!(
            target: "spans",
            "handle",
            consumer = handler.name(),
            attempt,
            correlation_id = %event.correlation_id,
            order_id = %event.correlation_id,
            outcome = tracing::field::Empty,
        );
        let handled = handler.handle(event, checkpoint).instrument(span.clone()).await;
        span.record(
            "outcome",
            match &handled {
                Ok(()) => "handled",
                Err(HandlerError::Poison(_)) => "poison",
                Err(HandlerError::Transient(_)) => "transient",
            },
        );
        match handled {
            Ok(()) => return Ok(()),
            Err(HandlerError::Poison(reason)) => break reason.to_string(),
            Err(HandlerError::Transient(reason)) if attempt >= config.max_attempts => {
                break format!("retries exhausted after {attempt} attempts: {reason}");
            }
            Err(HandlerError::Transient(reason)) => {
                tracing::debug!(consumer = handler.name(), position = event.position, %reason, "retrying");
                let jitter = rand::random::<f64>() * 0.5 + 0.75;
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::warn!(consumer = handler.name(), position = event.position, %reason, "dead-lettering a message");
    metrics::counter!("causeway_dead_letters_total", "consumer" => handler.name().to_owned()).increment(1);
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=DEAD_LETTER_ATTEMPTS {
        match dead_letter(store, handler.name(), event, &reason).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == DEAD_LETTER_ATTEMPTS || store.poisoned().is_some() => {
                tracing::error!(consumer = handler.name(), position = event.position, error = %e,
                    "writing a dead letter failed; the consumer stops before this message");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(consumer = handler.name(), error = %e, retry_in = ?delay, "writing a dead letter failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    Ok(())
}

/// The most of an original payload a dead letter keeps (as text, and whole for a re-drive): a
/// letter stays under the store's event size limit even when every byte of the text needs a
/// six-byte JSON escape.
const MAX_KEPT_PAYLOAD: usize = 96 * 1024;

/// The most of an original's metadata (as JSON) a dead letter keeps for a re-drive: with the
/// payload's share above, a letter stays under the store's event size limit. An original with
/// more (a foreign producer's headers, through Kafka) gets a letter that does not keep it.
const MAX_KEPT_METADATA: usize = 64 * 1024;

/// The most of the reason a dead letter records.
const MAX_REASON: usize = 8 * 1024;

/// The most of the original's stream id, type and content type a dead letter records: a Kafka
/// record's key and headers can be any length. An original with a longer one is not kept.
const MAX_NAME: usize = 1024;

/// The most a dead letter's JSON may take: the store's event limit, less room for the record's
/// own header, stream id and trace context.
const MAX_LETTER: usize = event_store::MAX_EVENT_BYTES - 16 * 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Tries to write a dead letter before the consumer gives up (and stops).
const DEAD_LETTER_ATTEMPTS: u32 = 8;

/// Appends a dead letter for `event` (idempotent: one per consumer and event).
pub async fn dead_letter<S: Storage>(
    store: &EventStore<S>,
    consumer: &str,
    event: &RecordedEvent,
    reason: &str,
) -> Result<(), event_store::Error> {
    // The original is kept whole when it is a recorded event (not a Kafka record that failed to
    // decode: there is nothing to re-drive) and small enough for the letter to fit in an event.
    let metadata_len = serde_json::to_vec(&event.metadata).map_or(usize::MAX, |m| m.len());
    let keep = event.version > 0
        && event.payload.len() <= MAX_KEPT_PAYLOAD
        && metadata_len <= MAX_KEPT_METADATA
        && [&event.stream_id, &event.event_type, &event.content_type].iter().all(|n| n.len() <= MAX_NAME);
    let text = cut(String::from_utf8_lossy(&event.payload).into_owned(), MAX_KEPT_PAYLOAD);
    let mut letter = DeadLettered {
        consumer: consumer.to_owned(),
        reason: cut(reason.to_owned(), MAX_REASON),
        position: event.position,
        stream_id: cut(event.stream_id.clone(), MAX_NAME),
        event_id: event.event_id,
        event_type: cut(event.event_type.clone(), MAX_NAME),
        payload: text,
        original: keep.then(|| messages::OriginalEvent {
            version: event.version,
            schema_version: event.schema_version,
            recorded_at_ns: event.recorded_at_ns,
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            metadata: event.metadata.clone(),
            content_type: event.content_type.clone(),
            payload_base64: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&event.payload)
            },
        }),
    };
    let mut json = serde_json::to_vec(&letter).unwrap_or_default();
    if json.len() > MAX_LETTER {
        // Not reached with the caps above (the worst case escapes every byte); if it were, the
        // letter still goes in, with less of the original, rather than failing the consumer.
        letter.original = None;
        letter.payload = cut(std::mem::take(&mut letter.payload), 4 * 1024);
        json = serde_json::to_vec(&letter).unwrap_or_default();
    }
    let stream = messages::dead_letter_stream(consumer)?;
    let e = NewEvent::json("DeadLettered", json)
        .with_id(derived_id(event.event_id, &format!("deadletter/{consumer}"), 0))
        .caused_by(event.correlation_id, event.event_id);
    let e = crate::app::trace::traced(e, crate::app::trace::TraceContext::of_event(event).as_ref());
    match store.append_to(&stream, ExpectedVersion::Any, vec![e]).await {
        Ok(_) | Err(event_store::Error::EventIdReused { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A dead letter and whether it was resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The letter.
    #[serde(flatten)]
    pub letter: DeadLettered,
    /// Re-driven successfully.
    pub resolved: bool,
}

/// The dead letters of `consumer`, oldest first.
pub fn list_dead_letters<S: Storage>(
    store: &EventStore<S>,
    consumer: &str,
) -> Result<Vec<DeadLetter>, event_store::Error> {
    let stream = messages::dead_letter_stream(consumer)?;
    let mut letters: Vec<DeadLetter> = Vec::new();
    for e in store.read_stream(&stream, 1, event_store::Direction::Forward) {
        let e = e?;
        match e.event_type.as_str() {
            "DeadLettered" => {
                if let Ok(letter) = serde_json::from_slice::<DeadLettered>(&e.payload) {
                    letters.push(DeadLetter { letter, resolved: false });
                }
            }
            "DeadLetterResolved" => {
                if let Ok(r) = serde_json::from_slice::<DeadLetterResolved>(&e.payload) {
                    for l in letters.iter_mut().filter(|l| l.letter.event_id == r.event_id) {
                        l.resolved = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(letters)
}

/// The dead letters of `consumer` with the node each came from (`None`: this node's own; a
/// query node's replicas name their source).
pub fn list_dead_letters_with_source<S: Storage>(
    store: &EventStore<S>,
    consumer: &str,
) -> Result<Vec<(DeadLetter, Option<String>)>, event_store::Error> {
    let stream = messages::dead_letter_stream(consumer)?;
    let mut out = Vec::new();
    for e in store.read_stream(&stream, 1, event_store::Direction::Forward) {
        let e = e?;
        if e.event_type == "DeadLettered" {
            if let Ok(letter) = serde_json::from_slice::<DeadLettered>(&e.payload) {
                out.push((
                    DeadLetter { letter, resolved: false },
                    e.metadata.get(messages::REPLICA_OF).cloned(),
                ));
            }
        }
    }
    Ok(out)
}

/// Re-drives the dead letter of `event_id`: hands the original event to `handler` again and, on
/// success, records it as resolved.
pub async fn redrive<S: Storage, H: Handler>(
    store: &EventStore<S>,
    handler: &H,
    event_id: Uuid,
) -> Result<Result<(), HandlerError>, event_store::Error> {
    // The original: in this node's log (an embedded node's input), else as its letter kept it
    // (a Kafka consumer's input lives in Kafka, not here).
    let original = match store.find_event(event_id)? {
        Some(e) => e,
        None => {
            // Only this node's own letters (a query node also holds replicas of other nodes').
            let letters = list_dead_letters_with_source(store, handler.name())?;
            let kept = letters.iter().rev().find(|(l, from)| l.letter.event_id == event_id && from.is_none());
            match kept.map(|(l, _)| l.letter.original_event()) {
                Some(Some(e)) if handler.accepts(&e) => e,
                Some(Some(e)) => {
                    return Ok(Err(HandlerError::Poison(Poison::NotHere(format!(
                        "{} does not take {} events from {}",
                        handler.name(),
                        e.event_type,
                        e.stream_id
                    )))))
                }
                Some(None) => {
                    return Ok(Err(HandlerError::Poison(Poison::NotHere(format!(
                        "event {event_id} is not in the log and its dead letter does not keep it"
                    )))))
                }
                None => {
                    return Ok(Err(HandlerError::Poison(Poison::NotHere(format!(
                        "event {event_id} is not in the log nor among {}'s dead letters",
                        handler.name()
                    )))))
                }
            }
        }
    };
    // Write back the checkpoint as it is, so a re-drive never moves it.
    let name = checkpoint_name(handler.name());
    let checkpoint = (name.clone(), store.checkpoint(&name)?.unwrap_or(0));
    if let Err(e) = handler.handle(&original, checkpoint).await {
        return Ok(Err(e));
    }
    let stream = messages::dead_letter_stream(handler.name())?;
    let resolved = NewEvent::json(
        "DeadLetterResolved",
        serde_json::to_vec(&DeadLetterResolved { event_id }).unwrap_or_default(),
    )
    .with_id(derived_id(event_id, &format!("resolved/{}", handler.name()), 0));
    match store.append_to(&stream, ExpectedVersion::Any, vec![resolved]).await {
        Ok(_) | Err(event_store::Error::EventIdReused { .. }) => Ok(Ok(())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::{MemoryStorage, StoreConfig};

    /// Records what it was handed.
    struct Recorder(std::sync::Mutex<Vec<RecordedEvent>>);

    impl Handler for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn source(&self) -> Source {
            Source::All
        }
        fn accepts(&self, _: &RecordedEvent) -> bool {
            true
        }
        fn partition_key(&self, _: &RecordedEvent) -> u64 {
            0
        }
        async fn handle(&self, event: &RecordedEvent, _: (String, u64)) -> Result<(), HandlerError> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_dead_letter_whose_original_is_not_in_the_log_is_redriven_from_the_letter() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        // A message from Kafka: it never was in this node's log; its payload is not UTF-8.
        let original = RecordedEvent {
            position: 42,
            stream_id: "inventory_commands-SKU-1".into(),
            version: 7,
            event_id: Uuid::now_v7(),
            event_type: "ReserveStock".into(),
            schema_version: 3,
            recorded_at_ns: 1_700_000_000_123_456_789,
            correlation_id: Uuid::now_v7(),
            causation_id: Uuid::now_v7(),
            metadata: [("command_id".to_owned(), "abc".to_owned())].into(),
            payload: vec![0xff, 0x00, b'{', 0xfe],
            content_type: "application/octet-stream".into(),
        };
        dead_letter(&store, "recorder", &original, "poison").await.expect("letter");
        assert!(store.find_event(original.event_id).expect("find").is_none());
        let handler = Recorder(Default::default());
        redrive(&store, &handler, original.event_id).await.expect("store").expect("redriven");
        assert_eq!(
            *handler.0.lock().expect("lock"),
            vec![original.clone()],
            "handed the original byte for byte"
        );
        let letters = list_dead_letters(&store, "recorder").expect("list");
        assert_eq!(letters.len(), 1);
        assert!(letters[0].resolved);
        // A Kafka record that was not an event (version 0: it failed to decode) keeps no
        // original, and is not re-driven; nor is a payload or metadata too big to keep (its
        // letter is still written, under the store's size limit, with the reason cut short).
        let malformed = RecordedEvent { version: 0, event_id: Uuid::now_v7(), ..original.clone() };
        let big = RecordedEvent {
            event_id: Uuid::now_v7(),
            payload: vec![b'\x01'; MAX_KEPT_PAYLOAD + 1],
            ..original.clone()
        };
        let headers = (0..8).map(|i| (format!("h{i}"), "\u{1}".repeat(110 * 1024))).collect();
        let big_metadata = RecordedEvent { event_id: Uuid::now_v7(), metadata: headers, ..original.clone() };
        // A Kafka record's key and headers are any length: a 200 KB key of control characters
        // (six bytes each in JSON) would take the letter past the limit were it copied whole.
        let long_names = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: "\u{1}".repeat(200 * 1024),
            event_type: "\u{1}".repeat(200 * 1024),
            content_type: "\u{1}".repeat(200 * 1024),
            ..original.clone()
        };
        let long_reason = "why ".repeat(1024 * 1024);
        for e in [&malformed, &big, &big_metadata, &long_names] {
            dead_letter(&store, "recorder", e, &long_reason).await.expect("letter");
            let refused = redrive(&store, &handler, e.event_id).await.expect("store");
            assert!(matches!(refused, Err(HandlerError::Poison(_))), "{refused:?}");
        }
        assert_eq!(handler.0.lock().expect("lock").len(), 1);
        let letters = list_dead_letters(&store, "recorder").expect("list");
        assert_eq!(letters.len(), 5, "every letter was written");
        assert!(letters[1..]
            .iter()
            .all(|l| l.letter.original.is_none() && l.letter.reason.len() == MAX_REASON));
        assert_eq!(letters[4].letter.stream_id.len(), MAX_NAME, "the key is cut short");
        // At every limit at once, with every byte needing a six-byte escape, the original is
        // still kept, and re-driven byte for byte.
        let metadata_chars = (MAX_KEPT_METADATA - 16) / 6;
        let at_limits = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: format!("s-{}", "\u{1}".repeat(250)),
            payload: vec![b'\x01'; MAX_KEPT_PAYLOAD],
            metadata: [("m".to_owned(), "\u{1}".repeat(metadata_chars))].into(),
            ..original
        };
        assert!(serde_json::to_vec(&at_limits.metadata).expect("json").len() <= MAX_KEPT_METADATA);
        dead_letter(&store, "recorder", &at_limits, &"\u{1}".repeat(MAX_REASON)).await.expect("letter");
        let letters = list_dead_letters(&store, "recorder").expect("list");
        assert!(letters[5].letter.original.is_some(), "kept at the limits");
        redrive(&store, &handler, at_limits.event_id).await.expect("store").expect("redriven");
        assert_eq!(handler.0.lock().expect("lock").last(), Some(&at_limits), "byte for byte");
        // An id with no letter is refused, not guessed.
        let unknown = redrive(&store, &handler, Uuid::now_v7()).await.expect("store");
        assert!(matches!(unknown, Err(HandlerError::Poison(_))), "{unknown:?}");
    }
}
