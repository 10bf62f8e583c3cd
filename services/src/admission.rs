//! Admission control at intake: a bound on sagas in flight (placed here, not yet ended) that
//! adapts to how long sagas take, so a node past its capacity refuses new orders quickly (429 with
//! `Retry-After`) instead of accepting work it can only finish late.
//!
//! The limit is AIMD on saga latency (place → `SagaCompleted`/`SagaCompensated`/`SagaFailed`,
//! as the node's log shows it): while sagas end within the target and the limit is in use, it
//! grows by about √limit per limit's worth of ended sagas; when one takes longer than the target,
//! or an admitted order is not seen ending within `expire`, it shrinks by a fifth, at most once
//! per target interval (one signal of a backlog is not counted again while the backlog drains).
//! By Little's law the queue then holds about target × throughput sagas. ARCHITECTURE.md
//! ("Overload") says why this and not a fixed number or a gradient limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregates::OrderId;
use event_store::{EventStore, RecordedEvent, Storage};
use tokio::sync::watch;

/// Settings of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// The limit at start.
    pub initial: usize,
    /// The limit never goes below this.
    pub min: usize,
    /// Nor above this (it bounds the node's memory of admitted orders too).
    pub max: usize,
    /// Saga latency the limit aims under.
    pub target: Duration,
    /// An admitted order not seen ending this long is forgotten, and counts as a late saga.
    pub expire: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            initial: 256,
            min: 16,
            max: 20_000,
            target: Duration::from_secs(1),
            expire: Duration::from_secs(120),
        }
    }
}

impl AdmissionConfig {
    /// A fixed limit (initial = min = max), for tests and for operators who want one.
    pub fn fixed(limit: usize) -> Self {
        Self { initial: limit, min: limit, max: limit, ..Self::default() }
    }

    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 {
            return Err("the admission minimum must be at least 1".into());
        }
        if !(self.min <= self.initial && self.initial <= self.max) {
            return Err(format!(
                "the admission limits must satisfy min ({}) <= initial ({}) <= max ({})",
                self.min, self.initial, self.max
            ));
        }
        if self.target.is_zero() {
            return Err("the admission target latency must be above zero".into());
        }
        if self.expire < self.target {
            return Err("the admission expiry must be at least the target latency".into());
        }
        Ok(())
    }
}

/// A refusal: the node is at its limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the node is at its limit of {limit} sagas in flight; retry after {retry_after_secs} s")]
pub struct Overloaded {
    /// The limit now.
    pub limit: usize,
    /// When to try again.
    pub retry_after_secs: u64,
}

/// A snapshot of the limiter, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionLoad {
    /// Admitted orders whose sagas have not been seen ending.
    pub in_flight: usize,
    /// The limit now.
    pub limit: usize,
    /// Orders refused since start.
    pub rejected: u64,
}

#[derive(Debug)]
struct State {
    admitted: HashMap<OrderId, Instant>,
    limit: f64,
    last_decrease: Option<Instant>,
    rejected: u64,
}

/// The limiter. Cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct Admission {
    config: AdmissionConfig,
    state: Arc<Mutex<State>>,
}

impl Admission {
    /// A limiter with these settings (call [`AdmissionConfig::validate`] first; out-of-order
    /// settings are put in order here).
    pub fn new(config: AdmissionConfig) -> Self {
        let min = config.min.max(1);
        let max = config.max.max(min);
        let config = AdmissionConfig { min, max, initial: config.initial.clamp(min, max), ..config };
        let state = State {
            admitted: HashMap::new(),
            limit: config.initial as f64,
            last_decrease: None,
            rejected: 0,
        };
        Self { config, state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The settings.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Takes a place for `order`'s saga, or refuses. An order already admitted (a retry of the
    /// same request) is let through without a second place.
    pub fn admit(&self, order: OrderId) -> Result<(), Overloaded> {
        let mut st = self.lock();
        if st.admitted.contains_key(&order) {
            return Ok(());
        }
        let limit = st.limit as usize;
        if st.admitted.len() >= limit {
            st.rejected += 1;
            metrics::counter!("causeway_admission_rejected_total").increment(1);
            return Err(Overloaded { limit, retry_after_secs: self.retry_after_secs() });
        }
        st.admitted.insert(order, Instant::now());
        Ok(())
    }

    /// Gives back `order`'s place without a latency sample (its command was refused or failed, so
    /// no saga runs for it).
    pub fn withdraw(&self, order: OrderId) {
        self.lock().admitted.remove(&order);
    }

    /// Seconds a refused client waits before trying again: the target latency, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        self.config.target.as_secs_f64().ceil().max(1.0) as u64
    }

    /// `order`'s saga ended now: its place is free and its latency adjusts the limit.
    pub fn ended(&self, order: OrderId) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(admitted) = st.admitted.remove(&order) else { return };
        let latency = now.saturating_duration_since(admitted);
        metrics::histogram!("causeway_admission_saga_seconds").record(latency.as_secs_f64());
        if latency > self.config.target {
            self.decrease(&mut st, now);
        } else if st.admitted.len() * 2 >= st.limit as usize {
            // Grow only while the limit is in use (an idle node proves nothing about more load).
            let step = st.limit.sqrt().max(1.0) / st.limit.max(1.0);
            st.limit = (st.limit + step).min(self.config.max as f64);
        }
    }

    fn decrease(&self, st: &mut State, now: Instant) {
        let cooled = st.last_decrease.is_none_or(|t| now.saturating_duration_since(t) >= self.config.target);
        if cooled {
            st.limit = (st.limit * 0.8).max(self.config.min as f64);
            st.last_decrease = Some(now);
        }
    }

    /// Forgets admitted orders not seen ending within `expire` (their saga may run on another
    /// node's log, or the command was lost); each counts as a late saga. Returns how many.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut st = self.lock();
        let before = st.admitted.len();
        let expire = self.config.expire;
        st.admitted.retain(|_, t| now.saturating_duration_since(*t) < expire);
        let expired = before - st.admitted.len();
        if expired > 0 {
            metrics::counter!("causeway_admission_expired_total").increment(expired as u64);
            self.decrease(&mut st, now);
        }
        expired
    }

    /// The limiter now.
    pub fn load(&self) -> AdmissionLoad {
        let st = self.lock();
        AdmissionLoad { in_flight: st.admitted.len(), limit: st.limit as usize, rejected: st.rejected }
    }

    /// Sees one event of the log: a saga's end frees its order's place.
    pub fn observe(&self, e: &RecordedEvent) {
        if matches!(e.event_type.as_str(), "SagaCompleted" | "SagaCompensated" | "SagaFailed") {
            if let Some(order) = e.stream_id.strip_prefix("saga-").and_then(|s| s.parse().ok()) {
                self.ended(OrderId(order));
            }
        }
    }

    /// Follows the saga events of `store` (the node's own log, or a query node's replica) from
    /// its head until shutdown, and expires forgotten orders.
    pub async fn run<S: Storage>(
        self,
        store: EventStore<S>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), event_store::Error> {
        let mut sub = store.subscribe_category("saga", store.head());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
                e = sub.next() => match e {
                    None => return Ok(()),
                    Some(e) => self.observe(&e?),
                },
                _ = tick.tick() => {
                    self.expire();
                    let load = self.load();
                    metrics::gauge!("causeway_admission_in_flight").set(load.in_flight as f64);
                    metrics::gauge!("causeway_admission_limit").set(load.limit as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderId {
        OrderId(uuid::Uuid::now_v7())
    }

    #[test]
    fn past_the_limit_orders_are_refused_and_a_retry_of_an_admitted_one_is_not() {
        let a = Admission::new(AdmissionConfig::fixed(2));
        let (x, y) = (order(), order());
        a.admit(x).expect("first");
        a.admit(y).expect("second");
        a.admit(x).expect("a retry of an admitted order takes no second place");
        let refused = a.admit(order()).expect_err("third");
        assert_eq!(refused.limit, 2);
        assert!(refused.retry_after_secs >= 1);
        assert_eq!(a.load(), AdmissionLoad { in_flight: 2, limit: 2, rejected: 1 });
        a.withdraw(x);
        a.admit(order()).expect("a withdrawn place is free again");
    }

    #[test]
    fn slow_sagas_shrink_the_limit_once_per_target_and_fast_ones_grow_it_while_in_use() {
        let config = AdmissionConfig {
            initial: 100,
            min: 10,
            max: 1000,
            target: Duration::from_millis(40),
            expire: Duration::from_secs(60),
        };
        let a = Admission::new(config);
        let orders: Vec<OrderId> = (0..80).map(|_| order()).collect();
        for o in &orders {
            a.admit(*o).expect("admitted");
        }
        std::thread::sleep(Duration::from_millis(50));
        // Two late sagas in one target interval: one decrease.
        a.ended(orders[0]);
        a.ended(orders[1]);
        assert_eq!(a.load().limit, 80);
        // Once the target interval has passed, another late saga shrinks it again.
        std::thread::sleep(Duration::from_millis(45));
        a.ended(orders[2]);
        assert_eq!(a.load().limit, 64);
        // Fast sagas while the limit is in use grow it.
        let g = Admission::new(AdmissionConfig { target: Duration::from_secs(10), ..config });
        let many: Vec<OrderId> = (0..100).map(|_| order()).collect();
        for o in &many {
            g.admit(*o).expect("admitted");
        }
        for o in many.iter().take(40) {
            g.ended(*o);
        }
        assert!(g.load().limit > 100, "in use and fast: grows {:?}", g.load());
        // Idle: no growth.
        let idle = Admission::new(AdmissionConfig { target: Duration::from_secs(10), ..config });
        for _ in 0..40 {
            let o = order();
            idle.admit(o).expect("admitted");
            idle.ended(o);
        }
        assert_eq!(idle.load().limit, 100);
    }

    #[test]
    fn forgotten_orders_expire_and_count_as_late() {
        let a = Admission::new(AdmissionConfig {
            initial: 50,
            min: 10,
            max: 100,
            target: Duration::from_millis(10),
            expire: Duration::from_millis(20),
        });
        a.admit(order()).expect("admitted");
        assert_eq!(a.expire(), 0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.expire(), 1);
        assert_eq!(a.load().in_flight, 0);
        assert_eq!(a.load().limit, 40);
    }

    #[test]
    fn settings_out_of_order_are_refused() {
        assert!(AdmissionConfig::default().validate().is_ok());
        assert!(AdmissionConfig { min: 0, ..AdmissionConfig::default() }.validate().is_err());
        assert!(AdmissionConfig { initial: 10, min: 20, ..AdmissionConfig::default() }.validate().is_err());
        assert!(AdmissionConfig { target: Duration::ZERO, ..AdmissionConfig::default() }.validate().is_err());
    }
}
