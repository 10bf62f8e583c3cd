//! An in-memory [`Storage`] for tests: a `BTreeMap` behind a lock.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::{Storage, StorageError, WriteBatch};

type Map = BTreeMap<Arc<[u8]>, Arc<[u8]>>;
type Entry = (Arc<[u8]>, Arc<[u8]>);

/// In-memory storage. Cloning shares the same data, so a test can "reopen" a store on it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    map: Arc<RwLock<Map>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Map>, StorageError> {
        self.map.read().map_err(|_| StorageError::new("memory storage lock poisoned"))
    }
}

/// A range iterator that re-seeks in chunks so no lock is held between calls.
#[derive(Debug)]
pub struct MemoryIter {
    map: Arc<RwLock<Map>>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    buf: std::collections::VecDeque<Entry>,
    done: bool,
}

const CHUNK: usize = 256;

impl MemoryIter {
    fn refill(&mut self) -> Result<(), StorageError> {
        let map = self.map.read().map_err(|_| StorageError::new("memory storage lock poisoned"))?;
        let range = map.range::<[u8], _>((
            self.lower.as_ref().map(|k| k.as_slice()),
            self.upper.as_ref().map(|k| k.as_slice()),
        ));
        let chunk: Vec<_> = if self.reverse {
            range.rev().take(CHUNK).map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            range.take(CHUNK).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if chunk.len() < CHUNK {
            self.done = true;
        }
        if let Some((last, _)) = chunk.last() {
            if self.reverse {
                self.upper = Bound::Excluded(last.to_vec());
            } else {
                self.lower = Bound::Excluded(last.to_vec());
            }
        }
        self.buf.extend(chunk);
        Ok(())
    }
}

impl Iterator for MemoryIter {
    type Item = Result<(Arc<[u8]>, Arc<[u8]>), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.refill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

impl Storage for MemoryStorage {
    type Value = Arc<[u8]>;
    type Iter = MemoryIter;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StorageError> {
        Ok(self.read()?.get(key).cloned())
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        let empty = start >= end;
        MemoryIter {
            map: self.map.clone(),
            lower: Bound::Included(start.to_vec()),
            upper: Bound::Excluded(end.to_vec()),
            reverse,
            buf: Default::default(),
            done: empty,
        }
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut map = self.map.write().map_err(|_| StorageError::new("memory storage lock poisoned"))?;
        for (k, v) in batch.writes {
            match v {
                Some(v) => {
                    map.insert(Arc::from(k), Arc::from(v));
                }
                None => {
                    map.remove(k.as_slice());
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn flush_to_os(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}
