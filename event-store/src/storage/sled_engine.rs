//! The sled 0.34 [`Storage`]: one sled tree, explicit `fdatasync` for power-loss durability.
//!
//! sled 0.34's `flush` writes its log buffers with `pwrite` and then calls only
//! `sync_file_range`, which neither forces the drive cache nor commits file metadata, and it
//! writes large pages to `blobs/` files with no sync at all. [`SledStorage::sync`] therefore
//! follows `flush` with `fdatasync` of the `db` file, of every blob file not synced yet, and of
//! the `blobs/` directory when it gained entries.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Storage, StorageError, WriteBatch};

/// How to open a sled database.
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// Directory of the database.
    pub path: PathBuf,
    /// sled's page cache in bytes (the main part of resident memory).
    pub cache_capacity: u64,
    /// How long to wait for the database lock. sled's background threads hold it briefly after
    /// the previous handle in this process is dropped; another live process holds it for good.
    pub lock_wait: std::time::Duration,
}

impl SledConfig {
    /// Default cache: 256 MiB.
    pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

    /// A config for `path` with the default cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_capacity: Self::DEFAULT_CACHE_BYTES,
            lock_wait: std::time::Duration::from_secs(2),
        }
    }
}

/// sled-backed storage. The database is locked exclusively while open.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    data_file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

/// The file of a sled database in its directory.
const DATA_FILE: &str = "db";

impl SledStorage {
    /// Whether `dir` holds a database (sled's `db` file): what the tools that work on an
    /// existing store check before opening, so they do not create an empty one by mistake.
    pub fn exists_at(dir: &Path) -> bool {
        dir.join(DATA_FILE).exists()
    }

    /// Opens (creating if needed) the database at `config.path`.
    pub fn open(config: &SledConfig) -> Result<Self, StorageError> {
        let deadline = std::time::Instant::now() + config.lock_wait;
        let db = loop {
            let opened = sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity)
                .mode(sled::Mode::HighThroughput)
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => break db,
                // sled reports a held lock as an `Other` I/O error with this text.
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StorageError(format!(
                            "{} is locked by another process (is a node running on it?)",
                            config.path.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(StorageError(format!("open {}: {e}", config.path.display()))),
            }
        };
        let tree = db.open_tree(super::SLED_TREE).map_err(StorageError::new)?;
        let data_file = File::open(config.path.join(DATA_FILE)).map_err(StorageError::new)?;
        // Make the directory entries sled just created durable.
        sync_dir(&config.path)?;
        let storage =
            Self { db, tree, path: config.path.clone(), data_file, synced_blobs: Mutex::new(HashSet::new()) };
        Ok(storage)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sync_blobs(&self) -> Result<(), StorageError> {
        let dir = self.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::new(e)),
        };
        let mut synced =
            self.synced_blobs.lock().map_err(|_| StorageError::new("blob sync lock poisoned"))?;
        let mut present = HashSet::new();
        let mut new_entries = false;
        for entry in entries {
            let entry = entry.map_err(StorageError::new)?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data().map_err(StorageError::new)?,
                    // sled may garbage-collect a blob between listing and opening.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::new(e)),
                }
                new_entries = true;
            }
            present.insert(name);
        }
        *synced = present;
        if new_entries {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError(format!("fsync directory {}: {e}", dir.display())))
}

/// Ascending or descending sled range.
pub struct SledIter {
    inner: sled::Iter,
    reverse: bool,
}

impl std::fmt::Debug for SledIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledIter").field("reverse", &self.reverse).finish()
    }
}

impl Iterator for SledIter {
    type Item = Result<(sled::IVec, sled::IVec), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = if self.reverse { self.inner.next_back() } else { self.inner.next() };
        item.map(|r| r.map_err(StorageError::new))
    }
}

impl Storage for SledStorage {
    type Value = sled::IVec;
    type Iter = SledIter;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StorageError> {
        self.tree.get(key).map_err(StorageError::new)
    }

    fn range(&self, start: &[u8], end: &[u8], reverse: bool) -> Self::Iter {
        // sled panics on an inverted range; an empty one is the right answer.
        let inner = if start < end { self.tree.range(start..end) } else { self.tree.range(start..start) };
        SledIter { inner, reverse }
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.writes {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(StorageError::new)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush().map_err(StorageError::new)?;
        self.data_file
            .sync_data()
            .map_err(|e| StorageError(format!("fdatasync {}: {e}", self.path.display())))?;
        self.sync_blobs()
    }

    fn flush_to_os(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(StorageError::new)
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(StorageError::new)
    }

    fn volume_space(&self) -> Result<Option<super::VolumeSpace>, StorageError> {
        let stats = fs2::statvfs(&self.path)
            .map_err(|e| StorageError(format!("statvfs {}: {e}", self.path.display())))?;
        Ok(Some(super::VolumeSpace { available: stats.available_space(), total: stats.total_space() }))
    }
}
