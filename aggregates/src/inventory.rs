//! The Inventory aggregate, one per SKU: stock available and reserved per order.
//!
//! Stock is conserved: `added = available + reserved + shipped` holds after every event
//! (checked by [`Inventory::is_conserved`]). A reservation that cannot be met is recorded as
//! `StockReservationRejected`, a business outcome the saga reacts to, not an error.
//!
//! The state stays bounded however many orders a SKU serves: besides its live reservations it
//! remembers the newest [`REMEMBERED_ORDERS`] committed orders and the newest
//! [`REMEMBERED_ORDERS`] released ones, which is what keeps the decider idempotent while an
//! order's saga can still send it commands (a retried reserve or commit, a compensation that
//! returns committed stock, a late reservation after a release). Older ones are forgotten: a
//! command for an order that many commits (or releases) of the same SKU ago is treated as one
//! for an unknown order. ARCHITECTURE.md ("Overload") says why that is safe in practice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::codec::Upcast;
use crate::{domain_events, Decider, OrderId, Sku};

/// Commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Add (restock) units.
    AddStock { sku: Sku, quantity: u64 },
    /// Hold units for an order.
    Reserve { sku: Sku, order_id: OrderId, quantity: u64 },
    /// Give an order's held or committed units back (compensation, before the order is
    /// confirmed).
    Release { sku: Sku, order_id: OrderId },
    /// The order's held units are picked for its shipment.
    Commit { sku: Sku, order_id: OrderId },
}

/// `StockAdded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdded {
    pub sku: Sku,
    pub quantity: u64,
}
impl Upcast for StockAdded {}

/// `StockReserved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: u64,
}
impl Upcast for StockReserved {}

/// `StockReservationRejected`: not enough available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReservationRejected {
    pub sku: Sku,
    pub order_id: OrderId,
    pub requested: u64,
    pub available: u64,
}
impl Upcast for StockReservationRejected {}

/// `StockReleased`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: u64,
}
impl Upcast for StockReleased {}

/// `StockCommitted`: picked for the order's shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: u64,
}
impl Upcast for StockCommitted {}

/// `StockReturned`: committed stock put back on the shelf, because the order's saga compensated
/// before the order was confirmed (its shipment was cancelled, so the goods never left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReturned {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: u64,
}
impl Upcast for StockReturned {}

domain_events! {
    /// Events.
    pub enum InventoryEvent {
    StockAdded(StockAdded),
    StockReserved(StockReserved),
    StockReservationRejected(StockReservationRejected),
    StockReleased(StockReleased),
    StockCommitted(StockCommitted),
    StockReturned(StockReturned),
}
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("quantity must be at least 1")]
    ZeroQuantity,
    #[error("invalid SKU {0:?}")]
    InvalidSku(String),
    #[error("the stock of {0} would overflow")]
    Overflow(Sku),
    #[error("the command is for SKU {command}, this is SKU {stock}")]
    WrongSku { stock: Sku, command: Sku },
    #[error("the stock of {sku} for order {order_id} was released; the order is no longer reserving")]
    Released { sku: Sku, order_id: OrderId },
    #[error("order {order_id} holds no reservation of {sku}")]
    NoReservation { sku: Sku, order_id: OrderId },
    #[error("order {order_id} already reserved {reserved} of {sku}, not {requested}")]
    ReservationMismatch { sku: Sku, order_id: OrderId, reserved: u64, requested: u64 },
}

/// How many committed orders, and how many released orders, one SKU remembers (the newest).
pub const REMEMBERED_ORDERS: usize = 10_000;

/// State of one SKU (serialisable: the inventory handler snapshots it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "InventoryRepr", into = "InventoryRepr")]
pub struct Inventory {
    pub sku: Option<Sku>,
    pub available: u64,
    pub reserved: BTreeMap<OrderId, u64>,
    pub added: u64,
    pub shipped: u64,
    /// The newest committed orders (so a repeated commit is a no-op, and a compensation returns
    /// the stock), at most [`REMEMBERED_ORDERS`].
    pub committed: BTreeMap<OrderId, u64>,
    /// The newest released orders (a late reservation for them is refused), at most
    /// [`REMEMBERED_ORDERS`].
    pub released: BTreeSet<OrderId>,
    /// The order of arrival of `committed` and `released`, oldest first (what is forgotten
    /// first). An id may stay here after it left its set (a returned commit); it is then
    /// skipped when it comes to the front.
    committed_order: VecDeque<OrderId>,
    released_order: VecDeque<OrderId>,
}

/// How [`Inventory`] is stored: the remembered orders in their order of arrival, each once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct InventoryRepr {
    sku: Option<Sku>,
    available: u64,
    reserved: BTreeMap<OrderId, u64>,
    added: u64,
    shipped: u64,
    /// Oldest first.
    committed: Vec<(OrderId, u64)>,
    /// Oldest first.
    released: Vec<OrderId>,
}

impl From<InventoryRepr> for Inventory {
    fn from(r: InventoryRepr) -> Self {
        let (committed, released) = (r.committed, r.released);
        let mut inv = Inventory {
            sku: r.sku,
            available: r.available,
            reserved: r.reserved,
            added: r.added,
            shipped: r.shipped,
            ..Inventory::default()
        };
        for (order, q) in committed {
            inv.remember_committed(order, q);
        }
        for order in released {
            inv.remember_released(order);
        }
        inv
    }
}

impl From<Inventory> for InventoryRepr {
    fn from(mut inv: Inventory) -> Self {
        let committed =
            inv.committed_order.iter().filter_map(|o| inv.committed.remove(o).map(|q| (*o, q))).collect();
        let released = inv.released_order.iter().filter(|o| inv.released.remove(o)).copied().collect();
        InventoryRepr {
            sku: inv.sku,
            available: inv.available,
            reserved: inv.reserved,
            added: inv.added,
            shipped: inv.shipped,
            committed,
            released,
        }
    }
}

impl Inventory {
    fn remember_committed(&mut self, order: OrderId, quantity: u64) {
        if self.committed.insert(order, quantity).is_none() {
            self.committed_order.push_back(order);
        }
        while self.committed.len() > REMEMBERED_ORDERS || self.committed_order.len() > 2 * REMEMBERED_ORDERS {
            let Some(oldest) = self.committed_order.pop_front() else { break };
            self.committed.remove(&oldest);
        }
    }

    fn remember_released(&mut self, order: OrderId) {
        if self.released.insert(order) {
            self.released_order.push_back(order);
        }
        while self.released.len() > REMEMBERED_ORDERS {
            let Some(oldest) = self.released_order.pop_front() else { break };
            self.released.remove(&oldest);
        }
    }

    /// Orders remembered (committed and released): never more than 2 × [`REMEMBERED_ORDERS`].
    pub fn remembered(&self) -> usize {
        self.committed.len() + self.released.len()
    }

    /// Units held for orders.
    pub fn reserved_total(&self) -> u64 {
        self.reserved.values().sum()
    }

    /// `added = available + reserved + shipped`.
    pub fn is_conserved(&self) -> bool {
        self.added == self.available + self.reserved_total() + self.shipped
    }

    fn check_sku(&self, sku: &Sku) -> Result<(), InventoryError> {
        if !sku.is_valid() {
            return Err(InventoryError::InvalidSku(sku.0.clone()));
        }
        match &self.sku {
            Some(mine) if mine != sku => {
                Err(InventoryError::WrongSku { stock: mine.clone(), command: sku.clone() })
            }
            _ => Ok(()),
        }
    }
}

impl Decider for Inventory {
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;

    fn decide(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::AddStock { sku, quantity } => {
                self.check_sku(&sku)?;
                if quantity == 0 {
                    return Err(InventoryError::ZeroQuantity);
                }
                if self.added.checked_add(quantity).is_none() {
                    return Err(InventoryError::Overflow(sku));
                }
                Ok(vec![InventoryEvent::StockAdded(StockAdded { sku, quantity })])
            }
            InventoryCommand::Reserve { sku, order_id, quantity } => {
                self.check_sku(&sku)?;
                if quantity == 0 {
                    return Err(InventoryError::ZeroQuantity);
                }
                if self.released.contains(&order_id) {
                    return Err(InventoryError::Released { sku, order_id });
                }
                if let Some(&reserved) = self.reserved.get(&order_id).or(self.committed.get(&order_id)) {
                    // A repeated reservation is a no-op; a different quantity is a mistake.
                    if reserved == quantity {
                        return Ok(vec![]);
                    }
                    return Err(InventoryError::ReservationMismatch {
                        sku,
                        order_id,
                        reserved,
                        requested: quantity,
                    });
                }
                if quantity > self.available {
                    return Ok(vec![InventoryEvent::StockReservationRejected(StockReservationRejected {
                        sku,
                        order_id,
                        requested: quantity,
                        available: self.available,
                    })]);
                }
                Ok(vec![InventoryEvent::StockReserved(StockReserved { sku, order_id, quantity })])
            }
            InventoryCommand::Release { sku, order_id } => {
                self.check_sku(&sku)?;
                Ok(match self.reserved.get(&order_id) {
                    Some(&quantity) => {
                        vec![InventoryEvent::StockReleased(StockReleased { sku, order_id, quantity })]
                    }
                    // Committed for a shipment that the compensating saga cancelled: back on
                    // the shelf.
                    None if self.committed.contains_key(&order_id) => {
                        let quantity = self.committed.get(&order_id).copied().unwrap_or(0);
                        vec![InventoryEvent::StockReturned(StockReturned { sku, order_id, quantity })]
                    }
                    // Already released or returned: nothing to do.
                    None if self.released.contains(&order_id) => vec![],
                    // Never reserved: a zero release leaves a tombstone, so a reservation that
                    // arrives late (a re-driven or delayed command) is refused.
                    None => vec![InventoryEvent::StockReleased(StockReleased { sku, order_id, quantity: 0 })],
                })
            }
            InventoryCommand::Commit { sku, order_id } => {
                self.check_sku(&sku)?;
                if self.committed.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                match self.reserved.get(&order_id) {
                    Some(&quantity) => {
                        Ok(vec![InventoryEvent::StockCommitted(StockCommitted { sku, order_id, quantity })])
                    }
                    None => Err(InventoryError::NoReservation { sku, order_id }),
                }
            }
        }
    }

    fn evolve(mut self, event: &InventoryEvent) -> Self {
        match event {
            InventoryEvent::StockAdded(e) => {
                self.sku = Some(e.sku.clone());
                self.available += e.quantity;
                self.added += e.quantity;
            }
            InventoryEvent::StockReserved(e) => {
                self.sku = Some(e.sku.clone());
                self.available -= e.quantity.min(self.available);
                self.reserved.insert(e.order_id, e.quantity);
            }
            InventoryEvent::StockReservationRejected(e) => {
                self.sku = Some(e.sku.clone());
            }
            InventoryEvent::StockReleased(e) => {
                self.sku = Some(e.sku.clone());
                if let Some(q) = self.reserved.remove(&e.order_id) {
                    self.available += q;
                }
                self.remember_released(e.order_id);
            }
            InventoryEvent::StockCommitted(e) => {
                if let Some(q) = self.reserved.remove(&e.order_id) {
                    self.shipped += q;
                    self.remember_committed(e.order_id, q);
                }
            }
            InventoryEvent::StockReturned(e) => {
                if let Some(q) = self.committed.remove(&e.order_id) {
                    self.shipped -= q.min(self.shipped);
                    self.available += q;
                }
                self.remember_released(e.order_id);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DomainEvent;
    use crate::testing::given;
    use uuid::Uuid;

    fn sku() -> Sku {
        Sku::from("SKU-1")
    }
    fn order(n: u128) -> OrderId {
        OrderId(Uuid::from_u128(n))
    }
    fn added(q: u64) -> InventoryEvent {
        InventoryEvent::StockAdded(StockAdded { sku: sku(), quantity: q })
    }
    fn reserved(o: u128, q: u64) -> InventoryEvent {
        InventoryEvent::StockReserved(StockReserved { sku: sku(), order_id: order(o), quantity: q })
    }
    fn reserve(o: u128, q: u64) -> InventoryCommand {
        InventoryCommand::Reserve { sku: sku(), order_id: order(o), quantity: q }
    }

    #[test]
    fn add_stock() {
        let s = given::<Inventory>([])
            .when(InventoryCommand::AddStock { sku: sku(), quantity: 10 })
            .then([added(10)]);
        assert_eq!((s.available, s.added), (10, 10));
        given::<Inventory>([])
            .when(InventoryCommand::AddStock { sku: sku(), quantity: 0 })
            .then_error(InventoryError::ZeroQuantity);
        given::<Inventory>([added(u64::MAX)])
            .when(InventoryCommand::AddStock { sku: sku(), quantity: 1 })
            .then_error(InventoryError::Overflow(sku()));
        given::<Inventory>([])
            .when(InventoryCommand::AddStock { sku: Sku::from("bad sku"), quantity: 1 })
            .then_error(InventoryError::InvalidSku("bad sku".into()));
        given::<Inventory>([added(1)])
            .when(InventoryCommand::AddStock { sku: Sku::from("OTHER"), quantity: 1 })
            .then_error(InventoryError::WrongSku { stock: sku(), command: Sku::from("OTHER") });
    }

    #[test]
    fn reserve_what_is_available() {
        let s = given::<Inventory>([added(10)]).when(reserve(1, 4)).then([reserved(1, 4)]);
        assert_eq!((s.available, s.reserved_total()), (6, 4));
        assert!(s.is_conserved());
    }

    #[test]
    fn reserving_more_than_available_is_rejected_as_an_event() {
        let s = given::<Inventory>([added(3)]).when(reserve(1, 4)).then([
            InventoryEvent::StockReservationRejected(StockReservationRejected {
                sku: sku(),
                order_id: order(1),
                requested: 4,
                available: 3,
            }),
        ]);
        assert_eq!(s.available, 3);
        given::<Inventory>([added(3)]).when(reserve(1, 0)).then_error(InventoryError::ZeroQuantity);
    }

    #[test]
    fn repeated_reservation_is_a_no_op_and_a_different_one_is_refused() {
        given::<Inventory>([added(10), reserved(1, 4)]).when(reserve(1, 4)).then([]);
        given::<Inventory>([added(10), reserved(1, 4)]).when(reserve(1, 5)).then_error(
            InventoryError::ReservationMismatch { sku: sku(), order_id: order(1), reserved: 4, requested: 5 },
        );
    }

    #[test]
    fn release_returns_held_units_once() {
        let release = || InventoryCommand::Release { sku: sku(), order_id: order(1) };
        let released =
            InventoryEvent::StockReleased(StockReleased { sku: sku(), order_id: order(1), quantity: 4 });
        let s = given::<Inventory>([added(10), reserved(1, 4)]).when(release()).then([released.clone()]);
        assert_eq!((s.available, s.reserved_total()), (10, 0));
        assert!(s.is_conserved());
        given::<Inventory>([added(10), reserved(1, 4), released.clone()]).when(release()).then([]);
        // Released orders cannot reserve again.
        given::<Inventory>([added(10), reserved(1, 4), released])
            .when(reserve(1, 4))
            .then_error(InventoryError::Released { sku: sku(), order_id: order(1) });
    }

    #[test]
    fn a_release_before_any_reservation_leaves_a_tombstone() {
        let release = || InventoryCommand::Release { sku: sku(), order_id: order(1) };
        let tombstone =
            InventoryEvent::StockReleased(StockReleased { sku: sku(), order_id: order(1), quantity: 0 });
        let s = given::<Inventory>([added(10)]).when(release()).then([tombstone.clone()]);
        assert_eq!(s.available, 10);
        given::<Inventory>([added(10), tombstone.clone()]).when(release()).then([]);
        given::<Inventory>([added(10), tombstone])
            .when(reserve(1, 4))
            .then_error(InventoryError::Released { sku: sku(), order_id: order(1) });
    }

    #[test]
    fn commit_ships_the_reservation() {
        let commit = || InventoryCommand::Commit { sku: sku(), order_id: order(1) };
        let committed =
            InventoryEvent::StockCommitted(StockCommitted { sku: sku(), order_id: order(1), quantity: 4 });
        let s = given::<Inventory>([added(10), reserved(1, 4)]).when(commit()).then([committed.clone()]);
        assert_eq!((s.available, s.reserved_total(), s.shipped), (6, 0, 4));
        assert!(s.is_conserved());
        given::<Inventory>([added(10), reserved(1, 4), committed.clone()]).when(commit()).then([]);
        // A committed order's reservation is not repeated.
        given::<Inventory>([added(10), reserved(1, 4), committed]).when(reserve(1, 4)).then([]);
        given::<Inventory>([added(10)])
            .when(commit())
            .then_error(InventoryError::NoReservation { sku: sku(), order_id: order(1) });
    }

    #[test]
    fn releasing_committed_stock_returns_it_to_the_shelf_once() {
        let release = || InventoryCommand::Release { sku: sku(), order_id: order(1) };
        let committed =
            InventoryEvent::StockCommitted(StockCommitted { sku: sku(), order_id: order(1), quantity: 4 });
        let returned =
            InventoryEvent::StockReturned(StockReturned { sku: sku(), order_id: order(1), quantity: 4 });
        let s = given::<Inventory>([added(10), reserved(1, 4), committed.clone()])
            .when(release())
            .then([returned.clone()]);
        assert_eq!((s.available, s.reserved_total(), s.shipped), (10, 0, 0));
        assert!(s.is_conserved());
        assert!(!s.committed.contains_key(&order(1)));
        let after = [added(10), reserved(1, 4), committed, returned];
        // Once returned: a repeated release does nothing, the order can neither reserve nor commit.
        given::<Inventory>(after.clone()).when(release()).then([]);
        given::<Inventory>(after.clone())
            .when(reserve(1, 4))
            .then_error(InventoryError::Released { sku: sku(), order_id: order(1) });
        given::<Inventory>(after)
            .when(InventoryCommand::Commit { sku: sku(), order_id: order(1) })
            .then_error(InventoryError::NoReservation { sku: sku(), order_id: order(1) });
    }

    #[test]
    fn events_round_trip() {
        let events = [
            added(1),
            reserved(1, 1),
            InventoryEvent::StockReservationRejected(StockReservationRejected {
                sku: sku(),
                order_id: order(2),
                requested: 5,
                available: 0,
            }),
            InventoryEvent::StockReleased(StockReleased { sku: sku(), order_id: order(1), quantity: 1 }),
            InventoryEvent::StockCommitted(StockCommitted { sku: sku(), order_id: order(1), quantity: 1 }),
            InventoryEvent::StockReturned(StockReturned { sku: sku(), order_id: order(1), quantity: 1 }),
        ];
        for e in events {
            assert_eq!(
                InventoryEvent::decode(e.event_type(), e.schema_version(), &e.to_payload()).expect("decode"),
                e
            );
        }
    }
}

#[cfg(test)]
mod bounded {
    use super::*;
    use uuid::Uuid;

    fn sku() -> Sku {
        Sku::from("SKU-1")
    }

    fn fold(state: Inventory, command: InventoryCommand) -> Inventory {
        let events = state.decide(command).expect("decide");
        events.iter().fold(state, |s, e| s.evolve(e))
    }

    #[test]
    fn the_state_stays_bounded_over_many_orders_of_one_sku_and_round_trips() {
        let mut s =
            fold(Inventory::default(), InventoryCommand::AddStock { sku: sku(), quantity: u64::MAX / 2 });
        let orders: Vec<OrderId> =
            (0..(REMEMBERED_ORDERS as u128 * 4)).map(|n| OrderId(Uuid::from_u128(n + 1))).collect();
        for (i, order) in orders.iter().enumerate() {
            s = fold(s, InventoryCommand::Reserve { sku: sku(), order_id: *order, quantity: 1 });
            s = fold(s, InventoryCommand::Commit { sku: sku(), order_id: *order });
            if i % 3 == 0 {
                // A compensation returns it (it moves from committed to released).
                s = fold(s, InventoryCommand::Release { sku: sku(), order_id: *order });
            }
            assert!(s.committed.len() <= REMEMBERED_ORDERS && s.released.len() <= REMEMBERED_ORDERS);
            assert!(s.committed_order.len() <= 2 * REMEMBERED_ORDERS + 1);
        }
        assert!(s.is_conserved());
        assert!(s.reserved.is_empty());
        // The newest are remembered: a repeated commit and a repeated release stay no-ops.
        let last = orders.len() - 1;
        let newest = orders[(0..=last).rev().find(|i| i % 3 != 0).expect("one")];
        assert_eq!(s.decide(InventoryCommand::Commit { sku: sku(), order_id: newest }), Ok(vec![]));
        let returned = orders[(0..=last).rev().find(|i| i % 3 == 0).expect("one")];
        assert!(s.released.contains(&returned));
        assert_eq!(s.decide(InventoryCommand::Release { sku: sku(), order_id: returned }), Ok(vec![]));
        // The oldest are forgotten.
        assert!(!s.committed.contains_key(&orders[1]) && !s.released.contains(&orders[0]));
        // A snapshot round trip keeps what is remembered and the order in which it goes.
        let json = serde_json::to_vec(&s).expect("encode");
        let back: Inventory = serde_json::from_slice(&json).expect("decode");
        assert_eq!(
            (back.committed.clone(), back.released.clone()),
            (s.committed.clone(), s.released.clone())
        );
        assert_eq!((back.available, back.shipped, back.added), (s.available, s.shipped, s.added));
        let next = OrderId(Uuid::from_u128(u128::MAX));
        let a = fold(
            fold(s, InventoryCommand::Reserve { sku: sku(), order_id: next, quantity: 1 }),
            InventoryCommand::Commit { sku: sku(), order_id: next },
        );
        let b = fold(
            fold(back, InventoryCommand::Reserve { sku: sku(), order_id: next, quantity: 1 }),
            InventoryCommand::Commit { sku: sku(), order_id: next },
        );
        assert_eq!(a.committed, b.committed, "both forget the same oldest order");
    }
}
