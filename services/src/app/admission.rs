//! Admission control at intake: a bound on sagas in flight (placed here, not yet ended) that
//! adapts to how long sagas take, so a node past its capacity refuses new orders quickly (429 with
//! `Retry-After`) instead of accepting work it can only finish late.
//!
//! The limit is AIMD on saga latency (place → `SagaCompleted`/`SagaCompensated`/`SagaFailed`, or
//! `SagaQuarantined`,
//! as the node's log shows it), judged in half-second windows: a window in which no saga was late
//! while the limit was at least half used grows it by √limit / 2; a window in which more than a
//! tenth of the sagas took longer than the target shrinks it by a fifth, at most once per target
//! interval (one backlog is not counted again while it drains). So do an oldest admitted order
//! share of admitted orders older than twice the target (sagas stopped ending) and orders never seen ending (forgotten
//! after `expire`). The target is the configured one, or four times the fastest saga of the last
//! 60 windows that were not at the limit when that is more, so a deployment whose sagas are slow
//! by nature (across Kafka) is not held at its minimum, while sagas slowed by queueing under
//! overload cannot raise it. By Little's law the queue then holds about target × throughput sagas.
//! ARCHITECTURE.md ("Overload") says why this and not a fixed number or a gradient limit.

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
        if self.max > 1_000_000 {
            return Err("the admission maximum is at most 1000000".into());
        }
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
    /// The latency the limit aims under now: the configured target, or 4 × the fastest recent
    /// sagas when that is more (a deployment whose sagas are slower by nature).
    pub target: Duration,
}

/// How long a window of samples is.
const WINDOW: Duration = Duration::from_millis(500);
/// Windows whose fastest saga sets the latency floor (30 s).
const FLOOR_WINDOWS: usize = 60;
/// A window with more than this share of late sagas shrinks the limit.
const LATE_SHARE: f64 = 0.1;
/// Fewest samples in a window for its late share to count.
const MIN_SAMPLES: u32 = 5;

#[derive(Debug)]
struct State {
    admitted: HashMap<OrderId, Instant>,
    limit: f64,
    last_decrease: Option<Instant>,
    rejected: u64,
    window_started: Instant,
    samples: u32,
    late: u32,
    fastest: Option<Duration>,
    peak: usize,
    /// Orders refused in this window: a window at the limit says how slow sagas get when
    /// queued, not how fast they can be, so it does not move the floor.
    refused: u32,
    floors: std::collections::VecDeque<Duration>,
}

/// The limiter. Cheap to clone (clones share it).
#[derive(Debug, Clone)]
pub struct Admission {
    config: AdmissionConfig,
    state: Arc<Mutex<State>>,
}

/// A place taken for one order's saga. [`Ticket::give_back`] returns it when the command
/// certainly recorded nothing (it was refused, or its append failed). Dropped otherwise (the
/// saga starts, or the request was cancelled or timed out, when the order may have been recorded
/// anyway), the place stays taken until the saga is seen ending or the place expires.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    order: OrderId,
}

impl Ticket {
    /// No saga runs for the order: its place is free again.
    pub fn give_back(self) {
        self.admission.withdraw(self.order);
    }
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
            window_started: Instant::now(),
            samples: 0,
            late: 0,
            fastest: None,
            peak: 0,
            refused: 0,
            floors: std::collections::VecDeque::new(),
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

    /// The configured target, or 4 × the floor when that is more. The floor is the fastest saga
    /// of the last 60 windows that were not at the limit (before the first such window: of the
    /// current one), so sustained overload, whose sagas are slow because they queue, cannot
    /// raise it.
    fn target(&self, st: &State) -> Duration {
        let floor = match st.floors.iter().min() {
            Some(f) => *f,
            None if st.refused == 0 => st.fastest.unwrap_or_default(),
            None => Duration::ZERO,
        };
        self.config.target.max(floor * 4)
    }

    /// Takes a place for `order`'s saga, or refuses. `Ok(None)`: the order holds a place
    /// already (a retry of the same request), nothing more is taken, and nothing is given back
    /// if this request fails.
    pub fn admit(&self, order: OrderId) -> Result<Option<Ticket>, Overloaded> {
        let mut st = self.lock();
        if st.admitted.contains_key(&order) {
            return Ok(None);
        }
        let limit = st.limit as usize;
        if st.admitted.len() >= limit {
            st.rejected += 1;
            st.refused = st.refused.saturating_add(1);
            metrics::counter!("causeway_admission_rejected_total").increment(1);
            return Err(Overloaded { limit, retry_after_secs: self.retry_after_secs() });
        }
        st.admitted.insert(order, Instant::now());
        st.peak = st.peak.max(st.admitted.len());
        Ok(Some(Ticket { admission: self.clone(), order }))
    }

    /// Gives back `order`'s place without a latency sample (no saga runs for it).
    pub fn withdraw(&self, order: OrderId) {
        self.lock().admitted.remove(&order);
    }

    /// Seconds a refused client waits before trying again: the configured target, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        self.config.target.as_secs_f64().ceil().max(1.0) as u64
    }

    /// `order`'s saga ended now: its place is free and its latency is a sample for the limit.
    pub fn ended(&self, order: OrderId) {
        self.ended_at(order, Instant::now());
    }

    fn ended_at(&self, order: OrderId, now: Instant) {
        let mut st = self.lock();
        let Some(admitted) = st.admitted.remove(&order) else { return };
        let latency = now.saturating_duration_since(admitted);
        metrics::histogram!("causeway_admission_saga_seconds").record(latency.as_secs_f64());
        // A window that has run its time closes before this sample, which opens the next.
        if now.saturating_duration_since(st.window_started) >= WINDOW {
            self.close_window(&mut st, now);
        }
        let target = self.target(&st);
        st.samples += 1;
        if latency > target {
            st.late += 1;
        }
        st.fastest = Some(st.fastest.map_or(latency, |f| f.min(latency)));
    }

    /// Ends the current window of samples: a window with more than a tenth of its sagas late
    /// shrinks the limit by a fifth (at most once per target); one with none late, while the
    /// limit was half used or more, grows it by √limit / 2.
    fn close_window(&self, st: &mut State, now: Instant) {
        if st.samples >= MIN_SAMPLES && f64::from(st.late) > LATE_SHARE * f64::from(st.samples) {
            self.decrease(st, now);
        } else if st.samples > 0 && st.late == 0 && st.peak * 2 >= st.limit as usize {
            st.limit = (st.limit + st.limit.sqrt() / 2.0).min(self.config.max as f64);
        }
        if let (Some(f), 0) = (st.fastest.take(), st.refused) {
            st.floors.push_back(f);
            if st.floors.len() > FLOOR_WINDOWS {
                st.floors.pop_front();
            }
        }
        st.refused = 0;
        st.samples = 0;
        st.late = 0;
        st.peak = st.admitted.len();
        st.window_started = now;
    }

    fn decrease(&self, st: &mut State, now: Instant) {
        let target = self.target(st);
        let cooled = st.last_decrease.is_none_or(|t| now.saturating_duration_since(t) >= target);
        if cooled {
            st.limit = (st.limit * 0.8).max(self.config.min as f64);
            st.last_decrease = Some(now);
        }
    }

    /// Closes a window that has run its time, shrinks the limit when more than a tenth of the
    /// admitted orders (at least five) have waited more than twice the target (sagas stopped
    /// ending: no sample would say so), and
    /// forgets admitted orders not seen ending within `expire` (each counts as late). Returns
    /// how many were forgotten.
    pub fn expire(&self) -> usize {
        self.expire_at(Instant::now())
    }

    fn expire_at(&self, now: Instant) -> usize {
        let mut st = self.lock();
        if now.saturating_duration_since(st.window_started) >= WINDOW {
            self.close_window(&mut st, now);
        }
        let (before, expire, stuck_after) = (st.admitted.len(), self.config.expire, self.target(&st) * 2);
        // One pass: forget the expired, count the stuck.
        let mut stuck = 0;
        st.admitted.retain(|_, t| {
            let age = now.saturating_duration_since(*t);
            stuck += usize::from(age > stuck_after && age < expire);
            age < expire
        });
        let expired = before - st.admitted.len();
        if expired > 0 {
            metrics::counter!("causeway_admission_expired_total").increment(expired as u64);
        }
        let stalled = stuck >= MIN_SAMPLES as usize && stuck as f64 > LATE_SHARE * st.admitted.len() as f64;
        if expired > 0 || stalled {
            self.decrease(&mut st, now);
        }
        expired
    }

    /// The limiter now.
    pub fn load(&self) -> AdmissionLoad {
        let st = self.lock();
        AdmissionLoad {
            in_flight: st.admitted.len(),
            limit: st.limit as usize,
            rejected: st.rejected,
            target: self.target(&st),
        }
    }

    /// Sees one event of the log: a saga's end frees its order's place, and so does its
    /// quarantine (a parked saga waits for an operator, not for this node's capacity).
    pub fn observe(&self, e: &RecordedEvent) {
        if matches!(
            e.event_type.as_str(),
            "SagaCompleted" | "SagaCompensated" | "SagaFailed" | "SagaQuarantined"
        ) {
            if let Some(order) = e.stream_id.strip_prefix("saga-").and_then(|s| s.parse().ok()) {
                self.ended(OrderId(order));
            }
        }
    }

    /// Follows the saga events of `store` (the node's own log, or a query node's replica) from
    /// `after` until shutdown, and expires forgotten orders. Pass the head read before the node
    /// takes requests, so no saga's end is missed.
    pub async fn run<S: Storage>(
        self,
        store: EventStore<S>,
        after: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), event_store::Error> {
        let mut sub = store.subscribe_category("saga", after);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
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
                    metrics::gauge!("causeway_admission_target_seconds").set(load.target.as_secs_f64());
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

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            initial: 100,
            min: 10,
            max: 1000,
            target: Duration::from_millis(100),
            expire: Duration::from_secs(60),
        }
    }

    #[test]
    fn past_the_limit_orders_are_refused_and_a_retry_of_an_admitted_one_takes_nothing() {
        let a = Admission::new(AdmissionConfig::fixed(2));
        let (x, y) = (order(), order());
        drop(a.admit(x).expect("first").expect("a place"));
        let second = a.admit(y).expect("second").expect("a place");
        let retry = a.admit(x).expect("a retry of an admitted order is let through");
        assert!(retry.is_none(), "and takes no second place");
        let refused = a.admit(order()).expect_err("third");
        assert_eq!(refused.limit, 2);
        assert!(refused.retry_after_secs >= 1);
        assert_eq!(a.load().in_flight, 2);
        assert_eq!(a.load().rejected, 1);
        // A ticket given back (nothing was recorded) frees its place.
        second.give_back();
        assert_eq!(a.load().in_flight, 1);
        // One dropped (the saga starts, or the request was abandoned) keeps it.
        drop(a.admit(order()).expect("a place is free again").expect("a place"));
        assert_eq!(a.load().in_flight, 2, "a dropped ticket holds its place");
    }

    #[test]
    fn a_saga_that_ends_or_is_quarantined_frees_its_place_and_other_saga_events_do_not() {
        let a = Admission::new(AdmissionConfig::fixed(10));
        let event = |order: OrderId, event_type: &str| RecordedEvent {
            position: 1,
            stream_id: format!("saga-{order}"),
            version: 1,
            event_id: uuid::Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            recorded_at_ns: 0,
            correlation_id: order.0,
            causation_id: order.0,
            metadata: Default::default(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
        };
        let orders: Vec<OrderId> = (0..5).map(|_| order()).collect();
        for o in &orders {
            drop(a.admit(*o).expect("admitted").expect("a place"));
        }
        a.observe(&event(orders[0], "StepRequested"));
        a.observe(&event(orders[0], "OperatorActed"));
        assert_eq!(a.load().in_flight, 5);
        for (o, end) in
            orders.iter().zip(["SagaCompleted", "SagaCompensated", "SagaFailed", "SagaQuarantined"])
        {
            a.observe(&event(*o, end));
        }
        assert_eq!(a.load().in_flight, 1, "four ended or parked, one still running");
    }

    /// Admits `n` orders at `at` and ends them `took` later; returns the end time.
    fn run_window(a: &Admission, n: usize, at: Instant, took: Duration) -> Instant {
        let orders: Vec<OrderId> = (0..n).map(|_| order()).collect();
        {
            let mut st = a.lock();
            for o in &orders {
                st.admitted.insert(*o, at);
            }
            st.peak = st.peak.max(st.admitted.len());
        }
        let end = at + took;
        for o in &orders {
            a.ended_at(*o, end);
        }
        a.expire_at(end + WINDOW);
        end + WINDOW
    }

    #[test]
    fn a_window_with_many_late_sagas_shrinks_the_limit_and_one_tail_sample_does_not() {
        let a = Admission::new(config());
        let t0 = Instant::now();
        // Fast sagas first: the floor is 10 ms, so the target stays at 100 ms.
        let t = run_window(&a, 60, t0, Duration::from_millis(10));
        let grown = a.load().limit;
        assert!(grown > 100, "in use and fast: grows ({grown})");
        // One late saga among many: a tail, not a backlog.
        let orders: Vec<OrderId> = (0..60).map(|_| order()).collect();
        {
            let mut st = a.lock();
            for o in &orders {
                st.admitted.insert(*o, t);
            }
        }
        a.ended_at(orders[0], t + Duration::from_millis(300));
        for o in &orders[1..] {
            a.ended_at(*o, t + Duration::from_millis(20));
        }
        a.expire_at(t + Duration::from_millis(300) + WINDOW);
        assert!(a.load().limit >= grown, "one late saga does not shrink it: {:?}", a.load());
        // Most of a window late: shrinks by a fifth, once.
        let before = a.load().limit;
        run_window(&a, 60, t + Duration::from_secs(2), Duration::from_millis(150));
        assert_eq!(a.load().limit, (before as f64 * 0.8) as usize);
    }

    #[test]
    fn the_target_follows_sagas_that_are_slow_by_nature() {
        let a = Admission::new(config());
        // Every saga takes 300 ms, three times the configured target: the floor makes the target
        // 1.2 s, so they are not late and the limit is not cut to its minimum.
        let mut t = Instant::now();
        for _ in 0..10 {
            t = run_window(&a, 60, t, Duration::from_millis(300));
        }
        assert_eq!(a.load().target, Duration::from_millis(1200));
        assert!(a.load().limit >= 100, "{:?}", a.load());
    }

    #[test]
    fn sagas_slowed_by_overload_do_not_raise_the_target() {
        let a = Admission::new(AdmissionConfig::fixed(50));
        let mut t = Instant::now();
        // Unloaded: sagas take 100 ms, so the floor is 100 ms and the target 1 s (the setting).
        for _ in 0..3 {
            t = run_window(&a, 20, t, Duration::from_millis(100));
        }
        assert_eq!(a.load().target, Duration::from_secs(1));
        // Overloaded for a long while: refusals every window, sagas take 600 ms.
        for _ in 0..(FLOOR_WINDOWS + 10) {
            {
                let mut st = a.lock();
                let fill: Vec<OrderId> =
                    (0..50usize.saturating_sub(st.admitted.len())).map(|_| order()).collect();
                for o in fill {
                    st.admitted.insert(o, t);
                }
            }
            let orders: Vec<OrderId> = a.lock().admitted.keys().copied().collect();
            for o in orders {
                a.ended_at(o, t + Duration::from_millis(600));
            }
            a.lock().admitted.extend((0..50).map(|_| (order(), t)));
            assert!(a.admit(order()).is_err(), "at the limit");
            a.lock().admitted.clear();
            t += WINDOW + Duration::from_millis(600);
            a.expire_at(t);
        }
        assert_eq!(a.load().target, Duration::from_secs(1), "the floor stayed at the unloaded sagas' 100 ms");
    }

    #[test]
    fn an_idle_node_does_not_grow_its_limit() {
        let a = Admission::new(config());
        let mut t = Instant::now();
        for _ in 0..10 {
            t = run_window(&a, 3, t, Duration::from_millis(5));
        }
        assert_eq!(a.load().limit, 100);
    }

    #[test]
    fn stuck_and_forgotten_orders_shrink_the_limit_and_one_slow_saga_does_not() {
        let a = Admission::new(AdmissionConfig { expire: Duration::from_secs(5), ..config() });
        let t = Instant::now();
        // One slow saga among many fresh ones: a tail, not a stall.
        a.lock().admitted.insert(order(), t);
        let later = t + Duration::from_millis(240);
        a.lock().admitted.extend((0..30).map(|_| (order(), later)));
        assert_eq!(a.expire_at(t + Duration::from_millis(250)), 0);
        assert_eq!(a.load().limit, 100);
        // Many waiting more than twice the target: sagas stopped ending.
        a.lock().admitted.extend((0..10).map(|_| (order(), t)));
        assert_eq!(a.expire_at(t + Duration::from_millis(260)), 0);
        assert_eq!(a.load().limit, 80);
        // Forgotten after `expire`.
        assert_eq!(a.expire_at(t + Duration::from_secs(6)), 41);
        assert_eq!(a.load().in_flight, 0);
        assert_eq!(a.load().limit, 64);
    }

    #[test]
    fn settings_out_of_order_are_refused() {
        assert!(AdmissionConfig::default().validate().is_ok());
        assert!(AdmissionConfig { min: 0, ..AdmissionConfig::default() }.validate().is_err());
        assert!(AdmissionConfig { initial: 10, min: 20, ..AdmissionConfig::default() }.validate().is_err());
        assert!(AdmissionConfig { target: Duration::ZERO, ..AdmissionConfig::default() }.validate().is_err());
    }
}
