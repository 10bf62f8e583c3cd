//! The application's ports to the outside: the payment gateway (with a simulated gateway and a
//! circuit breaker guarding it) and the health of the node's outgoing delivery. The carrier is
//! `handlers::SimulatedCarrier`, next to the shipping handler that calls it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aggregates::payment::GatewayAnswer;
use aggregates::{Money, OrderId};
use rand::Rng;
use uuid::Uuid;

/// A failure to get an answer (not a decline: a decline is an answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway did not answer properly; try again later.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open: the gateway failed repeatedly, calls are not attempted.
    #[error("payment gateway circuit open")]
    CircuitOpen,
}

/// Whether what the node sends (commands and replies to other roles) is getting out. The saga
/// manager holds its step deadlines while it is not, so a step that could not be sent does not
/// time out and compensate a saga that would have succeeded. The Kafka relay implements it.
pub trait DeliveryHealth: Send + Sync + std::fmt::Debug + 'static {
    /// True when messages have waited to be delivered longer than `for_at_least`.
    fn stalled(&self, for_at_least: Duration) -> bool;
}

/// A payment gateway. `idempotency_key` makes a repeated call return the first answer.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Authorizes `amount` for `order`.
    fn authorize(
        &self,
        idempotency_key: Uuid,
        order: OrderId,
        amount: Money,
    ) -> impl Future<Output = Result<GatewayAnswer, GatewayError>> + Send;
}

/// Behaviour of the simulated gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedGatewayConfig {
    /// Latency of each call.
    pub latency: Duration,
    /// Fraction of calls that fail (transiently) in `[0, 1]`.
    pub failure_rate: f64,
    /// Amounts above this (minor units) are declined.
    pub decline_above: Option<u64>,
    /// Fraction of other calls that are declined, in `[0, 1]`.
    pub decline_rate: f64,
}

impl Default for SimulatedGatewayConfig {
    fn default() -> Self {
        Self { latency: Duration::ZERO, failure_rate: 0.0, decline_above: Some(1_000_000), decline_rate: 0.0 }
    }
}

/// How many idempotency keys the simulated gateway remembers (the newest). Like a real
/// gateway's retention window: a repeated call within it gets the first answer. Older keys are
/// forgotten, so a long-running node does not grow with every payment it ever took; the payment
/// aggregate already records the answer, and the handler never asks twice once it is recorded.
pub const GATEWAY_KEYS_KEPT: usize = 100_000;

/// The answers given, by idempotency key, oldest first.
#[derive(Debug, Default)]
struct Answers {
    by_key: HashMap<Uuid, GatewayAnswer>,
    order: VecDeque<Uuid>,
}

impl Answers {
    fn get(&self, key: &Uuid) -> Option<GatewayAnswer> {
        self.by_key.get(key).cloned()
    }

    fn insert(&mut self, key: Uuid, answer: GatewayAnswer) {
        if self.by_key.insert(key, answer).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > GATEWAY_KEYS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }
}

/// A gateway that answers from rules, with configurable latency and failures.
#[derive(Debug, Default)]
pub struct SimulatedGateway {
    config: Mutex<SimulatedGatewayConfig>,
    answers: Mutex<Answers>,
}

impl SimulatedGateway {
    /// A gateway with `config`.
    pub fn new(config: SimulatedGatewayConfig) -> Self {
        Self { config: Mutex::new(config), answers: Mutex::new(Answers::default()) }
    }

    /// How many idempotency keys it remembers now (at most [`GATEWAY_KEYS_KEPT`]).
    pub fn keys_remembered(&self) -> usize {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).by_key.len()
    }

    /// Changes its behaviour (tests use this to simulate an outage).
    pub fn reconfigure(&self, config: SimulatedGatewayConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

impl PaymentGateway for SimulatedGateway {
    async fn authorize(
        &self,
        key: Uuid,
        order: OrderId,
        amount: Money,
    ) -> Result<GatewayAnswer, GatewayError> {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !config.latency.is_zero() {
            tokio::time::sleep(config.latency).await;
        }
        if let Some(a) = self.answers.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(a);
        }
        let (fail, decline) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_bool(config.failure_rate.clamp(0.0, 1.0)),
                rng.gen_bool(config.decline_rate.clamp(0.0, 1.0)),
            )
        };
        if fail {
            return Err(GatewayError::Unavailable("simulated failure".into()));
        }
        let answer = if config.decline_above.is_some_and(|limit| amount.minor() > limit) {
            GatewayAnswer::Declined { reason: format!("amount {amount} over the card limit") }
        } else if decline {
            GatewayAnswer::Declined { reason: "declined by the issuer".into() }
        } else {
            GatewayAnswer::Approved { authorization: format!("AUTH-{}", &order.0.simple().to_string()[..12]) }
        };
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).insert(key, answer.clone());
        Ok(answer)
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long it stays open before one trial call is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(2) }
    }
}

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed { failures: u32 },
    /// Calls fail fast until the instant.
    Open { until: Instant },
    /// One trial call is in flight.
    HalfOpen,
}

/// A gateway behind a circuit breaker.
#[derive(Debug)]
pub struct Breaker<G> {
    inner: G,
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

impl<G> Breaker<G> {
    /// Guards `inner`.
    pub fn new(inner: G, config: BreakerConfig) -> Self {
        Self { inner, config, state: Mutex::new(BreakerState::Closed { failures: 0 }) }
    }

    /// The guarded gateway.
    pub fn inner(&self) -> &G {
        &self.inner
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self) -> Result<(), GatewayError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *st {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::HalfOpen => Err(GatewayError::CircuitOpen),
            BreakerState::Open { until } if Instant::now() >= until => {
                *st = BreakerState::HalfOpen;
                Ok(())
            }
            BreakerState::Open { .. } => Err(GatewayError::CircuitOpen),
        }
    }

    fn record(&self, ok: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = match (*st, ok) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < self.config.failure_threshold => {
                BreakerState::Closed { failures: failures + 1 }
            }
            (_, false) => {
                metrics::counter!("causeway_payment_circuit_opened_total").increment(1);
                BreakerState::Open { until: Instant::now() + self.config.open_for }
            }
        };
    }
}

impl<G: PaymentGateway> PaymentGateway for Breaker<G> {
    async fn authorize(
        &self,
        key: Uuid,
        order: OrderId,
        amount: Money,
    ) -> Result<GatewayAnswer, GatewayError> {
        self.admit()?;
        let result = self.inner.authorize(key, order, amount).await;
        self.record(result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid() -> OrderId {
        OrderId(Uuid::from_u128(1))
    }

    #[tokio::test]
    async fn simulated_gateway_remembers_only_the_newest_keys() {
        let g = SimulatedGateway::new(SimulatedGatewayConfig::default());
        let n = GATEWAY_KEYS_KEPT as u128 + 10;
        for k in 0..n {
            g.authorize(Uuid::from_u128(k), oid(), Money(1)).await.expect("answer");
        }
        assert_eq!(g.keys_remembered(), GATEWAY_KEYS_KEPT, "bounded, whatever the traffic");
        // The newest keys still get their first answer; the oldest were forgotten.
        g.reconfigure(SimulatedGatewayConfig { decline_rate: 1.0, ..Default::default() });
        assert!(matches!(
            g.authorize(Uuid::from_u128(n - 1), oid(), Money(1)).await,
            Ok(GatewayAnswer::Approved { .. })
        ));
        assert!(matches!(
            g.authorize(Uuid::from_u128(0), oid(), Money(1)).await,
            Ok(GatewayAnswer::Declined { .. })
        ));
        assert_eq!(g.keys_remembered(), GATEWAY_KEYS_KEPT);
    }

    #[tokio::test]
    async fn simulated_gateway_applies_its_rules_and_is_idempotent() {
        let g =
            SimulatedGateway::new(SimulatedGatewayConfig { decline_above: Some(1000), ..Default::default() });
        assert!(matches!(
            g.authorize(Uuid::from_u128(1), oid(), Money(999)).await,
            Ok(GatewayAnswer::Approved { .. })
        ));
        assert!(matches!(
            g.authorize(Uuid::from_u128(2), oid(), Money(1001)).await,
            Ok(GatewayAnswer::Declined { .. })
        ));
        g.reconfigure(SimulatedGatewayConfig { decline_rate: 1.0, ..Default::default() });
        // Same key: the first answer, whatever the rules say now.
        assert!(matches!(
            g.authorize(Uuid::from_u128(1), oid(), Money(999)).await,
            Ok(GatewayAnswer::Approved { .. })
        ));
        assert!(matches!(
            g.authorize(Uuid::from_u128(3), oid(), Money(1)).await,
            Ok(GatewayAnswer::Declined { .. })
        ));
        g.reconfigure(SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() });
        assert!(matches!(
            g.authorize(Uuid::from_u128(4), oid(), Money(1)).await,
            Err(GatewayError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn breaker_opens_after_failures_fails_fast_then_recovers() {
        let failing =
            SimulatedGateway::new(SimulatedGatewayConfig { failure_rate: 1.0, ..Default::default() });
        let b = Breaker::new(
            failing,
            BreakerConfig { failure_threshold: 3, open_for: Duration::from_millis(50) },
        );
        for i in 0..3 {
            assert!(matches!(
                b.authorize(Uuid::from_u128(i), oid(), Money(1)).await,
                Err(GatewayError::Unavailable(_))
            ));
        }
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert_eq!(b.authorize(Uuid::from_u128(9), oid(), Money(1)).await, Err(GatewayError::CircuitOpen));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Half-open trial fails: open again.
        assert!(matches!(
            b.authorize(Uuid::from_u128(10), oid(), Money(1)).await,
            Err(GatewayError::Unavailable(_))
        ));
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        b.inner().reconfigure(SimulatedGatewayConfig::default());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(
            b.authorize(Uuid::from_u128(11), oid(), Money(1)).await,
            Ok(GatewayAnswer::Approved { .. })
        ));
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }
}
