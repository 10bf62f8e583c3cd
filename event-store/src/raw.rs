//! The on-disk format, for tools that must produce or read the exact bytes the store writes
//! (benchmarks comparing against the raw engine, restore, offline inspection).

use crate::codec;
use crate::error::Result;
use crate::frame;
use crate::keys;
use crate::types::{NewEvent, RecordedEvent};

/// The name of the sled tree holding the store's key space.
pub const SLED_TREE: &str = crate::storage::SLED_TREE;

/// The bytes the store writes for one event, as one entry each: the log record and its stream
/// and event-id index entries. The store itself packs consecutive records into one log frame per
/// key and writes one stream-index entry per run of a stream's events in an append (with a copy
/// of a short run's records, which these entries leave out); these per-event entries are the
/// raw-engine baseline of the benchmarks.
pub fn entries(
    position: u64,
    version: u64,
    recorded_at_ns: u64,
    stream: &str,
    event: &NewEvent,
) -> Result<[(Vec<u8>, Vec<u8>); 3]> {
    let body = codec::encode_body(stream, event)?;
    Ok([
        (keys::log(position).to_vec(), codec::record(position, version, recorded_at_ns, &body)),
        (keys::stream(stream, version), codec::encode_run(position, 1, None)),
        (keys::event_id(&event.event_id).to_vec(), position.to_be_bytes().to_vec()),
    ])
}

/// The log record (value) of `e` exactly as the store keeps it.
pub fn log_record(e: &RecordedEvent) -> Result<Vec<u8>> {
    let body = codec::encode_body(&e.stream_id, &NewEvent::from(e))?;
    Ok(codec::record(e.position, e.version, e.recorded_at_ns, &body))
}

/// The first log key (the log's keys are `[log_start(), log_end())`).
pub fn log_start() -> [u8; 9] {
    keys::log(0)
}

/// The end (exclusive) of the log's key range.
pub fn log_end() -> [u8; 1] {
    keys::log_end()
}

/// Decodes and verifies a log record stored at `position`.
pub fn decode_record(bytes: &[u8], position: u64) -> Result<RecordedEvent> {
    codec::decode_record(bytes, position)
}

/// Decodes every record of one log frame, as stored under `key` (a raw engine scan).
pub fn decode_frame(key: &[u8], value: &[u8]) -> Result<Vec<RecordedEvent>> {
    let last = keys::trailing_u64(key).ok_or_else(|| crate::Error::corrupt("log key", "short key"))?;
    let mut cursor = frame::Cursor::new(frame::parse(value, last)?);
    let mut events = Vec::new();
    while let Some((position, range)) = cursor.next(value) {
        events.push(codec::decode_record(&value[range?], position)?);
    }
    Ok(events)
}

/// Writes whole events, exactly as recorded elsewhere (positions, versions, ids, timestamps,
/// payloads), into an empty storage: how a lost log is restored from its mirror. Events must
/// come in position order, starting at 1, without gaps; each stream's versions must follow on;
/// timestamps must not go backwards. Open an [`crate::EventStore`] on the storage afterwards.
#[derive(Debug)]
pub struct Importer<'a, S: crate::Storage> {
    storage: &'a S,
    batch: crate::storage::WriteBatch,
    batched: usize,
    frame: frame::FrameBuilder,
    /// The stream run being built: stream, first version, first position, length.
    run: Option<(String, u64, u64, u64)>,
    /// The copy of the run's records for its index entry, while it is short enough.
    inline: Option<frame::FrameBuilder>,
    next_position: u64,
    last_ts: u64,
    versions: std::collections::HashMap<String, u64>,
    digest: log_digest::Digest,
}

/// A digest of a log: SHA-256 over every log record's bytes in position order, so equal logs
/// (same positions, versions, timestamps, ids, payloads) have equal digests.
pub mod log_digest {
    use sha2::Digest as _;

    /// The running digest.
    #[derive(Debug, Default, Clone)]
    pub struct Digest {
        hasher: sha2::Sha256,
        count: u64,
    }

    impl Digest {
        /// Adds the next record's bytes.
        pub fn add(&mut self, record: &[u8]) {
            self.hasher.update((record.len() as u64).to_be_bytes());
            self.hasher.update(record);
            self.count += 1;
        }

        /// Records added.
        pub fn count(&self) -> u64 {
            self.count
        }

        /// The digest so far, as 64 hex digits.
        pub fn hex(&self) -> String {
            self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

impl<'a, S: crate::Storage> Importer<'a, S> {
    /// Records per write batch.
    const BATCH: usize = 4096;

    /// An importer into `storage`, which must hold no log yet.
    pub fn new(storage: &'a S) -> Result<Self> {
        if storage.range(&keys::log(0), &keys::log_end(), false).next().is_some() {
            return Err(crate::Error::InvalidAppend(
                "the storage already holds a log; import needs an empty one".into(),
            ));
        }
        Ok(Self {
            storage,
            batch: crate::storage::WriteBatch::default(),
            batched: 0,
            frame: frame::FrameBuilder::default(),
            run: None,
            inline: None,
            next_position: 1,
            last_ts: 0,
            versions: std::collections::HashMap::new(),
            digest: log_digest::Digest::default(),
        })
    }

    /// Adds the next event.
    pub fn push(&mut self, e: &RecordedEvent) -> Result<()> {
        let bad = |reason: String| {
            crate::Error::InvalidAppend(format!("import at position {}: {reason}", e.position))
        };
        if e.position != self.next_position {
            return Err(bad(format!("expected position {}", self.next_position)));
        }
        if e.recorded_at_ns < self.last_ts {
            return Err(bad("recorded-at goes backwards".into()));
        }
        crate::StreamId::new(e.stream_id.clone())?;
        let v = self.versions.entry(e.stream_id.clone()).or_insert(0);
        if e.version != *v + 1 {
            return Err(bad(format!("{} version {} does not follow {}", e.stream_id, e.version, v)));
        }
        *v = e.version;
        let record = log_record(e)?;
        self.digest.add(&record);
        if let Some((last, bytes)) =
            self.frame.push(e.position, record.len(), |out| out.extend_from_slice(&record))
        {
            self.batch.put(keys::log(last).to_vec(), bytes);
        }
        self.batch.put(keys::event_id(&e.event_id).to_vec(), e.position.to_be_bytes().to_vec());
        match &mut self.run {
            Some((stream, first_version, first_position, count))
                if *stream == e.stream_id
                    && e.version == *first_version + *count
                    && e.position == *first_position + *count =>
            {
                *count += 1
            }
            _ => {
                self.close_run();
                self.run = Some((e.stream_id.clone(), e.version, e.position, 1));
                self.inline = Some(frame::FrameBuilder::default());
            }
        }
        // The run's copy for its index entry, while the run stays short.
        let fits = |b: &frame::FrameBuilder| {
            b.len().max(frame::HEAD) + 4 + record.len() <= crate::store::INLINE_RUN_BYTES
        };
        match self.inline.as_mut() {
            Some(inline) if fits(inline) => inline.push_copy(e.position, &record),
            _ => self.inline = None,
        }
        self.next_position += 1;
        self.last_ts = e.recorded_at_ns;
        self.batched += 1;
        if self.batched >= Self::BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn close_run(&mut self) {
        if let Some((stream, first_version, first_position, count)) = self.run.take() {
            let inline = self.inline.take().map(|mut b| b.take().1);
            for (k, v) in
                crate::store::stream_runs(&stream, first_version, first_position, count, inline.as_deref())
            {
                self.batch.put(k, v);
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.close_run();
        if !self.frame.is_empty() {
            let (last, bytes) = self.frame.take();
            self.batch.put(keys::log(last).to_vec(), bytes);
        }
        if self.batched > 0 {
            self.storage.apply(std::mem::take(&mut self.batch))?;
            self.batched = 0;
        }
        Ok(())
    }

    /// Writes what is left and syncs; returns the digest of the imported log.
    pub fn finish(mut self) -> Result<log_digest::Digest> {
        self.flush()?;
        self.storage.sync()?;
        Ok(self.digest)
    }
}

/// The digest of the log in `storage` (read back record by record), comparable with
/// [`Importer::finish`]'s.
pub fn digest<S: crate::Storage>(storage: &S) -> Result<log_digest::Digest> {
    let mut d = log_digest::Digest::default();
    let mut scan = frame::RecordScan::new(storage, 1, u64::MAX);
    while let Some((_, record)) = scan.next_record() {
        d.add(record?);
    }
    Ok(d)
}

/// The store format this build writes and reads.
pub const STORE_FORMAT: u64 = crate::store::FORMAT_VERSION;

/// The format marker of the store in `storage` (`None` for an empty storage).
pub fn store_format<S: crate::Storage>(storage: &S) -> Result<Option<u64>> {
    match storage.get(&keys::meta(crate::store::FORMAT_KEY))? {
        None => Ok(None),
        Some(v) => codec::decode_u64(v.as_ref(), || "store format marker".into()).map(Some),
    }
}

/// What [`migrate`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The format migrated from.
    pub from_format: u64,
    /// Events copied (positions 1 to `events`).
    pub events: u64,
    /// Other entries copied as they are: checkpoints, snapshots and application data.
    pub other_entries: u64,
    /// The digest of the log, the same before and after.
    pub digest: String,
}

/// Copies the store in `old` (of an older format this build can read: 1, 2 or 3) into the empty
/// `new` in the current format. Every record keeps its exact bytes (positions, versions, ids,
/// timestamps, payloads; the digests of both logs are compared), the indexes are written anew,
/// and checkpoints, snapshots and application data (read models) are copied unchanged. Open an
/// [`crate::EventStore`] on `new` afterwards; `old` is not changed.
pub fn migrate<S: crate::Storage, T: crate::Storage>(old: &S, new: &T) -> Result<Migration> {
    migrate_observed(old, new, &|_| {})
}

/// [`migrate`], telling `progress` the events copied so far every 4,096 events.
pub fn migrate_observed<S: crate::Storage, T: crate::Storage>(
    old: &S,
    new: &T,
    progress: &dyn Fn(u64),
) -> Result<Migration> {
    let from_format = match store_format(old)? {
        Some(f @ (1..=3)) => f,
        Some(f) if f == STORE_FORMAT => {
            return Err(crate::Error::InvalidAppend(format!("the store is already of format {f}")))
        }
        Some(f) => {
            return Err(crate::Error::InvalidAppend(format!(
                "store format {f} is not one this build can migrate (1, 2 or 3 to {STORE_FORMAT})"
            )))
        }
        None => return Err(crate::Error::InvalidAppend("the store is empty: nothing to migrate".into())),
    };
    if store_format(new)?.is_some() {
        return Err(crate::Error::InvalidAppend("the target of a migration must be empty".into()));
    }
    let mut importer = Importer::new(new)?;
    let mut before = log_digest::Digest::default();
    let mut push = |position: u64, record: &[u8]| -> Result<()> {
        before.add(record);
        if position % 4096 == 0 {
            progress(position);
        }
        importer.push(&codec::decode_record(record, position)?)
    };
    if from_format == 1 {
        // One record per key, under its own position.
        for item in old.range(&keys::log(0), &keys::log_end(), false) {
            let (k, v) = item?;
            let position = keys::trailing_u64(k.as_ref())
                .ok_or_else(|| crate::Error::corrupt("log key", "short key"))?;
            push(position, v.as_ref())?;
        }
    } else {
        // Frames, as now (formats 2 and 3 differ in their stream index only).
        let mut scan = frame::RecordScan::new(old, 1, u64::MAX);
        while let Some((position, record)) = scan.next_record() {
            push(position, record?)?;
        }
    }
    let mut other_entries = 0u64;
    let mut batch = crate::storage::WriteBatch::default();
    for tag in [keys::CHECKPOINT, keys::SNAPSHOT, keys::APP] {
        for item in old.range(&[tag], &[tag + 1], false) {
            let (k, v) = item?;
            batch.put(k.as_ref().to_vec(), v.as_ref().to_vec());
            other_entries += 1;
            if batch.len() >= 4096 {
                new.apply(std::mem::take(&mut batch))?;
            }
        }
    }
    new.apply(batch)?;
    let after = importer.finish()?;
    if after.hex() != before.hex() || after.count() != before.count() {
        return Err(crate::Error::corrupt(
            "migration",
            format!(
                "the copied log differs: {} records digest {} before, {} records digest {} after",
                before.count(),
                before.hex(),
                after.count(),
                after.hex()
            ),
        ));
    }
    Ok(Migration { from_format, events: after.count(), other_entries, digest: after.hex() })
}
