//! The system invariants, checked from the log alone (tests and `causeway verify` use this).
//!
//! A node checks what its own log can tell ([`Scope`]): the embedded node and a query node (which
//! holds a replica of every node's events) check everything; a role pod of a distributed
//! deployment checks its part (a saga pod: its sagas ended; an inventory pod: stock conserved;
//! every pod: each of its aggregates can be rebuilt).
//!
//! - Every saga has ended (completed, compensated or failed) — [`Report::unfinished`]; a saga
//!   parked for an operator is listed apart ([`Report::quarantined`]).
//! - Stock is conserved per SKU: added = available + reserved + shipped.
//! - A compensated order holds no stock (reserved or committed) and no captured money.
//! - A completed order is confirmed, with one captured payment and one created shipment, and its
//!   stock committed (shipped).

use std::collections::{BTreeMap, BTreeSet};

use aggregates::inventory::{Inventory, InventoryEvent};
use aggregates::order::{Order, OrderStatus};
use aggregates::payment::{Payment, PaymentStatus};
use aggregates::saga::{Compensation, Saga, SagaStatus};
use aggregates::shipping::{Shipment, ShipmentStatus};
use aggregates::DomainEvent;
use aggregates::{Money, OrderId};
use event_store::{EventStore, Storage, StreamId};

use crate::app::aggregate::load;
use crate::app::error::HandlerError;
use crate::app::handlers::load_inventory;
use crate::app::messages;

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Sagas by final status.
    pub completed: usize,
    pub compensated: usize,
    pub failed: usize,
    /// Sagas that have not ended (and are not parked).
    pub unfinished: Vec<OrderId>,
    /// Sagas parked for an operator (a step ran out of attempts): not ended either.
    pub quarantined: Vec<OrderId>,
    /// Compensated sagas with a compensation an operator marked done by hand: those parts are
    /// not checked against the services' streams.
    pub by_hand: Vec<OrderId>,
    /// SKUs checked.
    pub skus: usize,
    /// Every broken invariant.
    pub problems: Vec<String>,
}

impl Report {
    /// No broken invariant (unfinished sagas are reported separately).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a node's log can answer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every invariant: the log holds every service's events (embedded, query).
    Everything,
    /// The sagas (a saga pod): every saga ended.
    Sagas,
    /// The stock (an inventory pod): conserved per SKU.
    Stock,
    /// The aggregates of one category can be rebuilt (order, payment, shipping pods).
    Aggregates(&'static str),
}

/// Checks every invariant over the whole log.
pub fn check<S: Storage>(store: &EventStore<S>) -> Result<Report, HandlerError> {
    check_scope(store, Scope::Everything)
}

/// Checks what `scope` covers.
pub fn check_scope<S: Storage>(store: &EventStore<S>, scope: Scope) -> Result<Report, HandlerError> {
    let mut report = Report::default();
    let mut inventories: BTreeMap<String, Inventory> = BTreeMap::new();
    // (inventory stream, order) → units committed and not returned.
    let mut committed: BTreeMap<(String, OrderId), u64> = BTreeMap::new();
    let mut saga_streams = BTreeSet::new();
    let mut inventory_streams = BTreeSet::new();
    // The log is read and decoded ahead by worker threads while this one checks.
    let mut aggregate_streams = BTreeSet::new();
    for e in store.read_all_parallel(1, event_store::ReadAhead::default())? {
        let e = e?;
        match (e.category(), scope) {
            ("saga", Scope::Everything | Scope::Sagas) => {
                saga_streams.insert(e.stream_id);
            }
            ("inventory", Scope::Everything | Scope::Stock) => {
                inventory_streams.insert(e.stream_id);
            }
            (c, Scope::Aggregates(category)) if c == category => {
                aggregate_streams.insert(e.stream_id);
            }
            _ => {}
        }
    }
    // Every aggregate of the category folds (an undecodable event is an error).
    for s in aggregate_streams {
        let stream = StreamId::new(s)?;
        match scope {
            Scope::Aggregates("order") => {
                load::<S, Order>(store, &stream)?;
            }
            Scope::Aggregates("payment") => {
                load::<S, Payment>(store, &stream)?;
            }
            _ => {
                load::<S, Shipment>(store, &stream)?;
            }
        }
    }
    for s in inventory_streams {
        let stream = StreamId::new(s.clone())?;
        let (inv, _) = load_inventory(store, &stream)?;
        if !inv.is_conserved() {
            report.problems.push(format!(
                "{s}: stock not conserved: added {} != available {} + reserved {} + shipped {}",
                inv.added,
                inv.available,
                inv.reserved_total(),
                inv.shipped
            ));
        }
        // Which orders' stock stays committed, from the events (the aggregate's state remembers
        // only the newest orders).
        for e in store.read_stream(&stream, 1, event_store::Direction::Forward) {
            let e = e?;
            let event =
                InventoryEvent::decode(&e.event_type, e.schema_version, &e.payload).map_err(|error| {
                    crate::app::error::LoadError::Undecodable { stream: s.clone(), version: e.version, error }
                })?;
            match event {
                InventoryEvent::StockCommitted(c) => {
                    committed.insert((s.clone(), c.order_id), c.quantity);
                }
                InventoryEvent::StockReturned(r) => {
                    committed.remove(&(s.clone(), r.order_id));
                }
                _ => {}
            }
        }
        inventories.insert(s, inv);
    }
    report.skus = inventories.len();
    for s in saga_streams {
        let stream = StreamId::new(s.clone())?;
        let (saga, _) = load::<S, Saga>(store, &stream)?;
        let Some(order_id) = saga.order_id else { continue };
        if scope == Scope::Sagas {
            // The other services' streams live on other nodes.
            match saga.status {
                SagaStatus::Completed => report.completed += 1,
                SagaStatus::Compensated => report.compensated += 1,
                SagaStatus::Failed => report.failed += 1,
                _ if saga.quarantined.is_some() => report.quarantined.push(order_id),
                _ => report.unfinished.push(order_id),
            }
            continue;
        }
        let (order, _) = load::<S, Order>(store, &messages::order_stream(order_id))?;
        let (payment, _) = load::<S, Payment>(store, &messages::payment_stream(order_id))?;
        let (shipment, _) = load::<S, Shipment>(store, &messages::shipment_stream(order_id))?;
        let holds_stock = inventories.values().any(|i| i.reserved.contains_key(&order_id));
        match saga.status {
            SagaStatus::Completed => {
                report.completed += 1;
                if order.status != OrderStatus::Confirmed {
                    report
                        .problems
                        .push(format!("order {order_id}: saga completed but order is {:?}", order.status));
                }
                if payment.status != PaymentStatus::Captured || payment.captured != order.total {
                    report.problems.push(format!(
                        "order {order_id}: completed without one captured payment of {} (payment {:?}, {})",
                        order.total, payment.status, payment.captured
                    ));
                }
                if shipment.status != ShipmentStatus::Created {
                    report
                        .problems
                        .push(format!("order {order_id}: completed but shipment is {:?}", shipment.status));
                }
                if holds_stock {
                    report.problems.push(format!("order {order_id}: completed but stock is still reserved"));
                }
                for line in &saga.lines {
                    let units =
                        committed.get(&(format!("inventory-{}", line.sku), order_id)).copied().unwrap_or(0);
                    if units == 0 {
                        report
                            .problems
                            .push(format!("order {order_id}: completed but {} was not shipped", line.sku));
                    }
                }
            }
            SagaStatus::Compensated => {
                report.compensated += 1;
                // What an operator marked done by hand was done outside the system: the services'
                // streams do not show it, so it is not checked against them.
                let by_hand = |c: Compensation| saga.by_hand.contains(&c);
                if !saga.by_hand.is_empty() {
                    report.by_hand.push(order_id);
                }
                if order.status != OrderStatus::Cancelled && !by_hand(Compensation::CancelOrder) {
                    report
                        .problems
                        .push(format!("order {order_id}: compensated but order is {:?}", order.status));
                }
                if holds_stock && !by_hand(Compensation::ReleaseStock) {
                    report.problems.push(format!("order {order_id}: compensated but still holds stock"));
                }
                for sku in inventories.keys() {
                    if committed.contains_key(&(sku.clone(), order_id))
                        && !by_hand(Compensation::ReleaseStock)
                    {
                        report.problems.push(format!(
                            "order {order_id}: compensated but its stock of {sku} stays committed"
                        ));
                    }
                }
                let money_held =
                    payment.captured != Money::ZERO || payment.status == PaymentStatus::Authorized;
                if money_held && !by_hand(Compensation::RefundPayment) {
                    report.problems.push(format!(
                        "order {order_id}: compensated but money is held ({:?})",
                        payment.status
                    ));
                }
                if shipment.status == ShipmentStatus::Created && !by_hand(Compensation::CancelShipment) {
                    report.problems.push(format!("order {order_id}: compensated but the shipment is active"));
                }
            }
            SagaStatus::Failed => report.failed += 1,
            SagaStatus::Running | SagaStatus::Compensating if saga.quarantined.is_some() => {
                report.quarantined.push(order_id)
            }
            SagaStatus::NotStarted | SagaStatus::Running | SagaStatus::Compensating => {
                report.unfinished.push(order_id)
            }
        }
    }
    Ok(report)
}
