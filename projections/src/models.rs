//! The read models.

use aggregates::codec::DomainEvent;
use aggregates::inventory::InventoryEvent;
use aggregates::order::{CancelReason, LineItem, OrderEvent, OrderStatus};
use aggregates::saga::SagaEvent;
use aggregates::{Money, OrderId};
use event_store::{RecordedEvent, Storage};
use serde::{Deserialize, Serialize};

use crate::runner::Projection;
use crate::store::Tx;
use crate::{ProjectionError, Result};

fn decode<E: DomainEvent>(e: &RecordedEvent) -> Result<E> {
    E::decode(&e.event_type, e.schema_version, &e.payload)
        .map_err(|err| ProjectionError::Event { position: e.position, reason: err.to_string() })
}

/// One entry of a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineEntry {
    /// Event type.
    pub event: String,
    /// Global position.
    pub position: u64,
    /// Recorded at (UTC ns).
    pub at_ns: u64,
    /// A short detail (step, reason, tracking number...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The event's id (saga timelines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<uuid::Uuid>,
    /// The id of the event that caused it: the reply, the order event, the operator's request
    /// (saga timelines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<uuid::Uuid>,
}

fn entry(e: &RecordedEvent, detail: Option<String>) -> TimelineEntry {
    TimelineEntry {
        event: e.event_type.clone(),
        position: e.position,
        at_ns: e.recorded_at_ns,
        detail,
        event_id: None,
        causation_id: None,
    }
}

/// `order-summaries`: one document per order (`order/<id>`), plus a per-customer index
/// (`customer/<customer>/<placed at ns>/<order id>`) for order history by customer.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderSummaries;

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderSummary {
    pub order_id: OrderId,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub currency: String,
    pub placed_at_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
    pub timeline: Vec<TimelineEntry>,
}

/// An entry of a customer's order history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerOrder {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub total: Money,
    pub placed_at_ns: u64,
}

impl OrderSummaries {
    /// The name of this read model.
    pub const NAME: &'static str = "order-summaries";

    /// The document key of an order.
    pub fn order_key(id: OrderId) -> String {
        format!("order/{id}")
    }

    /// The key prefix of a customer's history. The customer id is escaped (`%` and `/` as
    /// `%25` and `%2F`), so one customer's prefix never covers another's (`bob` and `bob/x`).
    pub fn customer_prefix(customer: &str) -> String {
        format!("customer/{}/", escape_key_part(customer))
    }

    fn customer_key(s: &OrderSummary) -> String {
        format!("{}{:020}/{}", Self::customer_prefix(&s.customer_id), s.placed_at_ns, s.order_id)
    }

    fn save<S: Storage>(tx: &mut Tx<'_, S>, s: OrderSummary) -> Result<()> {
        tx.put(
            &Self::customer_key(&s),
            CustomerOrder {
                order_id: s.order_id,
                status: s.status,
                total: s.total,
                placed_at_ns: s.placed_at_ns,
            },
        )?;
        tx.put(&Self::order_key(s.order_id), s)
    }
}

fn order_of_stream(stream: &str) -> Option<OrderId> {
    stream.split_once('-').and_then(|(_, id)| id.parse().ok()).map(OrderId)
}

/// A key part with `%` and `/` escaped, so it cannot reach into the next part of a key.
fn escape_key_part(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

impl Projection for OrderSummaries {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// 2: customer ids are escaped in the history keys.
    fn version(&self) -> u32 {
        2
    }

    fn categories(&self) -> &[&str] {
        &["order", "payment", "shipment"]
    }

    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, e: &RecordedEvent) -> Result<()> {
        match e.category() {
            "order" => match decode::<OrderEvent>(e)? {
                OrderEvent::OrderPlaced(p) => {
                    let s = OrderSummary {
                        order_id: p.order_id,
                        customer_id: p.customer_id.0,
                        status: OrderStatus::Pending,
                        items: p.items,
                        total: p.total,
                        currency: p.currency.0,
                        placed_at_ns: e.recorded_at_ns,
                        tracking_number: None,
                        cancel_reason: None,
                        timeline: vec![entry(e, None)],
                    };
                    Self::save(tx, s)
                }
                OrderEvent::OrderConfirmed(c) => {
                    let Some(mut s) = tx.take::<OrderSummary>(&Self::order_key(c.order_id))? else {
                        return Ok(());
                    };
                    s.status = OrderStatus::Confirmed;
                    s.tracking_number = Some(c.tracking_number.clone());
                    s.timeline.push(entry(e, Some(c.tracking_number)));
                    Self::save(tx, s)
                }
                OrderEvent::OrderCancelled(c) => {
                    let Some(mut s) = tx.take::<OrderSummary>(&Self::order_key(c.order_id))? else {
                        return Ok(());
                    };
                    s.status = OrderStatus::Cancelled;
                    s.timeline.push(entry(e, Some(format!("{:?}", c.reason))));
                    s.cancel_reason = Some(c.reason);
                    Self::save(tx, s)
                }
            },
            // Payment and shipment milestones go on the order's timeline.
            "payment" | "shipment" => {
                let Some(id) = order_of_stream(&e.stream_id) else { return Ok(()) };
                let Some(mut s) = tx.take::<OrderSummary>(&Self::order_key(id))? else { return Ok(()) };
                s.timeline.push(entry(e, None));
                // The customer's view (status, total) does not change: only the order document.
                tx.put(&Self::order_key(id), s)
            }
            _ => Ok(()),
        }
    }
}

/// `stock-levels`: one document per SKU (`sku/<sku>`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StockLevels;

/// A SKU's stock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLevel {
    pub sku: String,
    pub available: u64,
    pub reserved: u64,
    pub shipped: u64,
    pub added: u64,
}

impl StockLevels {
    /// The name of this read model.
    pub const NAME: &'static str = "stock-levels";

    /// The document key of a SKU.
    pub fn key(sku: &str) -> String {
        format!("sku/{sku}")
    }
}

impl Projection for StockLevels {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn categories(&self) -> &[&str] {
        &["inventory"]
    }

    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, e: &RecordedEvent) -> Result<()> {
        if e.category() != "inventory" {
            return Ok(());
        }
        let event = decode::<InventoryEvent>(e)?;
        let sku = match &event {
            InventoryEvent::StockAdded(x) => &x.sku,
            InventoryEvent::StockReserved(x) => &x.sku,
            InventoryEvent::StockReservationRejected(x) => &x.sku,
            InventoryEvent::StockReleased(x) => &x.sku,
            InventoryEvent::StockCommitted(x) => &x.sku,
            InventoryEvent::StockReturned(x) => &x.sku,
        };
        let key = Self::key(&sku.0);
        let mut s = tx
            .get::<StockLevel>(&key)?
            .unwrap_or_else(|| StockLevel { sku: sku.0.clone(), ..StockLevel::default() });
        match &event {
            InventoryEvent::StockAdded(x) => {
                s.available += x.quantity;
                s.added += x.quantity;
            }
            InventoryEvent::StockReserved(x) => {
                s.available = s.available.saturating_sub(x.quantity);
                s.reserved += x.quantity;
            }
            InventoryEvent::StockReleased(x) => {
                s.reserved = s.reserved.saturating_sub(x.quantity);
                s.available += x.quantity;
            }
            InventoryEvent::StockCommitted(x) => {
                s.reserved = s.reserved.saturating_sub(x.quantity);
                s.shipped += x.quantity;
            }
            InventoryEvent::StockReturned(x) => {
                s.shipped = s.shipped.saturating_sub(x.quantity);
                s.available += x.quantity;
            }
            InventoryEvent::StockReservationRejected(_) => return Ok(()),
        }
        tx.put(&key, s)
    }
}

/// `saga-timelines`: one document per saga (`saga/<order id>`) with its timeline; the saga's
/// folded state (`state/<order id>`, the decider's own, so the state shown is the one the saga
/// manager decides on); a list newest first (`list/<inverted start ns>/<order id>`), the same per
/// state (`by-state/<state>/<inverted start ns>/<order id>`), and a count per state
/// (`count/<state>`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SagaTimelines;

/// A saga's progress as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaTimeline {
    pub order_id: OrderId,
    /// running, retrying, compensating, quarantined, failed, completed or compensated.
    pub status: String,
    /// When it started (UTC ns).
    #[serde(default)]
    pub started_at_ns: u64,
    /// When it last moved (UTC ns).
    #[serde(default)]
    pub updated_at_ns: u64,
    /// The step or compensation in flight and its attempt (`TakePayment attempt 2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Why it is quarantined, compensating or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The saga stream's version.
    #[serde(default)]
    pub version: u64,
    /// The version of the saga's definition that started it.
    #[serde(default = "first_definition")]
    pub definition: u32,
    pub steps: Vec<TimelineEntry>,
}

fn first_definition() -> u32 {
    1
}

/// A saga in the lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaListEntry {
    pub order_id: OrderId,
    /// As [`SagaTimeline::status`].
    pub status: String,
    pub started_at_ns: u64,
    pub updated_at_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// As [`SagaTimeline::definition`].
    #[serde(default = "first_definition")]
    pub definition: u32,
}

impl SagaTimeline {
    /// Its entry in the lists.
    pub fn list_entry(&self) -> SagaListEntry {
        SagaListEntry {
            order_id: self.order_id,
            status: self.status.clone(),
            started_at_ns: self.started_at_ns,
            updated_at_ns: self.updated_at_ns,
            current: self.current.clone(),
            reason: self.reason.clone(),
            definition: self.definition,
        }
    }
}

impl SagaTimelines {
    /// The name of this read model.
    pub const NAME: &'static str = "saga-timelines";

    /// The document key of a saga.
    pub fn key(id: OrderId) -> String {
        format!("saga/{id}")
    }

    /// The key of a saga's folded state.
    pub fn state_key(id: OrderId) -> String {
        format!("state/{id}")
    }

    /// The prefix of the list of every saga, newest first.
    pub const LIST: &'static str = "list/";

    /// The prefix of the list of the sagas in one state, newest first.
    pub fn by_state_prefix(state: aggregates::saga::SagaState) -> String {
        format!("by-state/{}/", state.name())
    }

    /// The key of the count of sagas in a state.
    pub fn count_key(state: aggregates::saga::SagaState) -> String {
        format!("count/{}", state.name())
    }

    /// The prefix of the counts of sagas not ended (neither completed nor compensated) per
    /// definition: `open-definition/<version>`.
    pub const OPEN_BY_DEFINITION: &'static str = "open-definition/";

    /// The key of the count of sagas not ended under `definition`.
    pub fn open_definition_key(definition: u32) -> String {
        format!("{}{definition:010}", Self::OPEN_BY_DEFINITION)
    }

    /// The part of a list key that orders by start time, newest first: a saga that started at
    /// or before `ns` sorts at or after it.
    pub fn inverted(ns: u64) -> String {
        format!("{:020}", u64::MAX - ns)
    }
}

/// ` <sku>` for a per-SKU step, nothing for a whole one.
fn of_sku(sku: &Option<aggregates::Sku>) -> String {
    sku.as_ref().map(|s| format!(" {s}")).unwrap_or_default()
}

/// The step or compensation in flight, with its newest attempt.
fn in_flight(saga: &aggregates::saga::Saga) -> Option<String> {
    let attempt = |parts: &[aggregates::saga::Part]| parts.iter().map(|p| p.attempt).max().unwrap_or(1);
    if let Some(s) = &saga.step {
        return Some(format!("{:?} attempt {}", s.what, attempt(&s.parts)));
    }
    saga.compensation.as_ref().map(|c| format!("{:?} attempt {}", c.what, attempt(&c.parts)))
}

impl Projection for SagaTimelines {
    fn name(&self) -> &str {
        Self::NAME
    }

    /// 2: the saga's folded state, its operator state (quarantine, retrying), the lists and counts.
    /// 3: the definition of each saga, and the sagas not ended per definition.
    fn version(&self) -> u32 {
        3
    }

    fn categories(&self) -> &[&str] {
        &["saga"]
    }

    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, e: &RecordedEvent) -> Result<()> {
        use aggregates::saga::{Saga, SagaState};
        use aggregates::Decider;
        if e.category() != "saga" {
            return Ok(());
        }
        let Some(id) = order_of_stream(&e.stream_id) else { return Ok(()) };
        let key = Self::key(id);
        let event = decode::<SagaEvent>(e)?;
        let saga: Saga = tx.take::<Saga>(&Self::state_key(id))?.unwrap_or_default();
        let before = (saga.status != aggregates::saga::SagaStatus::NotStarted).then(|| saga.state());
        let mut t = tx.take::<SagaTimeline>(&key)?.unwrap_or_else(|| SagaTimeline {
            order_id: id,
            status: SagaState::Running.name().into(),
            started_at_ns: e.recorded_at_ns,
            updated_at_ns: e.recorded_at_ns,
            current: None,
            reason: None,
            version: 0,
            definition: 1,
            steps: Vec::new(),
        });
        let detail = match &event {
            SagaEvent::StepRequested(r) => {
                Some(format!("{:?}{} attempt {}", r.step, of_sku(&r.sku), r.attempt))
            }
            SagaEvent::StepSucceeded(r) => Some(format!(
                "{:?}{}{}",
                r.step,
                of_sku(&r.sku),
                r.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
            )),
            SagaEvent::StepFailed(r) => Some(r.reason.clone()),
            SagaEvent::CompensationRequested(r) => {
                Some(format!("{:?}{} attempt {}", r.compensation, of_sku(&r.sku), r.attempt))
            }
            SagaEvent::CompensationDone(r) => Some(format!("{:?}{}", r.compensation, of_sku(&r.sku))),
            SagaEvent::SagaCompleted(_) | SagaEvent::SagaStarted(_) => None,
            SagaEvent::SagaCompensated(r) => Some(r.reason.clone()),
            SagaEvent::SagaFailed(r) => Some(r.reason.clone()),
            SagaEvent::SagaQuarantined(r) => Some(r.reason.clone()),
            SagaEvent::OperatorActed(a) => Some(format!(
                "{} by {}{}",
                a.action.name(),
                a.operator,
                if a.reason.is_empty() { String::new() } else { format!(": {}", a.reason) }
            )),
        };
        let saga = saga.evolve(&event);
        let state = saga.state();
        t.status = state.name().into();
        t.updated_at_ns = e.recorded_at_ns;
        t.current = if state == SagaState::Completed || state == SagaState::Compensated {
            None
        } else {
            in_flight(&saga)
        };
        t.reason = match state {
            SagaState::Quarantined => saga.quarantined.as_ref().map(|q| q.reason.clone()),
            SagaState::Completed => None,
            _ => saga.failure.clone(),
        };
        t.version = e.version;
        t.definition = saga.definition.max(1);
        let mut step = entry(e, detail);
        step.event_id = Some(e.event_id);
        step.causation_id = Some(e.causation_id);
        t.steps.push(step);
        if state == SagaState::NotStarted {
            // Seen from the middle of its history (this log does not hold its start): the
            // timeline shows what there is, the lists and counts wait for a saga they can place.
            return tx.put(&key, t);
        }
        let listed = t.list_entry();
        let at = Self::inverted(t.started_at_ns);
        if before != Some(state) {
            if let Some(old) = before {
                tx.delete(&format!("{}{at}/{id}", Self::by_state_prefix(old)));
                let n = tx.take::<u64>(&Self::count_key(old))?.unwrap_or(0);
                tx.put(&Self::count_key(old), n.saturating_sub(1))?;
            }
            let n = tx.take::<u64>(&Self::count_key(state))?.unwrap_or(0);
            tx.put(&Self::count_key(state), n.saturating_add(1))?;
            let ended = |s: SagaState| matches!(s, SagaState::Completed | SagaState::Compensated);
            let change: i64 = match before {
                None if !ended(state) => 1,
                Some(old) if !ended(old) && ended(state) => -1,
                Some(old) if ended(old) && !ended(state) => 1,
                _ => 0,
            };
            if change != 0 {
                let key = Self::open_definition_key(t.definition);
                let n = tx.take::<u64>(&key)?.unwrap_or(0);
                let n = if change > 0 { n.saturating_add(1) } else { n.saturating_sub(1) };
                if n == 0 {
                    tx.delete(&key);
                } else {
                    tx.put(&key, n)?;
                }
            }
        }
        tx.put(&format!("{}{at}/{id}", Self::by_state_prefix(state)), listed.clone())?;
        tx.put(&format!("{}{at}/{id}", Self::LIST), listed)?;
        if matches!(state, SagaState::Completed | SagaState::Compensated) {
            // Ended for good: the folded state (its lines and address) is not kept.
            tx.delete(&Self::state_key(id));
        } else {
            tx.put(&Self::state_key(id), saga)?;
        }
        tx.put(&key, t)
    }
}

/// `payment-ledger`: every money movement in time order (`entry/<at ns>/<position>`) and a
/// balance per order (`order/<id>`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PaymentLedger;

/// One money movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub order_id: OrderId,
    /// authorized, declined, captured or refunded.
    pub kind: String,
    pub amount: Money,
    pub position: u64,
    pub at_ns: u64,
}

/// An order's money.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderPayments {
    pub authorized: Money,
    pub captured: Money,
    pub refunded: Money,
    pub declined: bool,
    pub entries: u32,
}

impl PaymentLedger {
    /// The name of this read model.
    pub const NAME: &'static str = "payment-ledger";

    /// The key of an order's balance.
    pub fn order_key(id: OrderId) -> String {
        format!("order/{id}")
    }

    /// The key prefix of the ledger entries.
    pub const ENTRIES: &'static str = "entry/";
}

impl Projection for PaymentLedger {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn categories(&self) -> &[&str] {
        &["payment"]
    }

    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, e: &RecordedEvent) -> Result<()> {
        use aggregates::payment::PaymentEvent;
        let (order_id, kind, amount) = match decode::<PaymentEvent>(e)? {
            PaymentEvent::PaymentAuthorized(p) => (p.order_id, "authorized", p.amount),
            PaymentEvent::PaymentDeclined(p) => (p.order_id, "declined", p.amount),
            PaymentEvent::PaymentCaptured(p) => (p.order_id, "captured", p.amount),
            PaymentEvent::PaymentRefunded(p) => (p.order_id, "refunded", p.amount),
        };
        let key = Self::order_key(order_id);
        let mut o = tx.take::<OrderPayments>(&key)?.unwrap_or_default();
        let add = |m: Money| Money(m.0.saturating_add(amount.0));
        match kind {
            "authorized" => o.authorized = add(o.authorized),
            "captured" => o.captured = add(o.captured),
            "refunded" => o.refunded = add(o.refunded),
            _ => o.declined = true,
        }
        o.entries += 1;
        tx.put(&key, o)?;
        let entry = LedgerEntry {
            order_id,
            kind: kind.into(),
            amount,
            position: e.position,
            at_ns: e.recorded_at_ns,
        };
        tx.put(&format!("{}{:020}/{:020}", Self::ENTRIES, e.recorded_at_ns, e.position), entry)
    }
}

/// `dead-letters`: every dead letter by consumer (`letter/<consumer>/<original event id>`), with
/// whether it was re-driven.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeadLetters;

/// A dead letter as the API shows it (the fields of the `DeadLettered` event, plus `resolved`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterView {
    pub consumer: String,
    pub reason: String,
    pub position: u64,
    pub stream_id: String,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub payload: String,
    #[serde(default)]
    pub resolved: bool,
}

impl DeadLetters {
    /// The name of this read model.
    pub const NAME: &'static str = "dead-letters";

    /// The key prefix of a consumer's letters (all consumers: `letter/`).
    pub fn prefix(consumer: Option<&str>) -> String {
        match consumer {
            Some(c) => format!("letter/{c}/"),
            None => "letter/".into(),
        }
    }
}

impl Projection for DeadLetters {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn categories(&self) -> &[&str] {
        &["deadletters"]
    }

    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, e: &RecordedEvent) -> Result<()> {
        let consumer = e.stream_id.split_once('-').map_or("", |(_, c)| c).to_owned();
        let bad =
            |err: serde_json::Error| ProjectionError::Event { position: e.position, reason: err.to_string() };
        match e.event_type.as_str() {
            "DeadLettered" => {
                let mut v: DeadLetterView = serde_json::from_slice(&e.payload).map_err(bad)?;
                v.resolved = false;
                let key = format!("letter/{consumer}/{}", v.event_id);
                tx.put(&key, v)
            }
            "DeadLetterResolved" => {
                #[derive(Deserialize)]
                struct Resolved {
                    event_id: uuid::Uuid,
                }
                let r: Resolved = serde_json::from_slice(&e.payload).map_err(bad)?;
                let key = format!("letter/{consumer}/{}", r.event_id);
                if let Some(mut v) = tx.take::<DeadLetterView>(&key)? {
                    v.resolved = true;
                    tx.put(&key, v)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The read models a node keeps: the one list of them. The node runs each, `/metrics` reports
/// each one's lag, `replay` and `verify` take each by name; a sixth read model is a projection
/// type above plus a variant here (and an arm of [`with_read_model!`](crate::with_read_model)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadModel {
    /// [`OrderSummaries`].
    OrderSummaries,
    /// [`StockLevels`].
    StockLevels,
    /// [`PaymentLedger`].
    PaymentLedger,
    /// [`SagaTimelines`].
    SagaTimelines,
    /// [`DeadLetters`].
    DeadLetters,
}

impl ReadModel {
    /// Every read model, in the order the node starts them.
    pub const ALL: [ReadModel; 5] = [
        ReadModel::OrderSummaries,
        ReadModel::StockLevels,
        ReadModel::PaymentLedger,
        ReadModel::SagaTimelines,
        ReadModel::DeadLetters,
    ];

    /// Its name (the projection's [`Projection::name`]).
    pub fn name(self) -> &'static str {
        match self {
            ReadModel::OrderSummaries => OrderSummaries::NAME,
            ReadModel::StockLevels => StockLevels::NAME,
            ReadModel::PaymentLedger => PaymentLedger::NAME,
            ReadModel::SagaTimelines => SagaTimelines::NAME,
            ReadModel::DeadLetters => DeadLetters::NAME,
        }
    }

    /// The read model of a name.
    pub fn from_name(name: &str) -> Option<ReadModel> {
        ReadModel::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The names of all, comma-separated (for messages).
    pub fn names() -> String {
        ReadModel::ALL.map(ReadModel::name).join(", ")
    }
}

impl std::fmt::Display for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Evaluates `$body` with `$p` bound to the projection of the [`ReadModel`] `$model`: the one
/// place a read model's name becomes its type, for code generic over [`Projection`]s.
///
/// ```
/// use projections::models::ReadModel;
/// use projections::{with_read_model, Projection};
/// let names: Vec<String> =
///     ReadModel::ALL.iter().map(|m| with_read_model!(*m, |p| p.name().to_owned())).collect();
/// assert_eq!(names[0], "order-summaries");
/// ```
#[macro_export]
macro_rules! with_read_model {
    ($model:expr, |$p:ident| $body:expr) => {
        match $model {
            $crate::models::ReadModel::OrderSummaries => {
                let $p = $crate::models::OrderSummaries;
                $body
            }
            $crate::models::ReadModel::StockLevels => {
                let $p = $crate::models::StockLevels;
                $body
            }
            $crate::models::ReadModel::PaymentLedger => {
                let $p = $crate::models::PaymentLedger;
                $body
            }
            $crate::models::ReadModel::SagaTimelines => {
                let $p = $crate::models::SagaTimelines;
                $body
            }
            $crate::models::ReadModel::DeadLetters => {
                let $p = $crate::models::DeadLetters;
                $body
            }
        }
    };
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn every_read_model_is_named_by_its_projection_and_found_by_its_name() {
        for m in ReadModel::ALL {
            assert_eq!(crate::with_read_model!(m, |p| p.name().to_owned()), m.name());
            assert_eq!(ReadModel::from_name(m.name()), Some(m));
        }
        assert_eq!(ReadModel::from_name("all"), None);
        let names: std::collections::BTreeSet<_> = ReadModel::ALL.map(ReadModel::name).into_iter().collect();
        assert_eq!(names.len(), ReadModel::ALL.len(), "every read model has its own name");
    }
}
