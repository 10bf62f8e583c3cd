//! The embedded runtime: every service, the saga manager and its timer as subscriptions on one
//! local log, in one process.

use std::sync::Arc;
use std::time::Duration;

use aggregates::saga::{RetryPolicy, Service};
use event_store::{EventStore, RecordedEvent, Storage};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::consumer::{self, ConsumerConfig, Handler, Source};
use crate::gateway::{Breaker, BreakerConfig, PaymentGateway};
use crate::handlers::{HandlerError, Handlers, SimulatedCarrier};
use crate::messages;
use crate::saga_runner::SagaRunner;
use projections::models::{DeadLetters, OrderSummaries, PaymentLedger, SagaTimelines, StockLevels};
use projections::{Projection, ReadModels};

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Consumer workers per service.
    pub consumer: ConsumerConfig,
    /// Saga step timeouts and retries.
    pub policy: RetryPolicy,
    /// Payment gateway circuit breaker.
    pub breaker: BreakerConfig,
    /// How often deadlines are checked.
    pub timer_interval: Duration,
    /// Shipping carrier rules.
    pub carrier: SimulatedCarrier,
    /// Read-model backups.
    pub projections: projections::RunOptions,
    /// Mirror the log to Kafka (the relay runs when set).
    pub kafka: Option<crate::kafka::KafkaConfig>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            consumer: ConsumerConfig::default(),
            policy: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            timer_interval: Duration::from_millis(50),
            carrier: SimulatedCarrier::default(),
            projections: projections::RunOptions::default(),
            kafka: None,
        }
    }
}

/// What a node runs. `All` is the embedded default: everything on one local log, Kafka optional
/// (a mirror). The others are the roles of a distributed deployment: each owns the streams of
/// its part, and events and commands cross nodes only through Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process.
    All,
    /// Orders: `order-*`; handles `order_commands` (saga commands and forwarded REST commands).
    Order,
    /// Stock: `inventory-*`; handles `inventory_commands`.
    Inventory,
    /// Payments: `payment-*`; handles `payment_commands`.
    Payment,
    /// Shipments: `shipment-*`; handles `shipping_commands`.
    Shipping,
    /// The saga manager: `saga-*` and the commands it sends; reads order events and replies.
    Saga,
    /// Read models from every topic, the REST queries; forwards REST commands to their owners.
    Query,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Order => "order",
            Role::Inventory => "inventory",
            Role::Payment => "payment",
            Role::Shipping => "shipping",
            Role::Saga => "saga",
            Role::Query => "query",
        }
    }

    /// The service whose commands it handles.
    fn service(self) -> Option<Service> {
        match self {
            Role::Order => Some(Service::Order),
            Role::Inventory => Some(Service::Inventory),
            Role::Payment => Some(Service::Payment),
            Role::Shipping => Some(Service::Shipping),
            _ => None,
        }
    }
}

/// Every topic of a distributed deployment (the query role reads them all).
pub fn all_topics() -> Vec<String> {
    let mut t: Vec<String> = ["order", "inventory", "payment", "shipment", "saga", "replies"]
        .iter()
        .map(|c| format!("{c}_domain_events"))
        .collect();
    t.extend(
        [Service::Order, Service::Inventory, Service::Payment, Service::Shipping]
            .into_iter()
            .map(messages::commands_category),
    );
    t.push("dead_letters".into());
    t
}

/// A service's command consumer.
#[derive(Debug)]
pub struct CommandConsumer<S: Storage, G: PaymentGateway> {
    handlers: Arc<Handlers<S, G>>,
    service: Service,
    name: String,
}

impl<S: Storage, G: PaymentGateway> CommandConsumer<S, G> {
    /// The consumer of `service`'s commands.
    pub fn new(handlers: Arc<Handlers<S, G>>, service: Service) -> Self {
        Self { handlers, service, name: format!("{}-service", service.name()) }
    }
}

impl<S: Storage, G: PaymentGateway> Handler for CommandConsumer<S, G> {
    fn name(&self) -> &str {
        &self.name
    }
    fn source(&self) -> Source {
        Source::Categories(vec![messages::commands_category(self.service)])
    }
    fn accepts(&self, _: &RecordedEvent) -> bool {
        true
    }
    fn partition_key(&self, e: &RecordedEvent) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        e.stream_id.hash(&mut h);
        h.finish()
    }
    async fn handle(&self, e: &RecordedEvent, checkpoint: (String, u64)) -> Result<(), HandlerError> {
        match messages::ApiCommand::decode(e).map_err(HandlerError::Poison)? {
            Some(forwarded) => self.handlers.handle_forwarded(forwarded).await,
            None => self.handlers.handle_command(e, Some(checkpoint)).await,
        }
    }
}

/// The running system.
#[derive(Debug)]
pub struct Runtime<S: Storage, G: PaymentGateway> {
    store: EventStore<S>,
    handlers: Arc<Handlers<S, G>>,
    saga: Arc<SagaRunner<S>>,
    models: ReadModels<S>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), String>>,
}

impl<S: Storage, G: PaymentGateway> Runtime<S, G> {
    /// Starts every consumer and the saga timer on `store` (the embedded default).
    pub fn start(store: EventStore<S>, gateway: G, config: RuntimeConfig) -> Result<Self, HandlerError> {
        Self::start_role(store, gateway, config, Role::All)
    }

    /// Starts what `role` runs. Every role but `All` needs `config.kafka`: it reads its inputs
    /// from Kafka and its relay publishes its log there.
    pub fn start_role(
        store: EventStore<S>,
        gateway: G,
        config: RuntimeConfig,
        role: Role,
    ) -> Result<Self, HandlerError> {
        let kafka = match (role, &config.kafka) {
            (Role::All, _) => None,
            (_, Some(k)) => Some(k.clone()),
            (_, None) => {
                return Err(HandlerError::Poison(format!("the {} role needs Kafka", role.name())));
            }
        };
        let handlers = Arc::new(Handlers::new(
            store.clone(),
            Breaker::new(gateway, config.breaker),
            config.carrier.clone(),
        ));
        let saga = Arc::new(SagaRunner::new(store.clone(), config.policy));
        let recovered = saga.recover()?;
        if recovered > 0 {
            tracing::info!(recovered, "resuming in-flight sagas");
        }
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let services = match (role, role.service()) {
            (Role::All, _) => vec![Service::Order, Service::Inventory, Service::Payment, Service::Shipping],
            (_, Some(s)) => vec![s],
            _ => vec![],
        };
        for service in services {
            let c = Arc::new(CommandConsumer::new(handlers.clone(), service));
            let topics = vec![messages::commands_category(service)];
            spawn_consumer(&mut tasks, &store, c, config.consumer, kafka.as_ref().map(|k| (k, topics)), &rx);
        }
        if matches!(role, Role::All | Role::Saga) {
            let topics = vec!["order_domain_events".to_owned(), "replies_domain_events".to_owned()];
            spawn_consumer(
                &mut tasks,
                &store,
                saga.clone(),
                config.consumer,
                kafka.as_ref().map(|k| (k, topics)),
                &rx,
            );
        }
        if let (Role::Query, Some(k)) = (role, &kafka) {
            let replica = Arc::new(crate::kafka::consume::Replica::new(store.clone(), k.source()));
            spawn_consumer(&mut tasks, &store, replica, config.consumer, Some((k, all_topics())), &rx);
        }
        let models = ReadModels::new(store.clone());
        let opts = config.projections;
        spawn_projection(&mut tasks, &models, OrderSummaries, opts, rx.clone());
        spawn_projection(&mut tasks, &models, StockLevels, opts, rx.clone());
        spawn_projection(&mut tasks, &models, SagaTimelines, opts, rx.clone());
        spawn_projection(&mut tasks, &models, PaymentLedger, opts, rx.clone());
        spawn_projection(&mut tasks, &models, DeadLetters, opts, rx.clone());
        if let Some(kafka) = config.kafka.clone() {
            let health = crate::kafka::relay::RelayHealth::default();
            if role == Role::Saga {
                // Its commands reach the services only through Kafka.
                saga.hold_deadlines_while_stalled(health.clone());
            }
            let (store, rx) = (store.clone(), rx.clone());
            tasks.spawn(async move {
                crate::kafka::relay::run_observed(store, kafka, rx, health).await.map_err(|e| e.to_string())
            });
        }
        if matches!(role, Role::All | Role::Saga) {
            let (saga, rx, interval) = (saga.clone(), rx.clone(), config.timer_interval);
            tasks.spawn(async move {
                saga.run_timer(interval, rx).await;
                Ok(())
            });
        }
        Ok(Self { store, handlers, saga, models, shutdown, tasks })
    }

    /// The read models.
    pub fn models(&self) -> &ReadModels<S> {
        &self.models
    }

    /// The store.
    pub fn store(&self) -> &EventStore<S> {
        &self.store
    }

    /// The handlers (and through them the gateway).
    pub fn handlers(&self) -> &Arc<Handlers<S, G>> {
        &self.handlers
    }

    /// The saga manager.
    pub fn saga(&self) -> &Arc<SagaRunner<S>> {
        &self.saga
    }

    /// Re-drives dead letters through this node's own handlers and saga manager (for the admin
    /// API).
    pub fn redriver(&self) -> crate::api::RedriveFn {
        let (store, handlers, saga) = (self.store.clone(), self.handlers.clone(), self.saga.clone());
        Arc::new(move |consumer: String, event_id: uuid::Uuid| {
            let (store, handlers, saga) = (store.clone(), handlers.clone(), saga.clone());
            Box::pin(async move {
                crate::admin::redrive(&store, &handlers, saga.as_ref(), &consumer, event_id).await
            })
        })
    }

    /// Runs until `stop` completes (then stops gracefully) or until a consumer fails (then stops
    /// the rest and returns the failure): a node that lost a consumer must not keep serving.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), String> {
        tokio::select! {
            _ = stop => self.shutdown().await,
            Some(ended) = self.tasks.join_next() => {
                let reason = match ended {
                    Ok(Ok(())) => "a consumer stopped unexpectedly".to_owned(),
                    Ok(Err(e)) => format!("a consumer failed: {e}"),
                    Err(e) => format!("a consumer task panicked: {e}"),
                };
                tracing::error!(%reason, "stopping the node");
                let _ = self.shutdown().await;
                Err(reason)
            }
        }
    }

    /// Graceful stop: stop reading new events, finish what is in flight, save checkpoints.
    pub async fn shutdown(mut self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        while let Some(r) = self.tasks.join_next().await {
            let r = r.map_err(|e| e.to_string()).and_then(|r| r);
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs a handler until shutdown, on the local log or (with Kafka settings and its topics) on
/// Kafka partitions: the same handler on either transport.
fn spawn_consumer<S: Storage, H: Handler>(
    tasks: &mut JoinSet<Result<(), String>>,
    store: &EventStore<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    kafka: Option<(&crate::kafka::KafkaConfig, Vec<String>)>,
    shutdown: &watch::Receiver<bool>,
) {
    let (store, rx) = (store.clone(), shutdown.clone());
    match kafka {
        None => tasks
            .spawn(async move { consumer::run(store, handler, config, rx).await.map_err(|e| e.to_string()) }),
        Some((k, topics)) => {
            let k = k.clone();
            tasks.spawn(async move {
                crate::kafka::consume::run(store, handler, config, k, topics, rx)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
    };
}

/// Runs a projection until shutdown. A projection that stops on a bad event is logged and stays
/// behind (its lag shows it) while the node keeps serving; it does not take the node down.
fn spawn_projection<S: Storage, P: Projection>(
    tasks: &mut JoinSet<Result<(), String>>,
    models: &ReadModels<S>,
    projection: P,
    options: projections::RunOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let models = models.clone();
    tasks.spawn(async move {
        let name = projection.name().to_owned();
        if let Err(e) = projections::run_with(models, Arc::new(projection), shutdown.clone(), options).await {
            tracing::error!(projection = %name, error = %e, "projection stopped; it will lag until fixed and rebuilt");
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    });
}
