//! Restore: rebuilds a node's lost log from its Kafka topics, byte for byte (positions,
//! versions, ids, timestamps, payloads), then verifies it.
//!
//! Every Causeway topic is read from the beginning up to the high watermarks taken at the start;
//! the records of this node's source are staged by position in a temporary sled database (the log
//! never has to fit in memory), repeats of a position are dropped (they must be identical), and
//! the staged log is imported in order into the new store. The import checks that positions are
//! gapless from 1 and that each stream's versions follow on; the digest of what was imported
//! must equal the digest of the store read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_store::{raw, EventStore, SledConfig, SledStorage, StoreConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{cloudevents, relay, KafkaConfig, KafkaError};

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Events written.
    pub events: u64,
    /// Distinct streams.
    pub streams: u64,
    /// Records read from Kafka (all sources, repeats included).
    pub records: u64,
    /// Repeated records of a position, dropped.
    pub duplicates: u64,
    /// The log's SHA-256 digest (equal in the import and in the store read back).
    pub digest: String,
    /// Where the replaced store was moved (with `force`).
    pub moved_aside: Option<PathBuf>,
}

fn other(e: impl std::fmt::Display) -> KafkaError {
    KafkaError::Other(e.to_string())
}

/// Restores the log of node `config.node_id` into `data_dir` (a sled store as `serve` opens it).
/// Refuses a directory that holds a store unless `force`, which moves the old store aside.
/// Blocking.
pub fn restore(config: &KafkaConfig, data_dir: &Path, force: bool) -> Result<RestoreReport, KafkaError> {
    restore_observed(config, data_dir, force, &|_, _| {})
}

/// [`restore`], telling `progress` (records read from Kafka, records to read) every 4,096
/// records: reading the topics is the long part of a restore.
pub fn restore_observed(
    config: &KafkaConfig,
    data_dir: &Path,
    force: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<RestoreReport, KafkaError> {
    // `serve` opens a sled database in the data directory itself (its `db` file marks it).
    let mut moved_aside = None;
    if event_store::SledStorage::exists_at(data_dir) {
        if !force {
            return Err(KafkaError::Other(format!(
                "{} already holds a store; refusing to overwrite it (pass --force to move it aside)",
                data_dir.display()
            )));
        }
        // Never move a store from under a running node: opening it takes its lock.
        let probe = SledConfig { lock_wait: Duration::from_secs(2), ..SledConfig::new(data_dir) };
        match SledStorage::open(&probe) {
            Ok(storage) => drop(storage),
            Err(e) => {
                return Err(KafkaError::Other(format!(
                    "{} cannot be opened (is a node running on it?): {e}",
                    data_dir.display()
                )))
            }
        }
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut aside = data_dir.as_os_str().to_owned();
        aside.push(format!(".replaced-{stamp}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(data_dir, &aside).map_err(other)?;
        moved_aside = Some(aside);
    }
    std::fs::create_dir_all(data_dir).map_err(other)?;
    // Staged next to the data directory (same disk), removed afterwards.
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging_dir =
        tempfile::Builder::new().prefix(".causeway-restore-").tempdir_in(parent).map_err(other)?;
    let staging = sled::Config::new().path(staging_dir.path()).open().map_err(other)?;
    let (records, duplicates) = stage(config, &staging, progress)?;

    let storage = SledStorage::open(&SledConfig::new(data_dir)).map_err(other)?;
    let mut importer = raw::Importer::new(&storage)?;
    for item in staging.iter() {
        let (k, v) = item.map_err(other)?;
        let pos = u64::from_be_bytes(k.as_ref().try_into().map_err(other)?);
        importer.push(&raw::decode_record(&v, pos)?)?;
    }
    let digest = importer.finish()?;
    drop(staging);
    drop(staging_dir);

    let store = EventStore::open(storage, StoreConfig::default())?;
    let check = store.verify()?;
    if !check.is_ok() {
        return Err(KafkaError::Other(format!(
            "the restored log is inconsistent: {}",
            check.problems.join("; ")
        )));
    }
    let read_back = raw::digest(store.storage())?;
    if read_back.hex() != digest.hex()
        || read_back.count() != digest.count()
        || check.events != digest.count()
    {
        return Err(KafkaError::Other(format!(
            "the restored log differs from what Kafka holds: {} events digest {} vs {} events digest {}",
            digest.count(),
            digest.hex(),
            read_back.count(),
            read_back.hex()
        )));
    }
    // Everything restored is in Kafka already: the relay resumes after it.
    let head = store.head();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(other)?;
    rt.block_on(store.save_checkpoint(relay::CHECKPOINT, head))?;
    Ok(RestoreReport {
        events: check.events,
        streams: check.streams,
        records,
        duplicates,
        digest: digest.hex(),
        moved_aside,
    })
}

/// Reads every Causeway topic up to its high watermark into `staging` (position → log record).
/// Returns (records read, repeats dropped).
fn stage(
    config: &KafkaConfig,
    staging: &sled::Db,
    progress: &dyn Fn(u64, u64),
) -> Result<(u64, u64), KafkaError> {
    let source = config.source();
    let consumer: BaseConsumer = config.reader("restore").create()?;
    let topics = super::list_topics(config)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut to_read = 0u64;
    for (topic, partitions) in &topics {
        for p in 0..*partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
                ends.insert((topic.clone(), p), high);
                to_read += u64::try_from(high - low).unwrap_or(0);
            }
        }
    }
    if ends.is_empty() {
        return Err(KafkaError::Other(format!("Kafka holds no records of {source}")));
    }
    consumer.assign(&tpl)?;
    let (mut records, mut duplicates, mut ours) = (0u64, 0u64, 0u64);
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                if idle_since.elapsed() > Duration::from_secs(30) {
                    return Err(KafkaError::Other(format!(
                        "reading the topics stalled; {} partitions unfinished",
                        ends.len()
                    )));
                }
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                idle_since = Instant::now();
                records += 1;
                if records % 4096 == 0 {
                    progress(records, to_read);
                }
                let key = (m.topic().to_owned(), m.partition());
                if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
                let headers = cloudevents::header_map(m.headers());
                if headers.get("ce_source").map(String::as_str) != Some(source.as_str()) {
                    continue;
                }
                let e =
                    cloudevents::decode(&headers, m.payload()).map_err(|reason| KafkaError::Malformed {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        reason,
                    })?;
                ours += 1;
                let record = event_store::raw::log_record(&e)?;
                let k = e.position.to_be_bytes();
                match staging.get(k).map_err(other)? {
                    Some(existing) if existing.as_ref() == record.as_slice() => duplicates += 1,
                    Some(_) => {
                        return Err(KafkaError::Other(format!(
                            "position {} appears twice in Kafka with different content",
                            e.position
                        )))
                    }
                    None => {
                        staging.insert(k, record).map_err(other)?;
                    }
                }
            }
        }
    }
    if ours == 0 {
        return Err(KafkaError::Other(format!("Kafka holds no records of {source}")));
    }
    Ok((records, duplicates))
}
