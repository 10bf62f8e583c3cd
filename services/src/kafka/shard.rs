//! Where a record goes, and which pod owns it.
//!
//! - **Key and partition.** A record's key is its stream's shard key ([`messages::shard_key`]:
//!   the order id for everything one order's saga touches, the SKU for stock), and its partition
//!   is Kafka's default for that key (murmur2, as the Java client computes it). So one order's
//!   `OrderPlaced`, its commands and its replies land in the same partition number of their
//!   topics, one SKU's stock commands in one partition, and a stream's records share a key.
//! - **Ownership.** Pod `k` of a role with `n` pods consumes the partitions `p % n == k` of its
//!   input topics, and so owns the streams of those keys. That holds only while every input
//!   topic of the role has the same partition count, and while `n` and `k` stay what they were
//!   when the pod first wrote its log: a pod records its [`Layout`] in its own store at first
//!   start and refuses to start with another one, naming both.

use event_store::storage::WriteBatch;
use event_store::{EventStore, Storage, APP_KEY_PREFIX};
use serde::{Deserialize, Serialize};

use crate::app::messages;

/// Kafka's default partitioner (the Java client's murmur2 of the key).
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The partition of a stream's records in a topic of `partitions` partitions.
pub fn partition_of_stream(stream_id: &str, partitions: i32) -> i32 {
    partition_for(messages::shard_key(stream_id).as_bytes(), partitions)
}

pub(crate) fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// What a pod of a role owns: its share of the role's input partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The role (`order`, `inventory`, ..., `query`).
    pub role: String,
    /// The pod's index among the role's pods.
    pub index: i32,
    /// The role's pods.
    pub count: i32,
    /// The partition count of the role's input topics (known once the topics were read).
    #[serde(default)]
    pub partitions: Option<i32>,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {} of {} of the {} role", self.index, self.count, self.role)?;
        if let Some(p) = self.partitions {
            write!(f, " over {p} partitions")?;
        }
        Ok(())
    }
}

/// A pod started with a layout other than the one its log was written under.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The role, the index or the count changed.
    #[error(
        "this node's store was written as {recorded}, but the node was started as {now}. Changing a role's \
         pod count (or a pod's index) would move partitions, and the streams their keys own, to pods whose \
         logs do not hold them; Causeway refuses that. Start it as {recorded} again (see deploy/README.md, \
         \"Changing the pod count\")"
    )]
    Changed {
        /// What the store records.
        recorded: Layout,
        /// What the node was started as.
        now: Layout,
    },
    /// The input topics' partition counts differ from each other or from the recorded count.
    #[error("{0}")]
    Partitions(String),
    /// The cluster records another layout for the role than this pod was started with.
    #[error(
        "the cluster runs the {role} role as {count} pods over {partitions} partitions (keying {keying}; recorded \
         in the {topic} topic by {node}), but this pod was started as {pod}. Changing a role's pod count would move \
         partitions, and the streams their keys own, to pods whose logs do not hold them; Causeway refuses that. \
         Start the role with {count} pods (see deploy/README.md, \"Changing the pod count\")",
        role = recorded.role, count = recorded.count, partitions = recorded.partitions, keying = recorded.keying,
        node = recorded.node, topic = LAYOUT_TOPIC
    )]
    ClusterChanged {
        /// What the cluster records.
        recorded: RoleLayout,
        /// What this pod was started as.
        pod: String,
    },
    /// Kafka failed while the layout was checked.
    #[error("checking the cluster's layout in Kafka: {0}")]
    Kafka(String),
    /// The layout record cannot be read.
    #[error("the node's shard layout record is unreadable: {0}")]
    Unreadable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
}

fn layout_key() -> Vec<u8> {
    let mut k = vec![APP_KEY_PREFIX, b'N'];
    k.extend_from_slice(b"shard-layout");
    k
}

/// The layout recorded in `store`, if any.
pub fn recorded<S: Storage>(store: &EventStore<S>) -> Result<Option<Layout>, LayoutError> {
    match store.storage().get(&layout_key()).map_err(event_store::Error::from)? {
        None => Ok(None),
        Some(v) => {
            serde_json::from_slice(v.as_ref()).map(Some).map_err(|e| LayoutError::Unreadable(e.to_string()))
        }
    }
}

fn save<S: Storage>(store: &EventStore<S>, layout: &Layout) -> Result<(), LayoutError> {
    let mut b = WriteBatch::default();
    b.put(layout_key(), serde_json::to_vec(layout).map_err(|e| LayoutError::Unreadable(e.to_string()))?);
    store.storage().apply(b).map_err(event_store::Error::from)?;
    // Durable before the node acts on it.
    store.storage().sync().map_err(event_store::Error::from)?;
    Ok(())
}

/// Records `now` (role, index, count) at a pod's first start; afterwards refuses another one.
pub fn check_layout<S: Storage>(store: &EventStore<S>, now: Layout) -> Result<(), LayoutError> {
    match recorded(store)? {
        None => save(store, &now),
        Some(r) if (r.role.as_str(), r.index, r.count) == (now.role.as_str(), now.index, now.count) => Ok(()),
        Some(recorded) => {
            Err(LayoutError::Changed { now: Layout { partitions: recorded.partitions, ..now }, recorded })
        }
    }
}

/// Checks that an owner role's input topics all have one partition count when it runs several
/// pods (else one key would land on different pods in different topics) and that it is the
/// count recorded (else the partitions, and the keys they hold, would move between pods);
/// records it the first time.
pub fn check_partitions<S: Storage>(
    store: &EventStore<S>,
    consumer: &str,
    topics: &[(String, i32)],
) -> Result<(), LayoutError> {
    let counts: std::collections::BTreeSet<i32> = topics.iter().map(|(_, n)| *n).collect();
    let sharded = recorded(store)?.is_some_and(|l| l.count > 1);
    if counts.len() > 1 && sharded {
        let listed: Vec<String> = topics.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        return Err(LayoutError::Partitions(format!(
            "the {consumer} consumer's input topics have different partition counts ({}); one key would land \
             on different pods in different topics. Create them with one count",
            listed.join(", ")
        )));
    }
    let Some(&count) = counts.first() else { return Ok(()) };
    if counts.len() > 1 {
        // One pod reads every partition of every topic: the counts do not decide ownership.
        return Ok(());
    }
    match recorded(store)? {
        Some(r) if r.partitions == Some(count) => Ok(()),
        Some(r) if r.partitions.is_none() => save(store, &Layout { partitions: Some(count), ..r }),
        Some(r) => Err(LayoutError::Partitions(format!(
            "this node's store was written as {r}, but its input topics now have {count} partitions; the keys \
             would move between pods"
        ))),
        None => Ok(()),
    }
}

/// The Kafka topic that holds each role's pod count for the whole cluster (one partition; a
/// record per role, the first one counts).
pub const LAYOUT_TOPIC: &str = "causeway_layout";

/// How records are keyed: 1 = by shard key (the order id, or the SKU for stock).
pub const KEYING: u32 = 1;

/// A role's layout as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleLayout {
    /// The role.
    pub role: String,
    /// Its pods.
    pub count: i32,
    /// Its input topics' partition count.
    pub partitions: i32,
    /// How records are keyed ([`KEYING`]).
    pub keying: u32,
    /// The node that recorded it.
    pub node: String,
}

/// Checks a pod's layout against the cluster's: the first pod of a role to start records the
/// role's pod count in [`LAYOUT_TOPIC`]; every later pod of the role (a new ordinal, a pod with an
/// empty store, one with an old store) must agree. So a scale-up's new pod, whose empty store
/// records nothing, cannot start with another count and replay its partitions from offset 0
/// (blocking).
pub fn check_cluster_layout(
    config: &super::KafkaConfig,
    mine: &RoleLayout,
    index: i32,
) -> Result<(), LayoutError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::{Duration, Instant};

    let kafka = |e: rdkafka::error::KafkaError| LayoutError::Kafka(e.to_string());
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        config.client().create().map_err(kafka)?;
    // Kept for ever, never compacted: the first record of a role is the one that counts.
    let topic = NewTopic::new(LAYOUT_TOPIC, 1, TopicReplication::Fixed(config.replication))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1");
    let created = futures::executor::block_on(
        admin.create_topics(&[topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))),
    )
    .map_err(kafka)?;
    for r in created {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(LayoutError::Kafka(format!("creating {t}: {code}"))),
        }
    }
    let first_record = || -> Result<Option<RoleLayout>, LayoutError> {
        let consumer: BaseConsumer = config.reader("layout").create().map_err(kafka)?;
        let (low, high) =
            consumer.fetch_watermarks(LAYOUT_TOPIC, 0, Duration::from_secs(10)).map_err(kafka)?;
        if high <= low {
            return Ok(None);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(LAYOUT_TOPIC, 0, rdkafka::Offset::Offset(low)).map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(kafka)?;
            if m.key() == Some(mine.role.as_bytes()) {
                if let Some(l) = m.payload().and_then(|p| serde_json::from_slice::<RoleLayout>(p).ok()) {
                    return Ok(Some(l));
                }
            }
            if m.offset() + 1 >= high {
                return Ok(None);
            }
        }
        Err(LayoutError::Kafka(format!("reading {LAYOUT_TOPIC} timed out")))
    };
    let recorded = match first_record()? {
        Some(r) => r,
        None => {
            let producer: BaseProducer = config.client().set("acks", "all").create().map_err(kafka)?;
            let value = serde_json::to_vec(mine).map_err(|e| LayoutError::Unreadable(e.to_string()))?;
            producer
                .send(BaseRecord::to(LAYOUT_TOPIC).key(mine.role.as_bytes()).payload(&value))
                .map_err(|(e, _)| kafka(e))?;
            producer.flush(Duration::from_secs(10)).map_err(kafka)?;
            // Two pods may have raced: the first record wins.
            first_record()?.ok_or_else(|| LayoutError::Kafka(format!("{LAYOUT_TOPIC} lost our record")))?
        }
    };
    let agrees = recorded.count == mine.count
        && recorded.keying == mine.keying
        && (mine.count == 1 || recorded.partitions == mine.partitions);
    if agrees {
        Ok(())
    } else {
        Err(LayoutError::ClusterChanged {
            recorded,
            pod: format!("pod {index} of {} over {} partitions", mine.count, mine.partitions),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::{MemoryStorage, StoreConfig};

    #[test]
    fn the_partitioner_matches_the_java_client() {
        // Values from org.apache.kafka.common.utils.Utils.murmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert_eq!(partition_for(b"foobar", 4), (-790_332_482i32 & 0x7fff_ffff) % 4);
    }

    #[test]
    fn everything_one_order_touches_lands_in_one_partition_number_and_stock_by_sku() {
        use aggregates::saga::{SagaCommand, SagaLine, Service};
        use aggregates::{OrderId, Sku};
        for i in 0..500u128 {
            let order = OrderId(uuid::Uuid::from_u128(i * 7919 + 13));
            let streams = [
                messages::order_stream(order),
                messages::saga_stream(order),
                messages::replies_stream(order),
                messages::payment_stream(order),
                messages::shipment_stream(order),
                messages::commands_stream(Service::Order, order),
                messages::commands_stream(Service::Payment, order),
                messages::commands_stream(Service::Shipping, order),
                messages::saga_commands_stream(order),
            ];
            for partitions in [2, 4, 12] {
                let p = partition_of_stream(streams[0].as_str(), partitions);
                for s in &streams {
                    assert_eq!(partition_of_stream(s.as_str(), partitions), p, "{s} of order {order}");
                }
            }
            let sku = Sku(format!("SKU-{}", i % 37));
            let reserve = SagaCommand::ReserveStock {
                order_id: order,
                lines: vec![SagaLine { sku: sku.clone(), quantity: 1 }],
            };
            let stock = messages::inventory_stream(&sku).expect("stream");
            assert_eq!(
                partition_of_stream(messages::command_stream(&reserve).as_str(), 12),
                partition_of_stream(stock.as_str(), 12),
                "a SKU's commands go where its stock is"
            );
        }
    }

    #[tokio::test]
    async fn a_pod_refuses_another_layout_than_its_first() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("open");
        let pod = |index, count| Layout { role: "saga".into(), index, count, partitions: None };
        check_layout(&store, pod(1, 2)).expect("first start records it");
        check_layout(&store, pod(1, 2)).expect("the same layout starts");
        let err = check_layout(&store, pod(1, 3)).expect_err("another count");
        let text = err.to_string();
        assert!(text.contains("pod 1 of 2 of the saga role") && text.contains("pod 1 of 3"), "{text}");
        assert!(check_layout(&store, pod(0, 2)).is_err(), "another index");
        let topics =
            |a, b| vec![("order_domain_events".to_owned(), a), ("replies_domain_events".to_owned(), b)];
        assert!(check_partitions(&store, "saga-manager", &topics(4, 2)).is_err(), "mixed counts");
        check_partitions(&store, "saga-manager", &topics(4, 4)).expect("recorded");
        assert_eq!(recorded(&store).expect("read").and_then(|l| l.partitions), Some(4));
        let err = check_partitions(&store, "saga-manager", &topics(8, 8)).expect_err("moved");
        assert!(err.to_string().contains("8 partitions"), "{err}");
    }
}
