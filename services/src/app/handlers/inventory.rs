//! The inventory service: stock reserved, committed and released per SKU, all or nothing across
//! an order's lines; inventory states cached between commands and snapshotted every
//! [`SNAPSHOT_EVERY`] events (by the generic [`StateCache`] and [`Snapshots`]).

use std::collections::BTreeMap;

use aggregates::inventory::{Inventory, InventoryCommand, InventoryEvent};
use aggregates::saga::{Outcome, SagaCommand, SagaLine};
use aggregates::{Decider, Sku};
use event_store::{EventStore, ExpectedVersion, Storage, StreamId};

use super::{Decision, Handlers, Step};
use crate::app::aggregate::{Snapshots, StateCache};
use crate::app::error::{HandlerError, LoadError};
use crate::app::gateway::PaymentGateway;
use crate::app::messages;

/// Snapshot an inventory stream every this many events.
pub const SNAPSHOT_EVERY: u64 = 100;
/// 3: the id of the event at the snapshot's version, then bincode of the bounded state (2 was
/// the same without the id, 1 JSON of the unbounded state: neither is read any more, and such a
/// snapshot is replaced by the next one).
const INVENTORY_SNAPSHOT_SCHEMA: u32 = 3;
/// Inventory states kept between commands, at most this many SKUs.
const INVENTORY_CACHE_SKUS: usize = 10_000;

/// How inventory streams are snapshotted.
pub(super) fn snapshots() -> Snapshots<Inventory> {
    Snapshots::bincode(SNAPSHOT_EVERY, INVENTORY_SNAPSHOT_SCHEMA)
}

/// The inventory handler's states between commands (and their snapshots).
pub(super) fn cache() -> StateCache<Inventory> {
    StateCache::new(INVENTORY_CACHE_SKUS).with_snapshots(snapshots())
}

/// Loads an inventory, starting from its snapshot when there is a usable one (see
/// [`Snapshots`]: one that cannot be read is logged and counted, and the stream is folded from
/// its start).
pub fn load_inventory<S: Storage>(
    store: &EventStore<S>,
    stream: &StreamId,
) -> Result<(Inventory, u64), LoadError> {
    snapshots().load(store, stream).map(|(state, version, _)| (state, version))
}

impl<S: Storage, G: PaymentGateway> Handlers<S, G> {
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
            let (state, version) = self.inventory.load(&self.store, &stream)?;
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
                    self.inventory.keep(&stream, state, version);
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
                self.inventory.keep(&stream, state, version);
                continue;
            }
            let new_state = keep.iter().fold(state, |s, e| s.evolve(e));
            d.append(stream.clone(), ExpectedVersion::Exact(version), step.events(&keep, &stream));
            d.after.push((stream, version, new_state));
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
    use crate::app::aggregate::{unusable_snapshots, Start};
    use event_store::{MemoryStorage, Snapshot, StoreConfig};
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
        snapshots().save(&store, &stream, &marked, version);
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 999);
        assert_eq!(snapshots().load(&store, &stream).expect("load").2, Start::Snapshot);
        // An undecodable one (bound to the right event) is refused, counted, and the stream is
        // folded from its start.
        let fifth = store.read_stream(&stream, 5, event_store::Direction::Forward).next();
        let fifth = fifth.expect("event 5").expect("read").event_id;
        let before = unusable_snapshots();
        save(INVENTORY_SNAPSHOT_SCHEMA, [fifth.as_bytes().as_slice(), &[0xff; 7]].concat());
        assert_eq!(load_inventory(&store, &stream).expect("load"), (state.clone(), version));
        assert_eq!(snapshots().load(&store, &stream).expect("load").2, Start::Refused);
        assert!(unusable_snapshots() >= before + 2, "counted");
        // So is one of a newer schema; one of an older schema is skipped, not refused.
        save(INVENTORY_SNAPSHOT_SCHEMA + 1, vec![]);
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(snapshots().load(&store, &stream).expect("load").2, Start::Refused);
        save(2, bincode::serialize(&marked).expect("encode"));
        assert_eq!(load_inventory(&store, &stream).expect("load").0.available, 10);
        assert_eq!(snapshots().load(&store, &stream).expect("load").2, Start::Events);
    }
}
