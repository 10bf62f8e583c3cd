//! Consumers fed from Kafka: the same handlers as on the local log, one feed per partition, with
//! the partition's offset kept in the node's own store and written in the same atomic append as
//! the handler's outputs (so a crash or a redelivery never applies a record twice or skips one).
//! A record that is not a Causeway event goes to the consumer's dead letters and the consumer
//! keeps going.
//!
//! [`Replica`] is the query role's handler: it copies every other node's events into the local
//! log, where the projections fold them exactly as in one process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Storage, StreamId};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{cloudevents, KafkaConfig, KafkaError};
use crate::app::consumer::{self, ConsumerConfig, FeedItem, Handler, Source};
use crate::app::error::HandlerError;

use crate::app::messages::{REPLICA_OF, SOURCE_KEY};

fn item(m: &BorrowedMessage<'_>) -> FeedItem {
    let seq = m.offset().max(0) as u64 + 1;
    let headers = cloudevents::header_map(m.headers());
    match cloudevents::decode(&headers, m.payload()) {
        Ok(mut e) => {
            if let Some(source) = headers.get("ce_source") {
                e.metadata.insert(SOURCE_KEY.to_owned(), source.clone());
            }
            FeedItem::Event(seq, e)
        }
        Err(reason) => {
            let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
            let raw = RecordedEvent {
                position: seq,
                stream_id: m
                    .key()
                    .map_or_else(|| format!("kafka:{at}"), |k| String::from_utf8_lossy(k).into_owned()),
                version: 0,
                // The same record always gets the same id, so a redelivery adds no second letter.
                event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("causeway:kafka:{at}").as_bytes()),
                event_type: headers.get("ce_type").cloned().unwrap_or_else(|| "(not a CloudEvent)".into()),
                schema_version: 0,
                recorded_at_ns: 0,
                correlation_id: Uuid::nil(),
                causation_id: Uuid::nil(),
                metadata: BTreeMap::new(),
                payload: m.payload().unwrap_or_default().to_vec(),
                content_type: headers.get("content-type").cloned().unwrap_or_default(),
            };
            FeedItem::Malformed(seq, raw, format!("malformed record {at}: {reason}"))
        }
    }
}

/// What a consumer of Kafka reads.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Its topics (created when missing).
    pub topics: Vec<String>,
    /// `(index, count)`: its share of their partitions, `p % count == index`.
    pub shard: (i32, i32),
    /// The owner role it runs for (its pods share the partitions, and their layout is checked);
    /// `None` for a consumer that reads everything (the query role's replica).
    pub role: Option<&'static str>,
}

/// Runs `handler` on its share of the partitions of `topics` (created when missing) until
/// `shutdown`: with `shard = (index, count)` the partitions `p % count == index` (one pod of a
/// scaled-out role; `(0, 1)` takes all). A sharded consumer first checks that its topics have one
/// partition count, the one its node recorded. It reports ready once the broker has answered for
/// every partition it reads.
pub async fn run<S: Storage, H: Handler>(
    store: EventStore<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    kafka: KafkaConfig,
    inputs: Inputs,
    shutdown: watch::Receiver<bool>,
    readiness: consumer::Readiness,
) -> Result<(), KafkaError> {
    let Inputs { topics, shard, role } = inputs;
    let (index, count) = shard;
    // The broker may be down while the node starts: wait for it rather than fail the node.
    let mut backoff = Duration::from_millis(200);
    let mut shutdown = shutdown;
    let found = loop {
        // A stop does not wait for a broker that does not answer.
        let ensured = tokio::select! {
            r = super::ensure_topics(&kafka, &topics) => r,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        };
        match ensured {
            Ok(found) => break found,
            Err(e) => {
                tracing::warn!(consumer = handler.name(), error = %e, retry_in = ?backoff, "waiting for Kafka");
                if super::sleep_or_stop(backoff, &mut shutdown).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    if let Some(role) = role {
        // An owner role's pods share its partitions: its topics must have one partition count,
        // the one this node and the cluster recorded, and the cluster's pod count must be ours.
        super::shard::check_partitions(&store, handler.name(), &found)
            .map_err(|e| KafkaError::Other(e.to_string()))?;
        let layout = super::shard::RoleLayout {
            role: role.to_owned(),
            count,
            partitions: found.first().map_or(0, |(_, n)| *n),
            keying: super::shard::KEYING,
            node: kafka.node_id.clone(),
        };
        // The broker may go away meanwhile too: only another layout is fatal.
        let mut backoff = Duration::from_millis(200);
        loop {
            let (c, l) = (kafka.clone(), layout.clone());
            let checked =
                tokio::task::spawn_blocking(move || super::shard::check_cluster_layout(&c, &l, index))
                    .await
                    .map_err(|e| KafkaError::Other(e.to_string()))?;
            match checked {
                Ok(()) => break,
                Err(e @ super::shard::LayoutError::Kafka(_)) => {
                    tracing::warn!(consumer = handler.name(), error = %e, retry_in = ?backoff, "checking the cluster's layout");
                    if super::sleep_or_stop(backoff, &mut shutdown).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(KafkaError::Other(e.to_string())),
            }
        }
    }
    let partitions: Vec<(String, Vec<i32>)> =
        found.into_iter().map(|(t, n)| (t, (0..n).filter(|p| p % count == index).collect())).collect();
    // The workers are shared out over the partitions of the busy topics; the operators' actions
    // (a handful a day) take no share of them (their partitions get the same few workers on top).
    let total: i32 = partitions
        .iter()
        .filter(|(t, _)| t != crate::app::messages::SAGA_COMMANDS)
        .map(|(_, ps)| ps.len() as i32)
        .sum();
    let per_partition = ConsumerConfig { workers: (config.workers / total.max(1) as usize).max(2), ..config };
    // One client per handler; each partition gets its own queue (and feed), so partitions
    // proceed independently while sharing connections and fetch requests.
    let name = handler.name().to_owned();
    let client: StreamConsumer = kafka
        .reader(&format!("consumer-{name}"))
        .set("fetch.wait.max.ms", kafka.fetch_wait_ms.to_string())
        // What librdkafka fetches ahead is bounded (its default is 64 MiB per partition queue):
        // past it a partition is read no further until the workers catch up.
        .set("queued.max.messages.kbytes", "2048")
        .create()?;
    let client = Arc::new(client);
    let mut tpl = TopicPartitionList::new();
    let mut starts = Vec::new();
    for (topic, mine) in &partitions {
        for p in mine {
            let start = consumer::kafka_resume_offset(&store, &name, topic, *p)?;
            tpl.add_partition_offset(topic, *p, Offset::Offset(start as i64))?;
            starts.push((topic.clone(), *p, start));
        }
    }
    client.assign(&tpl)?;
    let mut tasks = JoinSet::new();
    for (topic, p, start) in starts.iter().cloned() {
        let queue = client
            .split_partition_queue(&topic, p)
            .ok_or_else(|| KafkaError::Other(format!("cannot read {topic}/{p} on its own")))?;
        let feed = futures::stream::unfold(queue, move |q| async move {
            loop {
                match q.recv().await {
                    Ok(m) => {
                        let it = item(&m);
                        drop(m);
                        return Some((Ok(it), q));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading Kafka failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        let cp_name = consumer::kafka_checkpoint_name(&name, &topic, p);
        let (store, handler, shutdown) = (store.clone(), handler.clone(), shutdown.clone());
        tasks.spawn(async move {
            consumer::run_feed(store, handler, per_partition, shutdown, cp_name, start, Box::pin(feed)).await
        });
    }
    // Ready once the broker has answered for every partition this consumer reads (its leader
    // is reachable and knows the partition), asked again until it has. Ended with the consumer,
    // so a consumer that failed is never reported ready afterwards.
    let mut asking = {
        let (client, readiness, name) = (client.clone(), readiness.clone(), name.clone());
        let mut shutdown = shutdown.clone();
        let partitions: Vec<(String, i32)> = starts.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        AbortOnDrop(tokio::spawn(async move {
            let mut left = partitions;
            while !left.is_empty() {
                let (c, asked) = (client.clone(), left.clone());
                let unanswered = tokio::task::spawn_blocking(move || {
                    asked
                        .into_iter()
                        .filter(|(t, p)| c.fetch_watermarks(t, *p, Duration::from_secs(5)).is_err())
                        .collect::<Vec<_>>()
                })
                .await;
                left = unanswered.unwrap_or(left);
                if !left.is_empty() && super::sleep_or_stop(Duration::from_millis(500), &mut shutdown).await {
                    return;
                }
            }
            readiness.ready(&name);
        }))
    };
    // The client's own queue must be served (events, errors); no messages arrive on it.
    let events = {
        let client = client.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                match client.recv().await {
                    Ok(m) => {
                        tracing::warn!(topic = m.topic(), "a record arrived outside its partition queue")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "Kafka client event");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }))
    };
    // Partitions end together at a stop. One that fails (its store failed, or a message could be
    // neither handled nor dead-lettered) takes the whole consumer, and with it the node, down at
    // once: the others must not keep serving while its keys stall.
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| KafkaError::Other(e.to_string())).and_then(|r| r.map_err(KafkaError::from));
        if r.is_err() {
            // Not ready from here on: the readiness check stops before the partitions drain.
            asking.0.abort();
            result = r;
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            break;
        }
    }
    drop(events);
    asking.0.abort();
    // Aborted at its next await: once this returns it cannot mark the consumer ready.
    let _ = (&mut asking.0).await;
    result
}

/// A task that ends with its owner: `run` dropped half-way (its caller gave up on it) takes
/// the readiness check and the client's event loop with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The query role's handler: copies other nodes' events into the local log.
#[derive(Debug)]
pub struct Replica<S: Storage> {
    store: EventStore<S>,
    own_source: String,
}

impl<S: Storage> Replica<S> {
    /// A replica into `store`; records of `own_source` (this node's) are skipped.
    pub fn new(store: EventStore<S>, own_source: String) -> Self {
        Self { store, own_source }
    }
}

impl<S: Storage> Handler for Replica<S> {
    fn name(&self) -> &str {
        "replica"
    }
    fn source(&self) -> Source {
        Source::All
    }
    fn accepts(&self, e: &RecordedEvent) -> bool {
        e.metadata.get(SOURCE_KEY).is_some_and(|s| *s != self.own_source)
    }
    fn partition_key(&self, e: &RecordedEvent) -> u64 {
        crate::app::messages::shard_hash(&e.stream_id)
    }
    async fn handle(&self, e: &RecordedEvent, checkpoint: (String, u64)) -> Result<(), HandlerError> {
        let stream = StreamId::new(e.stream_id.clone()).map_err(HandlerError::from)?;
        let mut copy = NewEvent::from(e);
        if let Some(source) = copy.metadata.remove(SOURCE_KEY) {
            copy.metadata.insert(REPLICA_OF.to_owned(), source);
        }
        let request = AppendRequest::default()
            .and(stream, ExpectedVersion::Any, vec![copy])
            .with_checkpoint(checkpoint.0, checkpoint.1);
        match self.store.append(request).await {
            Ok(_) | Err(event_store::Error::EventIdReused { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
