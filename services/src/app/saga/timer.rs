//! The saga manager's deadline timer: due deadlines fire (a step is sent again, or the saga gives
//! up and compensates), held while the commands cannot leave the node and while the manager's
//! own inputs are behind, and bounded by a retry budget so retries never multiply the work of an
//! overloaded node. The timer also saves the low-water mark recovery starts from.

use std::sync::Arc;
use std::time::Duration;

use aggregates::saga::{Saga, SagaInput};
use aggregates::OrderId;
use event_store::{RecordedEvent, Storage};
use tokio::sync::watch;

use super::{now_ns, SagaRunner, LOW_WATER};

/// A node's retry budget (as in Finagle's): every saga started earns [`RETRY_TOKENS_PER_SAGA`]
/// retries, at least [`MIN_RETRIES_PER_SEC`] accrue each second whatever the traffic, and at
/// most [`MAX_RETRY_TOKENS`] are saved up. A deadline that fires spends one; with none left, due
/// deadlines wait for the next tick, so retries stay a bounded share of the work instead of
/// multiplying it when everything is slow.
#[derive(Debug)]
pub(super) struct RetryBudget {
    pub(super) tokens: f64,
    pub(super) refilled: std::time::Instant,
}

/// Retries earned per saga started (a saga sends about five first commands: a fifth of them).
pub const RETRY_TOKENS_PER_SAGA: f64 = 1.0;
/// Retries allowed per second with no traffic.
pub const MIN_RETRIES_PER_SEC: f64 = 20.0;
/// Most retries saved up.
pub const MAX_RETRY_TOKENS: f64 = 2_000.0;
/// Deadlines are held while the saga manager's inputs reach it later than this: its own backlog,
/// not a lost command, is what keeps replies from arriving.
pub const BACKLOG_HOLD: Duration = Duration::from_secs(1);
/// The longest the backlog holds deadlines at a stretch: past it they fire again (a clock skew
/// between pods, or a lag that never ends, must not hold them for good).
pub const MAX_BACKLOG_HOLD: Duration = Duration::from_secs(30);

impl RetryBudget {
    fn refill(&mut self) {
        let now = std::time::Instant::now();
        let secs = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + secs * MIN_RETRIES_PER_SEC).min(MAX_RETRY_TOKENS);
        self.refilled = now;
    }
    pub(super) fn earn(&mut self, n: f64) {
        self.refill();
        self.tokens = (self.tokens + n).min(MAX_RETRY_TOKENS);
    }
    fn spend(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<S: Storage> SagaRunner<S> {
    /// Holds deadlines while `relay` cannot get events to Kafka (a distributed node's commands
    /// travel through it): a broker outage delays sagas instead of timing them out.
    pub fn hold_deadlines_while_stalled(
        &self,
        delivery: std::sync::Arc<dyn crate::app::gateway::DeliveryHealth>,
    ) {
        let _ = self.transport.set(delivery);
    }

    /// Whether the inputs reach the saga manager late: the newest one was handled within
    /// [`BACKLOG_HOLD`] and had waited longer than that (an idle manager is not behind).
    pub fn backlogged(&self) -> bool {
        let (handled, delay) = *self.input_delay.lock().unwrap_or_else(|p| p.into_inner());
        handled.is_some_and(|t| t.elapsed() < BACKLOG_HOLD) && delay > BACKLOG_HOLD
    }

    pub(super) fn saw_input(&self, e: &RecordedEvent) {
        let delay = Duration::from_nanos(now_ns().saturating_sub(e.recorded_at_ns));
        *self.input_delay.lock().unwrap_or_else(|p| p.into_inner()) =
            (Some(std::time::Instant::now()), delay);
        metrics::gauge!("causeway_saga_input_delay_seconds").set(delay.as_secs_f64());
    }

    /// Fires due deadlines. Returns how many sagas were ticked. Deadlines are held while the
    /// commands cannot reach Kafka, and while the manager's own inputs are behind (their replies
    /// may be waiting in that backlog); each one that fires spends one of the retry budget.
    pub async fn tick(&self) -> usize {
        if self.transport.get().is_some_and(|t| t.stalled(Duration::from_secs(1))) {
            tracing::debug!("commands cannot reach Kafka; saga deadlines are held");
            return 0;
        }
        {
            let mut held = self.held_since.lock().unwrap_or_else(|p| p.into_inner());
            if self.backlogged() {
                let since = *held.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < MAX_BACKLOG_HOLD {
                    metrics::counter!("causeway_saga_deadlines_held_total", "why" => "backlog").increment(1);
                    return 0;
                }
            } else {
                *held = None;
            }
        }
        let now = now_ns();
        let mut due: Vec<OrderId> = {
            let deadlines = self.deadlines.lock().unwrap_or_else(|p| p.into_inner());
            deadlines.iter().take_while(|(d, _)| *d <= now).map(|(_, o)| *o).collect()
        };
        {
            let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            let allowed = due.iter().take_while(|_| budget.spend()).count();
            if allowed < due.len() {
                metrics::counter!("causeway_saga_deadlines_held_total", "why" => "retry_budget")
                    .increment((due.len() - allowed) as u64);
                due.truncate(allowed);
            }
        }
        for order in &due {
            let policy = self.policy;
            let jitter = rand::random::<f64>();
            let cause = uuid::Uuid::now_v7();
            let tick = |_: &Saga| Some(SagaInput::Tick { now_ns: now, jitter, policy });
            if let Err(e) = self.apply(*order, tick, cause, None).await {
                tracing::warn!(%order, error = %e, "saga deadline handling failed; will retry");
            }
        }
        due.len()
    }

    /// Runs the deadline timer and saves the low-water mark until `shutdown`.
    pub async fn run_timer(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        let mut saved_low = None;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                _ = ticker.tick() => {
                    self.tick().await;
                    n += 1;
                    if n % 20 == 0 {
                        let low = self.low_water();
                        if saved_low != Some(low) && self.store.save_checkpoint(LOW_WATER, low).await.is_ok() {
                            saved_low = Some(low);
                        }
                    }
                    metrics::gauge!("causeway_sagas_in_flight").set(self.in_flight() as f64);
                }
            }
        }
        let _ = self.store.save_checkpoint(LOW_WATER, self.low_water()).await;
    }
}
