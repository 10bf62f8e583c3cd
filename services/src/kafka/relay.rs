//! The relay: tails the node's log from its checkpoint and produces every event to Kafka. The
//! checkpoint (in the node's own store) advances only over events whose delivery the broker
//! confirmed, in log order.
//!
//! Exactly once in normal operation: the producer is idempotent (no duplicate or reordering on
//! its own retries), and after a restart or a failed delivery the relay first reads, for each
//! partition, the last position of its own records already there (the fence), and skips the
//! events at or below it. The fence reads only what was stamped since the first unconfirmed
//! event was recorded (a timestamp lookup), so its cost follows the relay's lag, not the size of
//! the topics. When the broker is unreachable the node keeps appending; the relay
//! backs off, retries, and catches up when the broker returns. Its lag is the gauge
//! `causeway_relay_lag_events`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use event_store::{EventStore, RecordedEvent, Storage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument;

use super::{cloudevents, partition_of_stream, topic_for, KafkaConfig, KafkaError};
use crate::app::telemetry;

/// The checkpoint the relay keeps in the store.
pub const CHECKPOINT: &str = "kafka-relay";

/// Saves the checkpoint at most this often while events flow.
const SAVE_INTERVAL: Duration = Duration::from_millis(200);

/// What the relay knows about the topics it writes.
#[derive(Debug, Default)]
struct Topics {
    partitions: HashMap<String, i32>,
    /// (topic, partition) → the highest position of this node's records already there.
    fence: HashMap<(String, i32), u64>,
}

/// How far before the first undelivered event's recorded-at time the fence starts reading: room
/// for a broker that stamps records with its own clock (`LogAppendTime`) a little behind ours.
const FENCE_CLOCK_MARGIN_MS: i64 = 60_000;

/// Reads, in each partition of `wanted`, the highest position of this node's records stamped at
/// or after `since_ms` (blocking).
///
/// The relay sends events in log order with CreateTime = recorded-at, and recorded-at never
/// decreases along the log, so every record of ours past the checkpoint is stamped at or after
/// the recorded-at time of the first event past it. Each partition is therefore read forward
/// from the broker's offset for that time (a timestamp lookup, bounded by what was written since
/// then), never walked back over what other nodes wrote: a node that restarts into a busy
/// cluster fences in one short read. And only the partitions the events past the checkpoint go
/// to are read: no other partition can hold an unconfirmed record of ours.
fn read_fence(
    config: &KafkaConfig,
    wanted: &[(String, i32)],
    since_ms: i64,
) -> Result<HashMap<(String, i32), u64>, KafkaError> {
    let source = config.source();
    let consumer: BaseConsumer = config
        .reader("relay-fence")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut fence = HashMap::new();
    if wanted.is_empty() {
        return Ok(fence);
    }
    let mut at_time = TopicPartitionList::new();
    let mut at_end = TopicPartitionList::new();
    for (topic, p) in wanted {
        at_time.add_partition_offset(topic, *p, Offset::Offset(since_ms.max(0)))?;
        at_end.add_partition_offset(topic, *p, Offset::End)?;
    }
    // Two lookups for every partition at once: the offset of the time, and the end.
    let starts = consumer.offsets_for_times(at_time, Duration::from_secs(10))?;
    let ends = consumer.offsets_for_times(at_end, Duration::from_secs(10))?;
    let end_of: HashMap<(String, i32), Offset> =
        ends.elements().iter().map(|e| ((e.topic().to_owned(), e.partition()), e.offset())).collect();
    // Where each partition's read starts and ends (its end as of now: later records are not ours,
    // since this relay is the only sender of this node's records and it is not sending).
    let mut reads = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for e in starts.elements() {
        if let Some(err) = e.error().err() {
            return Err(err.into());
        }
        let Offset::Offset(start) = e.offset() else { continue }; // nothing stamped since then
        let key = (e.topic().to_owned(), e.partition());
        let high = match end_of.get(&key) {
            Some(Offset::Offset(high)) => *high,
            _ => consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?.1,
        };
        if start >= high {
            continue;
        }
        reads.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
        ends.insert(key, high);
    }
    if ends.is_empty() {
        return Ok(fence);
    }
    consumer.assign(&reads)?;
    let mut deadline = Instant::now() + Duration::from_secs(10);
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                deadline = Instant::now() + Duration::from_secs(10);
                let key = (m.topic().to_owned(), m.partition());
                let Some(&end) = ends.get(&key) else { continue };
                if m.offset() < end {
                    let h = cloudevents::header_map(m.headers());
                    if h.get("ce_source").map(String::as_str) == Some(source.as_str()) {
                        if let Some(pos) = h.get("ce_position").and_then(|v| v.parse::<u64>().ok()) {
                            let best = fence.entry(key.clone()).or_insert(pos);
                            *best = (*best).max(pos);
                        }
                    }
                }
                if m.offset() + 1 >= end {
                    ends.remove(&key);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                // The end of a partition whose last offsets hold no record (compaction, control
                // records). PartitionEOF names only the partition number: settle every partition
                // through its position.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        let key = (e.topic().to_owned(), e.partition());
                        if let (Offset::Offset(o), Some(&end)) = (e.offset(), ends.get(&key)) {
                            if o >= end {
                                ends.remove(&key);
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None if Instant::now() > deadline => {
                return Err(KafkaError::Other(format!(
                    "reading the fence timed out with {} partitions left",
                    ends.len()
                )))
            }
            None => {}
        }
    }
    Ok(fence)
}

/// One event sent, its delivery not yet confirmed.
enum InFlight {
    Sent(u64, rdkafka::producer::DeliveryFuture),
    /// Already in Kafka (below the fence).
    Skipped(u64),
}

/// Whether the relay is getting events to Kafka: shared with the saga manager of a distributed
/// node, which holds its deadlines while its commands cannot leave the node (a broker outage must
/// not time out and compensate every saga in flight).
#[derive(Debug, Clone, Default)]
pub struct RelayHealth {
    /// When the oldest unconfirmed send started (Unix ns; 0: nothing waiting).
    waiting_since_ns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RelayHealth {
    fn now_ns() -> u64 {
        event_store::time_to_nanos(time::OffsetDateTime::now_utc())
    }

    fn started(&self) {
        let _ = self.waiting_since_ns.compare_exchange(
            0,
            Self::now_ns(),
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    fn delivered(&self) {
        self.waiting_since_ns.store(0, std::sync::atomic::Ordering::Release);
    }
}

impl crate::app::gateway::DeliveryHealth for RelayHealth {
    /// True when events have waited for Kafka longer than `for_at_least`.
    fn stalled(&self, for_at_least: Duration) -> bool {
        let since = self.waiting_since_ns.load(std::sync::atomic::Ordering::Acquire);
        since != 0 && Self::now_ns().saturating_sub(since) > for_at_least.as_nanos() as u64
    }
}

/// Runs the relay until `shutdown` turns true. Errors from Kafka are retried with backoff (the
/// relay never gives up); only a failing local store ends it.
pub async fn run<S: Storage>(
    store: EventStore<S>,
    config: KafkaConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    run_observed(store, config, shutdown, RelayHealth::default()).await
}

/// [`run`], reporting whether events get out in `health`.
pub async fn run_observed<S: Storage>(
    store: EventStore<S>,
    config: KafkaConfig,
    mut shutdown: watch::Receiver<bool>,
    health: RelayHealth,
) -> Result<(), KafkaError> {
    let mut producer: FutureProducer = config.producer().create()?;
    let mut topics = Topics::default();
    let mut fenced = false;
    let mut backoff = Duration::from_millis(100);
    let mut head = store.watch_head();
    let mut saved = store.checkpoint(CHECKPOINT)?.unwrap_or(0);
    let mut cp = saved;
    let mut last_save = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        metrics::gauge!("causeway_relay_lag_events").set(store.head().saturating_sub(cp) as f64);
        if store.head() > cp {
            // Events wait for Kafka from now on (a fence read included): a distributed saga
            // holds its deadlines meanwhile.
            health.started();
        }
        if !fenced {
            // Only events past the checkpoint can be in Kafka unconfirmed: at most the window in
            // flight beyond a checkpoint saved up to a window late. With none past it there is no
            // fence to read. (A failing store ends the relay here, as anywhere else.)
            let pending: Vec<RecordedEvent> =
                store.read_all(cp + 1).take(config.window.saturating_mul(2)).collect::<Result<_, _>>()?;
            let since_ms = pending
                .first()
                .map(|first| (first.recorded_at_ns / 1_000_000) as i64 - FENCE_CLOCK_MARGIN_MS);
            // The topics this node wrote before, and the fence in the partitions the pending
            // events go to.
            let result = async {
                let known = {
                    let c = config.clone();
                    tokio::task::spawn_blocking(move || super::list_topics(&c))
                        .await
                        .map_err(|e| KafkaError::Other(e.to_string()))??
                };
                topics.partitions = known.into_iter().collect();
                topics.fence = match since_ms {
                    None => HashMap::new(),
                    Some(since_ms) => {
                        let mut wanted: Vec<(String, i32)> = pending
                            .iter()
                            .filter_map(|e| {
                                let topic = topic_for(&e.stream_id);
                                let n = *topics.partitions.get(&topic)?;
                                Some((topic, partition_of_stream(&e.stream_id, n)))
                            })
                            .collect();
                        wanted.sort();
                        wanted.dedup();
                        let c = config.clone();
                        let started = Instant::now();
                        let fence = tokio::task::spawn_blocking(move || read_fence(&c, &wanted, since_ms))
                            .await
                            .map_err(|e| KafkaError::Other(e.to_string()))??;
                        if started.elapsed() > Duration::from_secs(2) {
                            tracing::warn!(took = ?started.elapsed(), "reading the relay's fence was slow");
                        }
                        fence
                    }
                };
                Ok::<_, KafkaError>(())
            };
            // A stop does not wait for a broker that does not answer.
            let result = tokio::select! {
                r = result => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?backoff, "the relay cannot reach Kafka");
                metrics::counter!("causeway_relay_errors_total").increment(1);
                if super::sleep_or_stop(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            fenced = true;
        }
        let batch: Vec<RecordedEvent> =
            store.read_all(cp + 1).take(config.window).collect::<Result<_, _>>()?;
        if batch.is_empty() {
            health.delivered();
        } else {
            health.started();
        }
        if batch.is_empty() {
            if cp != saved {
                store.save_checkpoint(CHECKPOINT, cp).await?;
                saved = cp;
            }
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { break },
                changed = head.changed() => if changed.is_err() { break },
            }
            continue;
        }
        // A stop does not wait for deliveries the broker may never confirm (it is down): what
        // was confirmed is kept, and the fence keeps a restart from sending the rest twice.
        let sent = tokio::select! {
            r = send_window(&producer, &config, &mut topics, &batch, &mut cp) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match sent {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                health.delivered();
            }
            Err(e) => {
                tracing::warn!(error = %e, checkpoint = cp, retry_in = ?backoff, "relay delivery failed; resending after the fence");
                metrics::counter!("causeway_relay_errors_total").increment(1);
                fenced = false;
                // An idempotent producer can fail for good (a broker that lost its producer
                // state after a crash); a new one starts a new producer id. The fence keeps the
                // resend from duplicating anything.
                if let Some((code, reason)) = rdkafka::producer::Producer::client(&producer).fatal_error() {
                    tracing::warn!(?code, %reason, "the producer failed for good; starting a new one");
                    producer = config.producer().create()?;
                }
                if super::sleep_or_stop(backoff, &mut shutdown).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        if cp != saved && (last_save.elapsed() >= SAVE_INTERVAL || cp - saved >= config.window as u64) {
            store.save_checkpoint(CHECKPOINT, cp).await?;
            saved = cp;
            last_save = Instant::now();
        }
    }
    if cp != saved {
        store.save_checkpoint(CHECKPOINT, cp).await?;
    }
    Ok(())
}

/// The most records a relay batch's span links to (a window can be larger).
const MAX_BATCH_LINKS: usize = 64;

/// Sends `batch` and waits for every delivery in order, advancing `cp` over each confirmed one.
///
/// In a `relay.batch` span (a root: a batch carries many requests' events), with one
/// `relay.publish` span per record as a child of the context its event recorded, so each order's
/// trace shows its records leaving the node; the batch links to its first records.
async fn send_window(
    producer: &FutureProducer,
    config: &KafkaConfig,
    topics: &mut Topics,
    batch: &[RecordedEvent],
    cp: &mut u64,
) -> Result<(), KafkaError> {
    let span = tracing::info_span!(
        target: "spans",
        parent: None,
        "relay.batch",
        otel.kind = "producer",
        records = batch.len(),
        from_position = batch.first().map_or(0, |e| e.position),
        to_position = batch.last().map_or(0, |e| e.position),
    );
    send_window_in(producer, config, topics, batch, cp, &span).instrument(span.clone()).await
}

async fn send_window_in(
    producer: &FutureProducer,
    config: &KafkaConfig,
    topics: &mut Topics,
    batch: &[RecordedEvent],
    cp: &mut u64,
    batch_span: &tracing::Span,
) -> Result<(), KafkaError> {
    let mut links = 0;
    // Topics seen for the first time are created first.
    let mut missing: Vec<String> = batch
        .iter()
        .map(|e| topic_for(&e.stream_id))
        .filter(|t| !topics.partitions.contains_key(t))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        for (t, n) in super::ensure_topics(config, &missing).await? {
            topics.partitions.insert(t, n);
        }
    }
    let source = config.source();
    let mut in_flight = Vec::with_capacity(batch.len());
    for e in batch {
        let topic = topic_for(&e.stream_id);
        let partitions = topics.partitions.get(&topic).copied().unwrap_or(1);
        let partition = partition_of_stream(&e.stream_id, partitions);
        // Copies of other nodes' events (the query role's) are theirs to publish; and what the
        // fence says is in Kafka already is not sent again.
        if e.metadata.contains_key(crate::app::messages::REPLICA_OF)
            || topics.fence.get(&(topic.clone(), partition)).is_some_and(|f| *f >= e.position)
        {
            in_flight.push(InFlight::Skipped(e.position));
            continue;
        }
        let span = tracing::info_span!(
            target: "spans",
            "relay.publish",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %topic,
            messaging.destination.partition.id = partition,
            position = e.position,
            stream = %e.stream_id,
            event_type = %e.event_type,
            correlation_id = %e.correlation_id,
            order_id = %e.correlation_id,
        );
        telemetry::follow_event(&span, e);
        if links < MAX_BATCH_LINKS {
            if let Some(published) = telemetry::recorded(&span) {
                telemetry::link(batch_span, published);
                links += 1;
            }
        }
        let sent = span
            .in_scope(|| producer.send_result(record(e, &topic, partition, &source)).map_err(|(err, _)| err));
        match sent {
            Ok(f) => in_flight.push(InFlight::Sent(e.position, f)),
            Err(err) => {
                // The queue is full or the producer failed: confirm what was sent, then retry.
                settle(in_flight, cp).await?;
                return Err(err.into());
            }
        }
    }
    settle(in_flight, cp).await
}

/// The Kafka record of `e`: key = the stream's shard key, the given partition, CreateTime =
/// recorded-at, CloudEvents headers with `source`.
pub fn record<'a>(
    e: &'a RecordedEvent,
    topic: &'a str,
    partition: i32,
    source: &str,
) -> FutureRecord<'a, [u8], [u8]> {
    FutureRecord::to(topic)
        .key(crate::app::messages::shard_key(&e.stream_id).as_bytes())
        .payload(e.payload.as_slice())
        .partition(partition)
        .timestamp((e.recorded_at_ns / 1_000_000) as i64)
        .headers(cloudevents::headers(e, source))
}

/// Waits for deliveries in log order; stops at the first failure.
async fn settle(in_flight: Vec<InFlight>, cp: &mut u64) -> Result<(), KafkaError> {
    let mut delivered = 0u64;
    let mut result = Ok(());
    for f in in_flight {
        match f {
            InFlight::Skipped(p) => *cp = p,
            InFlight::Sent(p, fut) => match fut.await {
                Ok(Ok(_)) => {
                    *cp = p;
                    delivered += 1;
                }
                Ok(Err((e, _))) => {
                    result = Err(e.into());
                    break;
                }
                Err(_) => {
                    result = Err(KafkaError::Other("the producer dropped a delivery".into()));
                    break;
                }
            },
        }
    }
    metrics::counter!("causeway_relay_events_total").increment(delivered);
    result
}

/// Produces every event from `from_position` on again, up to what the relay has delivered, for a
/// downstream consumer that lost data (consumers drop repeats by `ce_position`); the relay's
/// checkpoint is not touched. Returns the count.
pub async fn republish<S: Storage>(
    store: &EventStore<S>,
    config: &KafkaConfig,
    from_position: u64,
) -> Result<u64, KafkaError> {
    let producer: FutureProducer = config.producer().create()?;
    let mut topics = Topics::default();
    // Only what the relay already delivered: sending events ahead of it would move its fence.
    let until = store.checkpoint(CHECKPOINT)?.unwrap_or(0).min(store.head());
    let mut cp = from_position.saturating_sub(1);
    let mut sent = 0;
    while cp < until {
        let batch: Vec<RecordedEvent> = store
            .read_all(cp + 1)
            .take_while(|e| e.as_ref().map_or(true, |e| e.position <= until))
            .take(config.window)
            .collect::<Result<_, _>>()?;
        if batch.is_empty() {
            break;
        }
        let before = cp;
        send_window(&producer, config, &mut topics, &batch, &mut cp).await?;
        sent += cp - before;
    }
    Ok(sent)
}
