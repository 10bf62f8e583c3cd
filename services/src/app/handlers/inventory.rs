//! The inventory service: stock reserved, committed and released per SKU, all or nothing across
//! an order's lines; inventory states cached between commands and snapshotted every
//! [`SNAPSHOT_EVERY`] events.

use std::collections::BTreeMap;

use aggregates::inventory::{Inventory, InventoryCommand, InventoryEvent};
use aggregates::saga::{Outcome, SagaCommand, SagaLine};
use aggregates::{Decider, Sku};
use event_store::{EventStore, ExpectedVersion, Snapshot, Storage, StreamId};

use super::{Decision, Handlers, Step};
use crate::app::aggregate::{load, load_from};
use crate::app::error::{HandlerError, LoadError};
use crate::app::gateway::PaymentGateway;
use crate::app::messages;

/// Snapshot an inventory stream every this many events.
pub const SNAPSHOT_EVERY: u64 = 100;
/// 2: bincode of the bounded state (1, JSON of the unbounded state, is no longer read: such a
/// snapshot is replaced by the next one).
const INVENTORY_SNAPSHOT_SCHEMA: u32 = 2;

static UNUSABLE_SNAPSHOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Snapshots found unusable by this process (also the metric `causeway_snapshots_unusable_total`).
pub fn unusable_snapshots() -> u64 {
    UNUSABLE_SNAPSHOTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Loads an inventory, starting from its snapshot when there is a usable one. A snapshot that
/// cannot be read is logged and counted (`causeway_snapshots_unusable_total`), and the stream is
/// folded from its start; the next snapshot replaces it.
pub fn load_inventory<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
) -> Result<(Inventory, u64), LoadError> {
    load_inventory_noting(store, stream).map(|(state, version, _)| (state, version))
}

/// [`load_inventory`], and whether a snapshot was used.
fn load_inventory_noting<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
) -> Result<(Inventory, u64, bool), LoadError> {
    let unusable = |reason: String| {
        UNUSABLE_SNAPSHOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("causeway_snapshots_unusable_total").increment(1);
        tracing::warn!(%stream, %reason, "an inventory snapshot cannot be used; folding the stream from its start");
    };
    match store.load_snapshot(stream) {
        Ok(None) => {}
        Ok(Some(snap)) if snap.schema_version == INVENTORY_SNAPSHOT_SCHEMA => {
            match bincode::deserialize::<Inventory>(&snap.payload) {
                Ok(state) => return load_from(store, stream, state, snap.version).map(|(s, v)| (s, v, true)),
                Err(e) => unusable(format!("undecodable: {e}")),
            }
        }
        // Written by an older build: replaced at the next snapshot, not an error.
        Ok(Some(snap)) if snap.schema_version < INVENTORY_SNAPSHOT_SCHEMA => {
            tracing::debug!(%stream, schema = snap.schema_version, "an older inventory snapshot is not read");
        }
        Ok(Some(snap)) => unusable(format!("schema {} from a newer build", snap.schema_version)),
        Err(e) => unusable(e.to_string()),
    }
    load(store, stream).map(|(s, v)| (s, v, false))
}

pub(super) fn maybe_snapshot<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
    state: &Inventory,
    version: u64,
) {
    if version / SNAPSHOT_EVERY == (version.saturating_sub(1)) / SNAPSHOT_EVERY || version == 0 {
        return;
    }
    save_snapshot(store, stream, state, version);
}

fn save_snapshot<S: Storage>(store: &EventStore<S>, stream: &StreamId, state: &Inventory, version: u64) {
    let payload = match bincode::serialize(state) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%stream, error = %e, "encoding a snapshot failed");
            return;
        }
    };
    let snap = Snapshot { version, schema_version: INVENTORY_SNAPSHOT_SCHEMA, payload };
    if let Err(e) = store.save_snapshot(stream, &snap) {
        metrics::counter!("causeway_snapshots_failed_total").increment(1);
        tracing::warn!(%stream, error = %e, "saving a snapshot failed");
    }
}

/// Inventory states kept between commands, at most this many SKUs.
const INVENTORY_CACHE_SKUS: usize = 10_000;

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
    /// Loads an inventory: from the cache when the stream has not moved since, else from its
    /// snapshot and events.
    pub(super) fn inventory(&self, stream: &StreamId) -> Result<(Inventory, u64), LoadError> {
        // Taken out, not cloned: the state goes back once the command's outcome is appended (a
        // concurrent command on the same SKU, which the consumers avoid, would load it anew).
        let cached = self.inventory_cache.lock().unwrap_or_else(|p| p.into_inner()).remove(stream.as_str());
        if let Some((state, version)) = cached {
            if self.store.stream_version(stream)? == version {
                return Ok((state, version));
            }
            // Moved on (another writer): fold just the new events.
            return load_from(&self.store, stream, state, version);
        }
        let (state, version, from_snapshot) = load_inventory_noting(&self.store, stream)?;
        if !from_snapshot && version >= SNAPSHOT_EVERY {
            // A long stream folded whole (no snapshot, or one that could not be used): snapshot it
            // now rather than at its next hundredth event.
            save_snapshot(&self.store, stream, &state, version);
        }
        Ok((state, version))
    }

    pub(super) fn remember_inventory(&self, stream: &StreamId, state: Inventory, version: u64) {
        let mut cache = self.inventory_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= INVENTORY_CACHE_SKUS && !cache.contains_key(stream.as_str()) {
            cache.clear();
        }
        cache.insert(stream.as_str().to_owned(), (state, version));
    }

    /// Reserves, commits or releases the stock of an order's lines, one inventory stream per SKU.
    pub(super) fn stock(
        &self,
        step: &Step,
        command: &SagaCommand,
        lines: &[SagaLine],
        d: &mut Decision,
    ) -> Result<Outcome, HandlerError> {
        let order_id = step.order_id;
        let mut rejected = Vec::new();
        let mut outputs = Vec::new();
        let merged = merge_lines(lines);
        // A per-SKU command has one line; one with several (even of one SKU) was keyed by
        // its order, not its SKU, so it may have reached a pod that does not own the SKU.
        if self.sharded_inventory && lines.len() > 1 {
            rejected.push(format!(
                "a stock command with {} lines reached one of several inventory pods, which owns some SKUs \
                 only (a saga recorded before stock went per SKU: drain such sagas before sharding inventory)",
                lines.len()
            ));
        }
        for (sku, quantity) in if rejected.is_empty() { merged } else { BTreeMap::new() } {
            let stream = messages::inventory_stream(&sku).map_err(HandlerError::from)?;
            let (state, version) = self.inventory(&stream)?;
            let cmd = match command {
                SagaCommand::ReserveStock { .. } => {
                    InventoryCommand::Reserve { sku: sku.clone(), order_id, quantity }
                }
                SagaCommand::CommitStock { .. } => InventoryCommand::Commit { sku: sku.clone(), order_id },
                _ => InventoryCommand::Release { sku: sku.clone(), order_id },
            };
            match state.decide(cmd) {
                Err(err) => {
                    rejected.push(format!("{sku}: {err}"));
                    self.remember_inventory(&stream, state, version);
                }
                Ok(events) => {
                    for ev in &events {
                        if let InventoryEvent::StockReservationRejected(r) = ev {
                            rejected
                                .push(format!("{sku}: requested {}, available {}", r.requested, r.available));
                        }
                    }
                    outputs.push((stream, state, version, events));
                }
            }
        }
        // All or nothing: when any line is refused, record only the rejections.
        for (stream, state, version, events) in outputs {
            let keep: Vec<_> = if rejected.is_empty() {
                events
            } else {
                events
                    .into_iter()
                    .filter(|e| matches!(e, InventoryEvent::StockReservationRejected(_)))
                    .collect()
            };
            if keep.is_empty() {
                self.remember_inventory(&stream, state, version);
                continue;
            }
            let new_version = version + keep.len() as u64;
            let new_state = keep.iter().fold(state, |s, e| s.evolve(e));
            d.append(stream.clone(), ExpectedVersion::Exact(version), step.events(&keep, &stream));
            d.after.push((stream, new_state, new_version));
        }
        Ok(if rejected.is_empty() {
            Outcome::Succeeded
        } else {
            Outcome::Rejected { reason: rejected.join("; ") }
        })
    }
}

/// Sums quantities per SKU (an order may list a SKU twice), in SKU order.
fn merge_lines(lines: &[SagaLine]) -> BTreeMap<Sku, u64> {
    let mut merged = BTreeMap::new();
    for l in lines {
        *merged.entry(l.sku.clone()).or_insert(0u64) += l.quantity;
    }
    merged
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use event_store::{MemoryStorage, StoreConfig};
    use uuid::Uuid;

    #[tokio::test]
    async fn an_unreadable_inventory_snapshot_is_counted_and_the_stream_folded_from_its_start() {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        let sku = aggregates::Sku::from("SKU-1");
        for _ in 0..5 {
            crate::app::commands::add_stock(&store, Uuid::now_v7(), sku.clone(), 2, None)
                .await
                .expect("stock");
        }
        let stream = messages::inventory_stream(&sku).expect("stream");
        let (state, version) = load_inventory(&store, &stream).expect("load");
        assert_eq!((state.available, version), (10, 5));
        let save = |schema_version: u32, payload: Vec<u8>| {
            store.save_snapshot(&stream, &Snapshot { version, schema_version, payload }).expect("save")
        };
        // A usable snapshot is what the load starts from (this one says 999, the events 10).
        let mut marked = state.clone();
        marked.available = 999;
        save(INVENTORY_SNAPSHOT_SCHEMA, bincode::serialize(&marked).expect("encode"));
        let before = unusable_snapshots();
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 999);
        assert_eq!(unusable_snapshots(), before);
        // An undecodable one is counted, and the stream is folded from its start.
        save(INVENTORY_SNAPSHOT_SCHEMA, vec![0xff; 7]);
        assert_eq!(load_inventory(&store, &stream).expect("load"), (state.clone(), version));
        assert_eq!(unusable_snapshots(), before + 1);
        // So is one of a newer schema; one of an older schema is not read, and not counted.
        save(INVENTORY_SNAPSHOT_SCHEMA + 1, vec![]);
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(unusable_snapshots(), before + 2);
        save(1, b"{}".to_vec());
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(unusable_snapshots(), before + 2);
    }
}
