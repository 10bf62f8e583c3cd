//! Read-model storage: JSON documents per projection and generation, under the event store's
//! application key prefix, written in atomic batches together with the projection's checkpoint.
//!
//! | key (after `X`, `P`) | value |
//! |----------------------|-------|
//! | `g` name | current generation (u32) |
//! | `c` name gen | checkpoint: last position applied (u64) |
//! | `d` name gen key | document (JSON, LZ4-compressed when large: see [`encode_doc`]) |
//! | `v` name gen | the version of the projection that built the generation (u32) |
//! | `b` name checkpoint | a complete backup: its document count (u64), the version of the projection that built it (u32; absent: 1) |
//! | `B` name checkpoint key | a backed-up document (as stored under `d`) |
//! | `a` name | an as-of model (`<projection>@<ns>`): its sequence number of creation (u64) |
//!
//! Queries read the current generation. A rebuild fills the next generation while queries keep
//! reading the current one, then switches the pointer in one write. Backups are copies of a
//! model at a checkpoint; a replay from a time starts from the newest backup at or before it.

use std::collections::BTreeMap;

use event_store::storage::WriteBatch;
use event_store::{EventStore, Storage, APP_KEY_PREFIX};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ProjectionError, Result};

fn base(kind: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.push(APP_KEY_PREFIX);
    k.push(b'P');
    k.push(kind);
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn gen_key(kind: u8, name: &str, gen: u32) -> Vec<u8> {
    let mut k = base(kind, name);
    k.extend_from_slice(&gen.to_be_bytes());
    k
}

fn doc_key(name: &str, gen: u32, key: &str) -> Vec<u8> {
    let mut k = gen_key(b'd', name, gen);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The first byte of a compressed document. JSON as serde writes it never starts with it, so
/// documents written before compression (plain JSON) read as they are.
const LZ4_DOC: u8 = 0x01;
/// Documents shorter than this stay plain JSON: LZ4's header and literals would not pay.
const COMPRESS_FROM: usize = 128;
/// The largest decompressed document accepted, so a corrupt length cannot ask for gigabytes.
const MAX_DOC: usize = 64 << 20;

/// A document's stored form: its JSON, or, for JSON of [`COMPRESS_FROM`] bytes or more that LZ4
/// makes smaller, `0x01`, the JSON's length (u32, little endian) and the JSON compressed as one
/// LZ4 block. Timelines and ledgers are JSON with the same field names over and over; a
/// 50,000-order run's read models took 149 MiB compressed against 229 MiB as JSON
/// (BENCHMARKS.md, "The long run"). Every event that changes a document rewrites it whole, so its
/// size is also what sled copies on each write.
pub fn encode_doc(json: Vec<u8>) -> Vec<u8> {
    if json.len() < COMPRESS_FROM || json.len() > MAX_DOC {
        return json;
    }
    let packed = lz4_flex::block::compress_prepend_size(&json);
    if packed.len() + 1 >= json.len() {
        return json;
    }
    let mut out = Vec::with_capacity(packed.len() + 1);
    out.push(LZ4_DOC);
    out.extend_from_slice(&packed);
    out
}

/// A stored document's JSON (the inverse of [`encode_doc`]); an error says what is wrong.
pub fn decode_doc(stored: &[u8]) -> std::result::Result<std::borrow::Cow<'_, [u8]>, String> {
    match stored.split_first() {
        Some((&LZ4_DOC, packed)) => {
            let len: [u8; 4] = packed
                .get(..4)
                .and_then(|l| l.try_into().ok())
                .ok_or_else(|| "compressed document without its length".to_owned())?;
            let len = u32::from_le_bytes(len) as usize;
            // LZ4 expands at most 255 times (plus a few bytes of its last literals): a length
            // beyond that is a damaged header, refused before anything is allocated for it.
            let body = packed.len() - 4;
            if len > MAX_DOC || len > body.saturating_mul(255).saturating_add(16) {
                return Err(format!("compressed document of {body} bytes claims {len} bytes"));
            }
            let mut out = vec![0; len];
            let n = lz4_flex::block::decompress_into(&packed[4..], &mut out)
                .map_err(|e| format!("compressed document: {e}"))?;
            if n != len {
                return Err(format!("compressed document: {n} bytes, its header says {len}"));
            }
            Ok(std::borrow::Cow::Owned(out))
        }
        _ => Ok(std::borrow::Cow::Borrowed(stored)),
    }
}

/// A stored document read as `T`.
fn parse_doc<T: DeserializeOwned>(stored: &[u8], name: &str, key: &str) -> Result<T> {
    let json = decode_doc(stored).map_err(|e| ProjectionError::Corrupt(format!("{name}/{key}: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| ProjectionError::Corrupt(format!("{name}/{key}: {e}")))
}

fn u64_of(bytes: &[u8], what: &str) -> Result<u64> {
    let a: [u8; 8] =
        bytes.try_into().map_err(|_| ProjectionError::Corrupt(format!("{what}: not 8 bytes")))?;
    Ok(u64::from_be_bytes(a))
}

fn backup_index_key(name: &str, checkpoint: u64) -> Vec<u8> {
    let mut k = base(b'b', name);
    k.extend_from_slice(&checkpoint.to_be_bytes());
    k
}

fn backup_docs_prefix(name: &str, checkpoint: u64) -> Vec<u8> {
    let mut k = base(b'B', name);
    k.extend_from_slice(&checkpoint.to_be_bytes());
    k
}

fn upper(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

/// One writer at a time per read model: the live runner's commits and a rebuild's switch.
type WriterLocks = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, WriterLock>>>;
/// Held while writing the current generation of a read model or switching it.
pub type WriterLock = std::sync::Arc<std::sync::Mutex<()>>;

/// The read models of one node.
#[derive(Debug)]
pub struct ReadModels<S: Storage> {
    store: EventStore<S>,
    writers: WriterLocks,
}

impl<S: Storage> Clone for ReadModels<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), writers: self.writers.clone() }
    }
}

impl<S: Storage> ReadModels<S> {
    /// Read models kept in `store`'s database. Clones share the writer locks; make one per node.
    pub fn new(store: EventStore<S>) -> Self {
        Self { store, writers: WriterLocks::default() }
    }

    /// The lock a writer of `name`'s current generation holds (the live runner per chunk, a
    /// rebuild for its last catch-up and the switch), so a switch never races a commit.
    pub fn writer(&self, name: &str) -> WriterLock {
        let mut map = self.writers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Copies every key under `from` to the same suffix under `to`, in batches; returns the count.
    fn copy_prefix(&self, from: &[u8], to: &[u8]) -> Result<u64> {
        let end = upper(from);
        let mut start = from.to_vec();
        let mut copied = 0;
        loop {
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self
                .store
                .storage()
                .range(&start, &end, false)
                .take(1024)
                .map(|r| r.map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec())))
                .collect::<std::result::Result<_, _>>()?;
            let Some((last, _)) = rows.last() else { break };
            start = last.clone();
            start.push(0);
            let mut batch = WriteBatch::default();
            for (k, v) in rows {
                let mut target = to.to_vec();
                target.extend_from_slice(&k[from.len()..]);
                batch.put(target, v);
                copied += 1;
            }
            self.store.storage().apply(batch)?;
        }
        Ok(copied)
    }

    /// Deletes every key under `prefix`, in batches.
    fn delete_prefix(&self, prefix: &[u8]) -> Result<()> {
        let end = upper(prefix);
        loop {
            let keys: Vec<Vec<u8>> = self
                .store
                .storage()
                .range(prefix, &end, false)
                .take(1024)
                .map(|r| r.map(|(k, _)| k.as_ref().to_vec()))
                .collect::<std::result::Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            for k in keys {
                batch.delete(k);
            }
            self.store.storage().apply(batch)?;
        }
    }

    /// Copies the current generation of `name` to a backup at its checkpoint and returns that
    /// checkpoint. The caller must hold [`ReadModels::writer`] (the copy is not a snapshot). The
    /// backup counts only once complete: its index entry is written last.
    pub fn backup_locked(&self, name: &str) -> Result<u64> {
        let gen = self.generation(name)?;
        let checkpoint = self.checkpoint(name, gen)?;
        let version = self.built_by(name, gen)?.unwrap_or(1);
        let target = backup_docs_prefix(name, checkpoint);
        self.delete_prefix(&target)?;
        let docs = self.copy_prefix(&gen_key(b'd', name, gen), &target)?;
        let mut index = docs.to_be_bytes().to_vec();
        index.extend_from_slice(&version.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.put(backup_index_key(name, checkpoint), index);
        self.store.storage().apply(batch)?;
        Ok(checkpoint)
    }

    /// [`ReadModels::backup_locked`], taking the writer lock.
    pub fn backup(&self, name: &str) -> Result<u64> {
        let lock = self.writer(name);
        let _guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.backup_locked(name)
    }

    /// The complete backups of `name` with the version of the projection that built each, by
    /// checkpoint, oldest first.
    pub fn backup_versions(&self, name: &str) -> Result<Vec<(u64, u32)>> {
        let prefix = base(b'b', name);
        let mut out = Vec::new();
        for item in self.store.storage().range(&prefix, &upper(&prefix), false) {
            let (k, v) = item?;
            let cp = u64_of(&k.as_ref()[prefix.len()..], &format!("backup index of {name}"))?;
            let version = match v.as_ref().len() {
                8 => 1,
                12 => u32::from_be_bytes([v.as_ref()[8], v.as_ref()[9], v.as_ref()[10], v.as_ref()[11]]),
                n => {
                    return Err(ProjectionError::Corrupt(format!(
                        "backup index of {name} at {cp}: {n} bytes"
                    )))
                }
            };
            out.push((cp, version));
        }
        Ok(out)
    }

    /// The complete backups of `name`, by checkpoint, oldest first.
    pub fn backups(&self, name: &str) -> Result<Vec<u64>> {
        let prefix = base(b'b', name);
        let mut out = Vec::new();
        for item in self.store.storage().range(&prefix, &upper(&prefix), false) {
            let (k, _) = item?;
            out.push(u64_of(&k.as_ref()[prefix.len()..], &format!("backup index of {name}"))?);
        }
        Ok(out)
    }

    /// Deletes the backup of `name` at `checkpoint` (index first, so it never looks complete
    /// while half deleted).
    pub fn drop_backup(&self, name: &str, checkpoint: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete(backup_index_key(name, checkpoint));
        self.store.storage().apply(batch)?;
        self.delete_prefix(&backup_docs_prefix(name, checkpoint))
    }

    /// Keeps the newest `keep` backups of `name`.
    pub fn prune_backups(&self, name: &str, keep: usize) -> Result<()> {
        let all = self.backups(name)?;
        for cp in &all[..all.len().saturating_sub(keep)] {
            self.drop_backup(name, *cp)?;
        }
        Ok(())
    }

    /// Replaces generation `gen` of `name` with the backup at `checkpoint` (documents and
    /// checkpoint).
    pub fn restore_backup(&self, name: &str, checkpoint: u64, gen: u32) -> Result<()> {
        if !self.backups(name)?.contains(&checkpoint) {
            return Err(ProjectionError::Corrupt(format!("{name} has no backup at {checkpoint}")));
        }
        self.drop_generation(name, gen)?;
        self.copy_prefix(&backup_docs_prefix(name, checkpoint), &gen_key(b'd', name, gen))?;
        let mut batch = WriteBatch::default();
        batch.put(gen_key(b'c', name, gen), checkpoint.to_be_bytes().to_vec());
        self.store.storage().apply(batch)?;
        Ok(())
    }

    /// The event store.
    pub fn store(&self) -> &EventStore<S> {
        &self.store
    }

    /// The generation queries read.
    pub fn generation(&self, name: &str) -> Result<u32> {
        match self.store.storage().get(&base(b'g', name))? {
            None => Ok(0),
            Some(v) => {
                let a: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| ProjectionError::Corrupt(format!("generation of {name}")))?;
                Ok(u32::from_be_bytes(a))
            }
        }
    }

    /// The last position applied to a generation (0: nothing).
    pub fn checkpoint(&self, name: &str, gen: u32) -> Result<u64> {
        match self.store.storage().get(&gen_key(b'c', name, gen))? {
            None => Ok(0),
            Some(v) => u64_of(v.as_ref(), &format!("checkpoint of {name}")),
        }
    }

    /// How far the current generation is behind the log's head.
    pub fn lag(&self, name: &str) -> Result<u64> {
        let cp = self.checkpoint(name, self.generation(name)?)?;
        Ok(self.store.head().saturating_sub(cp))
    }

    /// A document of the current generation.
    pub fn get<T: DeserializeOwned>(&self, name: &str, key: &str) -> Result<Option<T>> {
        self.get_in(name, self.generation(name)?, key)
    }

    /// A document of a given generation.
    pub fn get_in<T: DeserializeOwned>(&self, name: &str, gen: u32, key: &str) -> Result<Option<T>> {
        match self.store.storage().get(&doc_key(name, gen, key))? {
            None => Ok(None),
            Some(v) => parse_doc(v.as_ref(), name, key).map(Some),
        }
    }

    /// Documents of the current generation whose keys start with `prefix`, in key order, after
    /// the key `after` (exclusive; for cursor pagination), at most `limit`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        name: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>> {
        self.scan_in(name, self.generation(name)?, prefix, after, limit)
    }

    /// Like [`ReadModels::scan`] in a given generation.
    pub fn scan_in<T: DeserializeOwned>(
        &self,
        name: &str,
        gen: u32,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>> {
        let head = gen_key(b'd', name, gen);
        let start = match after {
            Some(a) => {
                let mut k = doc_key(name, gen, a);
                k.push(0); // strictly after
                k
            }
            None => doc_key(name, gen, prefix),
        };
        let mut end = doc_key(name, gen, prefix);
        end.push(0xff);
        let mut out = Vec::new();
        for item in self.store.storage().range(&start, &end, false) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k.as_ref()[head.len()..]).into_owned();
            if !key.starts_with(prefix) {
                continue;
            }
            let doc = parse_doc(v.as_ref(), name, &key)?;
            out.push((key, doc));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every document of a generation, as raw JSON (for comparisons and `verify`).
    pub fn dump(&self, name: &str, gen: u32) -> Result<BTreeMap<String, serde_json::Value>> {
        let prefix = gen_key(b'd', name, gen);
        let mut end = prefix.clone();
        end.push(0xff);
        let mut out = BTreeMap::new();
        for item in self.store.storage().range(&prefix, &end, false) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k.as_ref()[prefix.len()..]).into_owned();
            let value = parse_doc(v.as_ref(), name, &key)?;
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Starts a change to a generation.
    pub fn begin(&self, name: &str, gen: u32) -> Tx<'_, S> {
        Tx { models: self, name: name.to_owned(), gen, overlay: BTreeMap::new() }
    }

    /// Applies a change and moves the generation's checkpoint to `position`, atomically.
    pub fn commit(&self, tx: Tx<'_, S>, position: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, slot) in tx.overlay {
            let k = doc_key(&tx.name, tx.gen, &key);
            match slot {
                Slot::Doc(v, encode) => batch.put(k, encode(v.as_ref())?),
                Slot::Deleted => batch.delete(k),
            }
        }
        batch.put(gen_key(b'c', &tx.name, tx.gen), position.to_be_bytes().to_vec());
        self.store.storage().apply(batch)?;
        Ok(())
    }

    /// The version of the projection that built generation `gen` of `name` (`None`: recorded
    /// before versions were, which is version 1, or never built).
    pub fn built_by(&self, name: &str, gen: u32) -> Result<Option<u32>> {
        match self.store.storage().get(&gen_key(b'v', name, gen))? {
            None => Ok(None),
            Some(v) => {
                let a: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| ProjectionError::Corrupt(format!("version of {name} generation {gen}")))?;
                Ok(Some(u32::from_be_bytes(a)))
            }
        }
    }

    /// Records that generation `gen` of `name` is built by version `version` of its projection.
    pub fn set_built_by(&self, name: &str, gen: u32, version: u32) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(gen_key(b'v', name, gen), version.to_be_bytes().to_vec());
        self.store.storage().apply(batch)?;
        Ok(())
    }

    /// Makes `gen` the generation queries read.
    pub fn switch(&self, name: &str, gen: u32) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(base(b'g', name), gen.to_be_bytes().to_vec());
        self.store.storage().apply(batch)?;
        Ok(())
    }

    /// Records that the as-of model `name` was built now; returns its sequence number.
    pub fn record_as_of(&self, name: &str) -> Result<u64> {
        let next = self.as_of_models("")?.iter().map(|(_, seq)| *seq).max().map_or(1, |m| m + 1);
        let mut batch = WriteBatch::default();
        batch.put(base(b'a', name), next.to_be_bytes().to_vec());
        self.store.storage().apply(batch)?;
        Ok(next)
    }

    /// The as-of models whose names start with `prefix`, with their creation sequence numbers,
    /// oldest first.
    pub fn as_of_models(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let start = vec![APP_KEY_PREFIX, b'P', b'a'];
        let end = upper(&start);
        let mut out = Vec::new();
        for item in self.store.storage().range(&start, &end, false) {
            let (k, v) = item?;
            let k = k.as_ref();
            let name = k
                .get(5..)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| ProjectionError::Corrupt("as-of model record".into()))?;
            if name.starts_with(prefix) {
                out.push((name.to_owned(), u64_of(v.as_ref(), "as-of model record")?));
            }
        }
        out.sort_by_key(|(_, seq)| *seq);
        Ok(out)
    }

    /// Deletes the as-of model `name` (its documents, checkpoint and record).
    pub fn drop_as_of(&self, name: &str) -> Result<()> {
        self.drop_generation(name, 0)?;
        let mut batch = WriteBatch::default();
        batch.delete(base(b'a', name));
        self.store.storage().apply(batch)?;
        Ok(())
    }

    /// Deletes a generation's documents and checkpoint.
    pub fn drop_generation(&self, name: &str, gen: u32) -> Result<()> {
        self.delete_prefix(&gen_key(b'd', name, gen))?;
        let mut batch = WriteBatch::default();
        batch.delete(gen_key(b'c', name, gen));
        batch.delete(gen_key(b'v', name, gen));
        self.store.storage().apply(batch)?;
        Ok(())
    }
}

type Encode = fn(&(dyn std::any::Any + Send)) -> Result<Vec<u8>>;

/// A changed document, kept typed until commit so a chunk decodes and encodes it once.
enum Slot {
    Doc(Box<dyn std::any::Any + Send>, Encode),
    Deleted,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Doc(..) => f.write_str("Doc"),
            Slot::Deleted => f.write_str("Deleted"),
        }
    }
}

fn encode<T: Serialize + 'static>(v: &(dyn std::any::Any + Send)) -> Result<Vec<u8>> {
    let v = v
        .downcast_ref::<T>()
        .ok_or_else(|| ProjectionError::Corrupt("document type changed within a chunk".into()))?;
    serde_json::to_vec(v).map(encode_doc).map_err(|e| ProjectionError::Corrupt(e.to_string()))
}

/// Uncommitted changes to one generation of one read model; reads see them.
#[derive(Debug)]
pub struct Tx<'a, S: Storage> {
    models: &'a ReadModels<S>,
    name: String,
    gen: u32,
    overlay: BTreeMap<String, Slot>,
}

impl<S: Storage> Tx<'_, S> {
    /// Reads a document (this change's version first).
    pub fn get<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<Option<T>> {
        match self.overlay.get(key) {
            Some(Slot::Deleted) => Ok(None),
            Some(Slot::Doc(v, _)) => v.downcast_ref::<T>().cloned().map(Some).ok_or_else(|| {
                ProjectionError::Corrupt(format!("{key}: read as another type within a chunk"))
            }),
            None => self.models.get_in(&self.name, self.gen, key),
        }
    }

    /// Takes a document out of this change to modify it and [`Tx::put`] it back: no copy of a
    /// document changed earlier in the chunk. Read from the model when this change has not
    /// touched it. A failed fold drops the whole change, so nothing taken is lost.
    pub fn take<T: DeserializeOwned + Send + 'static>(&mut self, key: &str) -> Result<Option<T>> {
        match self.overlay.remove(key) {
            Some(Slot::Doc(v, encode)) => match v.downcast::<T>() {
                Ok(doc) => Ok(Some(*doc)),
                Err(v) => {
                    self.overlay.insert(key.to_owned(), Slot::Doc(v, encode));
                    Err(ProjectionError::Corrupt(format!("{key}: read as another type within a chunk")))
                }
            },
            Some(Slot::Deleted) => {
                self.overlay.insert(key.to_owned(), Slot::Deleted);
                Ok(None)
            }
            None => self.models.get_in(&self.name, self.gen, key),
        }
    }

    /// Writes a document.
    pub fn put<T: Serialize + Send + 'static>(&mut self, key: &str, value: T) -> Result<()> {
        self.overlay.insert(key.to_owned(), Slot::Doc(Box::new(value), encode::<T>));
        Ok(())
    }

    /// Deletes a document.
    pub fn delete(&mut self, key: &str) {
        self.overlay.insert(key.to_owned(), Slot::Deleted);
    }

    /// Number of documents changed.
    pub fn len(&self) -> usize {
        self.overlay.len()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.overlay.is_empty()
    }
}
