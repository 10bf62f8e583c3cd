//! Kafka, reached only through rdkafka: the relay that mirrors a node's log to topics
//! ([`relay`]), the CloudEvents record format ([`cloudevents`]), and the restore of a lost log
//! from those topics ([`restore`]).
//!
//! Topics: a stream `<category>-<id>` goes to `<category>_domain_events`, except saga commands
//! (`<service>_commands-<id>`, to `<service>_commands`) and dead letters (`deadletters-<consumer>`,
//! to `dead_letters`). The key is the stream's shard key (the order id, or the SKU for stock:
//! [`shard`]) and the partition is Kafka's default for that key (murmur2, as the Java client
//! computes it), so one stream keeps its order in one partition, everything one order's saga
//! needs lands in one partition number of each topic, and any client finds it where it expects.

pub mod cloudevents;
pub mod consume;
pub mod relay;
pub mod restore;
pub mod shard;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

/// Kafka settings of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// This node's name: the CloudEvents `source` is `causeway://<node_id>`, and a restore takes
    /// the records of this source only.
    pub node_id: String,
    /// Partitions of a topic created by the relay.
    pub partitions: i32,
    /// Replication factor of a topic created by the relay.
    pub replication: i32,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// Producer `linger.ms`.
    pub linger_ms: u32,
    /// Consumer `fetch.wait.max.ms`: how long an idle fetch waits at the broker. Each Kafka
    /// crossing of a saga can wait this long.
    pub fetch_wait_ms: u32,
    /// Producer `batch.size` (bytes).
    pub batch_bytes: u32,
    /// How long the producer keeps retrying a record before the relay backs off and resends.
    pub delivery_timeout: Duration,
    /// Events in flight (sent, delivery not yet confirmed) at most.
    pub window: usize,
    /// This node's share of its role's input partitions: `(index, count)` takes the partitions
    /// `p` with `p % count == index` (one pod of a scaled-out role); `(0, 1)` takes all.
    pub shard: (i32, i32),
}

impl KafkaConfig {
    /// Defaults for a broker at `bootstrap`.
    pub fn new(bootstrap: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            node_id: node_id.into(),
            partitions: 4,
            replication: 1,
            compression: "lz4".into(),
            linger_ms: 5,
            fetch_wait_ms: 20,
            batch_bytes: 256 * 1024,
            delivery_timeout: Duration::from_secs(30),
            window: 8192,
            shard: (0, 1),
        }
    }

    /// Checks the values a user can get wrong, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap.trim().is_empty() {
            return Err("the Kafka bootstrap servers are empty".into());
        }
        if self.node_id.is_empty()
            || !self.node_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!("node id {:?} must be letters, digits, '-', '_' or '.'", self.node_id));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(format!(
                "compression {:?} is not one of none, gzip, snappy, lz4, zstd",
                self.compression
            ));
        }
        if self.partitions < 1 || self.replication < 1 || self.window == 0 {
            return Err("partitions, replication and the window must be at least 1".into());
        }
        let (index, count) = self.shard;
        if count < 1 || !(0..count).contains(&index) {
            return Err(format!("shard {index} of {count}: the index must be 0 to count - 1"));
        }
        if count > self.partitions {
            return Err(format!("{count} shards need at least {count} partitions per topic"));
        }
        Ok(())
    }

    /// The CloudEvents source of this node's records.
    pub fn source(&self) -> String {
        format!("causeway://{}", self.node_id)
    }

    /// Client settings shared by producers, consumers and the admin client.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("causeway-{}", self.node_id))
            .set("socket.keepalive.enable", "true")
            // Back on a returning broker within a second, not librdkafka's default 10 s.
            .set("reconnect.backoff.max.ms", "1000")
            .set("log_level", "3");
        c
    }

    /// A consumer that reads assigned partitions and commits nothing (its position is kept
    /// elsewhere); `purpose` names its group.
    pub fn reader(&self, purpose: &str) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", format!("causeway-{purpose}-{}", self.node_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        c
    }

    /// The relay's producer: idempotent, acks from all in-sync replicas, ordered per partition.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_bytes.to_string())
            .set("message.timeout.ms", self.delivery_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", (self.window * 2).max(1000).to_string())
            .set("partitioner", "murmur2_random");
        c
    }
}

/// Kafka failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The client reported an error.
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// A record could not be understood.
    #[error("malformed record {topic}/{partition}@{offset}: {reason}")]
    Malformed {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}

/// The topic of a stream.
pub fn topic_for(stream_id: &str) -> String {
    let category = stream_id.split_once('-').map_or(stream_id, |(c, _)| c);
    if category == "deadletters" {
        "dead_letters".to_owned()
    } else if category.ends_with("_commands") {
        category.to_owned()
    } else {
        format!("{category}_domain_events")
    }
}

/// Whether a topic holds Causeway's records.
pub fn is_causeway_topic(topic: &str) -> bool {
    topic == "dead_letters" || topic.ends_with("_domain_events") || topic.ends_with("_commands")
}

pub use shard::{partition_for, partition_of_stream};

/// Creates the missing `topics` with the configured partitions and replication factor, and
/// returns each topic's partition count.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &[String],
) -> Result<Vec<(String, i32)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, config.partitions, TopicReplication::Fixed(config.replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&new, &options).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Other(format!("creating topic {topic}: {code}"))),
        }
    }
    let config = config.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || partition_counts(&config, &topics))
        .await
        .map_err(|e| KafkaError::Other(e.to_string()))?
}

/// The partition count of each topic (blocking).
pub fn partition_counts(config: &KafkaConfig, topics: &[String]) -> Result<Vec<(String, i32)>, KafkaError> {
    let consumer: BaseConsumer = config.client().create()?;
    let mut out = Vec::new();
    for t in topics {
        let mut count = 0;
        // A topic just created may take a moment to show its partitions.
        for _ in 0..50 {
            let md = consumer.fetch_metadata(Some(t), Duration::from_secs(10))?;
            count = md.topics().first().map_or(0, |m| m.partitions().len() as i32);
            if count > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if count == 0 {
            return Err(KafkaError::Other(format!("topic {t} has no partitions")));
        }
        out.push((t.clone(), count));
    }
    Ok(out)
}

/// Causeway's topics on the broker (blocking).
pub fn list_topics(config: &KafkaConfig) -> Result<Vec<(String, i32)>, KafkaError> {
    let consumer: BaseConsumer = config.client().create()?;
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut out: Vec<(String, i32)> = md
        .topics()
        .iter()
        .filter(|t| is_causeway_topic(t.name()))
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect();
    out.sort();
    Ok(out)
}

/// Sleeps, or returns true early when the node stops.
pub(crate) async fn sleep_or_stop(d: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_stream_categories() {
        assert_eq!(topic_for("order-0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f00"), "order_domain_events");
        assert_eq!(topic_for("inventory-SKU-1"), "inventory_domain_events");
        assert_eq!(topic_for("inventory_commands-0192f0c4"), "inventory_commands");
        assert_eq!(topic_for("deadletters-saga-manager"), "dead_letters");
        assert!(is_causeway_topic("saga_domain_events") && !is_causeway_topic("__consumer_offsets"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = KafkaConfig::new("127.0.0.1:9092", "node-1");
        assert!(ok.validate().is_ok());
        assert!(KafkaConfig { compression: "brotli".into(), ..ok.clone() }.validate().is_err());
        assert!(KafkaConfig { node_id: "a b".into(), ..ok.clone() }.validate().is_err());
        assert!(KafkaConfig { bootstrap: " ".into(), ..ok.clone() }.validate().is_err());
        assert!(KafkaConfig { partitions: 0, ..ok.clone() }.validate().is_err());
        assert!(KafkaConfig { shard: (1, 2), ..ok.clone() }.validate().is_ok());
        assert!(KafkaConfig { shard: (2, 2), ..ok.clone() }.validate().is_err());
        assert!(KafkaConfig { shard: (0, 8), ..ok }.validate().is_err(), "more shards than partitions");
    }
}
