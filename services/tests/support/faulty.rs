//! A memory engine with faults a test turns on: every sync fails or is slow, writes of keys that
//! hold some bytes fail, or reads of keys that hold some bytes fail.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_store::storage::WriteBatch;
use event_store::{MemoryStorage, Storage, StorageError};

/// A memory store with switchable faults.
#[derive(Debug, Clone, Default)]
pub struct Faulty {
    inner: MemoryStorage,
    fail_sync: Arc<AtomicBool>,
    slow_sync_ms: Arc<AtomicU64>,
    fail_writes_of: Arc<Mutex<Option<Vec<u8>>>>,
    fail_reads_of: Arc<Mutex<Option<Vec<u8>>>>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl Faulty {
    /// Every sync fails from now on (`false`: none does).
    pub fn fail_syncs(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }

    /// Every sync takes `ms` milliseconds from now on (0: none is slow).
    pub fn slow_syncs(&self, ms: u64) {
        self.slow_sync_ms.store(ms, Ordering::SeqCst);
    }

    /// A batch that writes a key holding `bytes` fails (`None`: none does).
    pub fn fail_writes_of(&self, bytes: Option<&[u8]>) {
        *self.fail_writes_of.lock().unwrap_or_else(|p| p.into_inner()) = bytes.map(<[u8]>::to_vec);
    }

    /// A read of a key (or from a range start) holding `bytes` fails (`None`: none does).
    pub fn fail_reads_of(&self, bytes: Option<&[u8]>) {
        *self.fail_reads_of.lock().unwrap_or_else(|p| p.into_inner()) = bytes.map(<[u8]>::to_vec);
    }

    fn read_fails(&self, key: &[u8]) -> bool {
        self.fail_reads_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            .is_some_and(|b| contains(key, b))
    }
}

/// A range of the inner engine, or an injected failure.
pub enum FaultyIter {
    /// The real range.
    Inner(<MemoryStorage as Storage>::Iter),
    /// One error, then nothing.
    Failed(Option<StorageError>),
}

impl Iterator for FaultyIter {
    type Item = Result<(<MemoryStorage as Storage>::Value, <MemoryStorage as Storage>::Value), StorageError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FaultyIter::Inner(i) => i.next(),
            FaultyIter::Failed(e) => e.take().map(Err),
        }
    }
}

impl Storage for Faulty {
    type Value = <MemoryStorage as Storage>::Value;
    type Iter = FaultyIter;
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StorageError> {
        if self.read_fails(key) {
            return Err(StorageError("read failed (injected)".into()));
        }
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        if self.read_fails(start) || (reverse && self.read_fails(end)) {
            return FaultyIter::Failed(Some(StorageError("read failed (injected)".into())));
        }
        FaultyIter::Inner(self.inner.range(start, end, reverse))
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let failing = self.fail_writes_of.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(bytes) = failing {
            if batch.keys().any(|k| contains(k, &bytes)) {
                return Err(StorageError("write failed (injected)".into()));
            }
        }
        self.inner.apply(batch)
    }
    fn sync(&self) -> Result<(), StorageError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(StorageError("disk gone (injected)".into()));
        }
        let slow = self.slow_sync_ms.load(Ordering::SeqCst);
        if slow > 0 {
            std::thread::sleep(std::time::Duration::from_millis(slow));
        }
        Ok(())
    }
    fn flush_to_os(&self) -> Result<(), StorageError> {
        self.sync()
    }
    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}
