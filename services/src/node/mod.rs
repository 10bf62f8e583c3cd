//! The node: what a process runs ([`Role`]) and the [`Runtime`] that wires the application to its
//! transport. The embedded default (`Role::All`) runs every service, the saga manager and its
//! timer as subscriptions on one local log, in one process; each other role runs its part with
//! its inputs read from Kafka and its log published there.

use std::sync::Arc;
use std::time::Duration;

use aggregates::saga::{RetryPolicy, Service};
use event_store::{EventStore, Storage};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::command_consumer::CommandConsumer;
use crate::app::commands::Answers;
use crate::app::consumer::{self, ConsumerConfig, Handler, Readiness};
use crate::app::error::HandlerError;
use crate::app::gateway::{Breaker, BreakerConfig, PaymentGateway};
use crate::app::handlers::{Handlers, SimulatedCarrier};
use crate::app::messages::{self, ConsumerName};
use crate::app::ops::AdminError;
use crate::app::saga::SagaRunner;
use projections::models::ReadModel;
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
    /// Fraud screening rules (the payment service's check before a payment).
    pub fraud: crate::app::handlers::FraudRules,
    /// Read-model backups.
    pub projections: projections::RunOptions,
    /// Mirror the log to Kafka (the relay runs when set).
    pub kafka: Option<crate::kafka::KafkaConfig>,
    /// Admission control of new orders (on the nodes that take REST commands: `all`, `query`).
    pub admission: crate::app::admission::AdmissionConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            consumer: ConsumerConfig::default(),
            policy: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            timer_interval: Duration::from_millis(50),
            carrier: SimulatedCarrier::default(),
            fraud: Default::default(),
            projections: projections::RunOptions::default(),
            kafka: None,
            admission: crate::app::admission::AdmissionConfig::default(),
        }
    }
}

/// What a node runs. `All` is the embedded default: everything on one local log, Kafka optional
/// (a mirror). The others are the roles of a distributed deployment: each owns the streams of
/// its part, and events and commands cross nodes only through Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The saga manager: `saga-*` and the commands it sends; reads order events, replies and
    /// operators' actions (`saga_commands`).
    Saga,
    /// Read models from every topic, the REST queries; forwards REST commands to their owners.
    Query,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role {s:?}; one of {}", names.join(", "))
        })
    }
}

impl Role {
    /// What the log of a node of this role lets `verify` check.
    pub fn scope(self) -> crate::app::invariants::Scope {
        use crate::app::invariants::Scope;
        match self {
            Role::All | Role::Query => Scope::Everything,
            Role::Saga => Scope::Sagas,
            Role::Inventory => Scope::Stock,
            Role::Order => Scope::Aggregates("order"),
            Role::Payment => Scope::Aggregates("payment"),
            Role::Shipping => Scope::Aggregates("shipment"),
        }
    }

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

    /// Every role, in the order deployments list them.
    pub const ALL: [Role; 7] =
        [Role::All, Role::Order, Role::Inventory, Role::Payment, Role::Shipping, Role::Saga, Role::Query];

    /// The role of a name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The service whose commands it handles.
    pub fn service(self) -> Option<Service> {
        match self {
            Role::Order => Some(Service::Order),
            Role::Inventory => Some(Service::Inventory),
            Role::Payment => Some(Service::Payment),
            Role::Shipping => Some(Service::Shipping),
            _ => None,
        }
    }

    /// Whether it runs the saga manager.
    pub fn runs_saga(self) -> bool {
        matches!(self, Role::All | Role::Saga)
    }

    /// The consumers it runs (those whose dead letters it owns).
    pub fn consumers(self) -> Vec<ConsumerName> {
        match self {
            Role::All => ConsumerName::ALL.to_vec(),
            Role::Saga => vec![ConsumerName::SagaManager],
            Role::Query => vec![],
            other => other.service().map(ConsumerName::of_service).into_iter().collect(),
        }
    }

    /// The role that runs a consumer in a distributed deployment.
    pub fn of_consumer(consumer: ConsumerName) -> Role {
        match consumer {
            ConsumerName::OrderService => Role::Order,
            ConsumerName::InventoryService => Role::Inventory,
            ConsumerName::PaymentService => Role::Payment,
            ConsumerName::ShippingService => Role::Shipping,
            ConsumerName::SagaManager => Role::Saga,
        }
    }
}

/// What each metric of a node means (its Prometheus `# HELP`).
const METRICS: [(&str, &str); 38] = [
    ("causeway_store_events_appended_total", "Events appended to the log."),
    ("causeway_store_group_events", "Events per group commit (one sync)."),
    ("causeway_store_sync_seconds", "Time of one sync of the log to disk."),
    ("causeway_store_head_position", "The log's head position."),
    ("causeway_store_pending_appends", "Appends waiting for the writer."),
    ("causeway_store_max_pending_appends", "The bound on appends waiting for the writer."),
    (
        "causeway_store_damaged_index_copies_total",
        "Stream-index copies found damaged and read from the log instead.",
    ),
    ("causeway_store_disk_bytes", "Bytes the store occupies on disk."),
    ("causeway_store_disk_available_bytes", "Bytes available on the store's volume."),
    ("causeway_store_disk_total_bytes", "Bytes of the store's volume in all."),
    ("causeway_ready", "1 when the node is ready (its consumers hold their inputs), 0 otherwise."),
    ("causeway_projection_lag_events", "Events of the log a read model has not folded yet."),
    ("causeway_dead_letters_total", "Messages a consumer dead-lettered."),
    ("causeway_saga_outcomes_total", "Sagas that ended (or were quarantined), by outcome."),
    ("causeway_sagas_in_flight", "Sagas in the saga manager's memory (not ended, not parked)."),
    ("causeway_saga_input_delay_seconds", "How old the saga manager's newest input was when it was handled."),
    (
        "causeway_saga_deadlines_held_total",
        "Saga deadlines held back (a backlog of inputs, or the retry budget), by why.",
    ),
    ("causeway_saga_operator_actions_total", "Operators' actions carried out on sagas, by action."),
    ("causeway_payment_circuit_opened_total", "Times the payment gateway's circuit breaker opened."),
    ("causeway_snapshots_unusable_total", "Inventory snapshots that could not be used (replayed instead)."),
    ("causeway_snapshots_failed_total", "Inventory snapshots that could not be written."),
    ("causeway_admission_in_flight", "Sagas in flight that admission control counts."),
    ("causeway_admission_limit", "The adaptive limit of sagas in flight."),
    ("causeway_admission_target_seconds", "The saga latency admission control aims at."),
    ("causeway_admission_saga_seconds", "Time from an order's admission to its saga's end."),
    ("causeway_admission_rejected_total", "Orders refused at the limit of sagas in flight."),
    ("causeway_admission_expired_total", "Admitted sagas whose place expired before they ended."),
    ("causeway_http_requests_total", "HTTP requests answered, by method and status."),
    ("causeway_http_request_seconds", "Time to answer an HTTP request, by method."),
    ("causeway_http_rejected_total", "HTTP requests refused by a bound, by reason."),
    ("causeway_http_unauthorized_total", "HTTP requests refused for a missing or wrong credential."),
    ("causeway_http_idle_closed_total", "HTTP connections closed for idling."),
    (
        "causeway_http_connections_waiting",
        "1 while connections wait for a place under the connection bound, 0 otherwise.",
    ),
    ("causeway_live_feeds", "Live feeds (Server-Sent Events) served now."),
    ("causeway_live_feeds_dropped_total", "Live feeds dropped because their client stopped reading."),
    ("causeway_relay_events_total", "Events the relay delivered to Kafka."),
    ("causeway_relay_errors_total", "Relay deliveries to Kafka that failed (and are sent again)."),
    ("causeway_relay_lag_events", "Events of the log the relay has not delivered to Kafka yet."),
];

/// Describes every metric of the node (its `# HELP`), and creates at zero the counters the
/// dashboard and the alerts read, so that a panel or an alert on one that has not moved yet (no
/// dead letter so far, no relay error, no refusal) finds a series and reads 0 rather than no data
/// (and `increase()` sees the first one). Call once the metrics
/// recorder is installed.
pub fn register_metrics() {
    const HISTOGRAMS: [&str; 4] = [
        "causeway_store_group_events",
        "causeway_store_sync_seconds",
        "causeway_admission_saga_seconds",
        "causeway_http_request_seconds",
    ];
    for (name, help) in METRICS {
        if name.ends_with("_total") {
            metrics::describe_counter!(name, help);
        } else if HISTOGRAMS.contains(&name) {
            metrics::describe_histogram!(name, help);
        } else {
            metrics::describe_gauge!(name, help);
        }
    }
    for c in ConsumerName::ALL.map(ConsumerName::as_str).into_iter().chain(["replica"]) {
        metrics::counter!("causeway_dead_letters_total", "consumer" => c).absolute(0);
    }
    for outcome in ["completed", "compensated", "failed", "quarantined"] {
        metrics::counter!("causeway_saga_outcomes_total", "outcome" => outcome).absolute(0);
    }
    for why in ["backlog", "retry_budget"] {
        metrics::counter!("causeway_saga_deadlines_held_total", "why" => why).absolute(0);
    }
    for reason in ["appends", "in_flight", "timeout", "live_feeds"] {
        metrics::counter!("causeway_http_rejected_total", "reason" => reason).absolute(0);
    }
    for name in [
        "causeway_relay_errors_total",
        "causeway_relay_events_total",
        "causeway_payment_circuit_opened_total",
        "causeway_admission_rejected_total",
        "causeway_admission_expired_total",
        "causeway_live_feeds_dropped_total",
        "causeway_snapshots_unusable_total",
        "causeway_snapshots_failed_total",
        "causeway_http_unauthorized_total",
        "causeway_http_idle_closed_total",
        "causeway_store_damaged_index_copies_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!("causeway_live_feeds").set(0.0);
}

/// Every topic of a distributed deployment (the query role reads them all).
pub fn all_topics() -> Vec<String> {
    let mut t: Vec<String> =
        messages::EVENT_CATEGORIES.iter().map(|c| format!("{c}_domain_events")).collect();
    t.extend(
        [Service::Order, Service::Inventory, Service::Payment, Service::Shipping]
            .into_iter()
            .map(messages::commands_category),
    );
    t.push(messages::SAGA_COMMANDS.into());
    t.push("dead_letters".into());
    t
}

/// The refusal of a re-drive on a node that does not run `consumer`: names the role that does,
/// and the node the letter came from when this node holds a replica of it.
pub fn not_owner<S: Storage>(
    store: &EventStore<S>,
    role: Role,
    consumer: ConsumerName,
    event_id: uuid::Uuid,
) -> AdminError {
    let owner_role = Role::of_consumer(consumer).name();
    let from = consumer::list_dead_letters_with_source(store, consumer.as_str()).ok().and_then(|letters| {
        letters.into_iter().find(|(l, _)| l.letter.event_id == event_id).and_then(|(_, s)| s)
    });
    let where_ = match from {
        Some(source) => format!("re-drive it on {source}, the {owner_role} pod whose letter this is"),
        None => format!("re-drive it on the {owner_role} pod that dead-lettered it"),
    };
    AdminError::NotOwner { consumer, role: role.name(), where_ }
}

/// The handlers a node of `role` runs (one of `shard_count` pods of it).
fn handlers_of<S: Storage, G: PaymentGateway>(
    store: &EventStore<S>,
    gateway: G,
    config: &RuntimeConfig,
    role: Role,
    shard_count: i32,
) -> Arc<Handlers<S, G>> {
    Arc::new(
        Handlers::new(store.clone(), Breaker::new(gateway, config.breaker), config.carrier.clone())
            .with_sharded_inventory(role == Role::Inventory && shard_count > 1)
            .with_fraud_rules(config.fraud.clone()),
    )
}

/// The saga manager of a node of `role`, its in-flight sagas recovered (`None`: the role runs
/// none; only a node that runs the saga manager keeps sagas in memory).
fn saga_of<S: Storage>(
    store: &EventStore<S>,
    config: &RuntimeConfig,
    role: Role,
) -> Result<Option<Arc<SagaRunner<S>>>, HandlerError> {
    if !role.runs_saga() {
        return Ok(None);
    }
    let saga = Arc::new(SagaRunner::new(store.clone(), config.policy));
    let recovered = saga.recover()?;
    if recovered > 0 {
        tracing::info!(recovered, "resuming in-flight sagas");
    }
    Ok(Some(saga))
}

/// Re-drives the open dead letter of `consumer` for `event_id` on a stopped node's store, with
/// what a running node of the role the store was written under runs (the same handlers, the
/// sharded-inventory refusal included, and its saga manager). A consumer that role does not run
/// is refused, naming where the letter belongs.
pub async fn redrive_stopped<S: Storage, G: PaymentGateway>(
    store: &EventStore<S>,
    gateway: G,
    config: &RuntimeConfig,
    consumer: ConsumerName,
    event_id: uuid::Uuid,
) -> Result<(), RedriveError> {
    let (role, shard_count) = recorded_role(store)?;
    if !role.consumers().contains(&consumer) {
        return Err(not_owner(store, role, consumer, event_id).into());
    }
    let handlers = handlers_of(store, gateway, config, role, shard_count);
    let saga = saga_of(store, config, role)?;
    Ok(crate::app::ops::redrive(store, &handlers, saga.as_deref(), consumer, event_id).await?)
}

/// The role a node's store was written under and its pod count (`All` and 1 for a store that
/// records none: an embedded node's). A role this build does not know is an error, never
/// taken for `All`.
pub fn recorded_role<S: Storage>(store: &EventStore<S>) -> Result<(Role, i32), RoleError> {
    match crate::kafka::shard::recorded(store)? {
        None => Ok((Role::All, 1)),
        Some(l) => match Role::from_name(&l.role) {
            Some(role) => Ok((role, l.count)),
            None => Err(RoleError::Unknown(l.role)),
        },
    }
}

/// Why the role a store was written under is not known.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The recorded shard layout cannot be read.
    #[error(transparent)]
    Layout(#[from] crate::kafka::shard::LayoutError),
    /// The store names a role this build does not know (a newer build's).
    #[error("the store was written by a node of role {0:?}, which this build does not know")]
    Unknown(String),
}

/// Why a re-drive on a stopped node failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The re-drive itself (no such letter, not this node's, failing again, the store).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The role the store was written under is not known.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// Recovering the saga manager's in-flight sagas failed.
    #[error("recovering in-flight sagas: {0}")]
    Recovery(#[from] HandlerError),
}

/// The running system.
#[derive(Debug)]
pub struct Runtime<S: Storage, G: PaymentGateway> {
    store: EventStore<S>,
    role: Role,
    handlers: Arc<Handlers<S, G>>,
    saga: Option<Arc<SagaRunner<S>>>,
    consumers: Vec<ConsumerName>,
    models: ReadModels<S>,
    readiness: Readiness,
    answers: Option<Answers>,
    admission: Option<crate::app::admission::Admission>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<TaskEnd>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration does not fit the role.
    #[error("{0}")]
    Config(String),
    /// The node was started with another shard layout than its store was written under.
    #[error(transparent)]
    Layout(#[from] crate::kafka::shard::LayoutError),
    /// Recovering the in-flight sagas failed.
    #[error("recovering in-flight sagas: {0}")]
    Recovery(#[from] HandlerError),
}

impl<S: Storage, G: PaymentGateway> Runtime<S, G> {
    /// Starts every consumer and the saga timer on `store` (the embedded default).
    pub fn start(store: EventStore<S>, gateway: G, config: RuntimeConfig) -> Result<Self, StartError> {
        Self::start_role(store, gateway, config, Role::All)
    }

    /// Starts what `role` runs. Every role but `All` needs `config.kafka`: it reads its inputs
    /// from Kafka and its relay publishes its log there.
    pub fn start_role(
        store: EventStore<S>,
        gateway: G,
        config: RuntimeConfig,
        role: Role,
    ) -> Result<Self, StartError> {
        let kafka = match (role, &config.kafka) {
            (Role::All, _) => None,
            (_, Some(k)) => Some(k.clone()),
            (_, None) => return Err(StartError::Config(format!("the {} role needs Kafka", role.name()))),
        };
        // A role's pods share its input partitions; the query role reads every partition.
        let shard = match role {
            Role::All | Role::Query => (0, 1),
            _ => kafka.as_ref().map_or((0, 1), |k| k.shard),
        };
        if role != Role::All {
            let (index, count) = shard;
            crate::kafka::shard::check_layout(
                &store,
                crate::kafka::shard::Layout { role: role.name().into(), index, count, partitions: None },
            )?;
        }
        let handlers = handlers_of(&store, gateway, &config, role, shard.1);
        let saga = saga_of(&store, &config, role)?;
        let readiness = Readiness::default();
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let consumers = role.consumers();
        let owner = role.name();
        let inputs = |topics: Vec<String>| {
            kafka.as_ref().map(|k| (k, crate::kafka::consume::Inputs { topics, shard, role: Some(owner) }))
        };
        for name in &consumers {
            match (name.service(), &saga) {
                (Some(service), _) => {
                    let c = Arc::new(CommandConsumer::new(handlers.clone(), service));
                    let topics = vec![messages::commands_category(service)];
                    spawn_consumer(&mut tasks, &store, c, config.consumer, inputs(topics), &rx, &readiness);
                }
                (None, Some(saga)) => {
                    // Operators' actions come on saga_commands, keyed by order like the rest.
                    let topics = vec![
                        "order_domain_events".to_owned(),
                        "replies_domain_events".to_owned(),
                        messages::SAGA_COMMANDS.to_owned(),
                    ];
                    spawn_consumer(
                        &mut tasks,
                        &store,
                        saga.clone(),
                        config.consumer,
                        inputs(topics),
                        &rx,
                        &readiness,
                    );
                }
                (None, None) => {}
            }
        }
        let mut answers = None;
        if let (Role::Query, Some(k)) = (role, &kafka) {
            let replica = Arc::new(crate::kafka::consume::Replica::new(store.clone(), k.source()));
            spawn_consumer(
                &mut tasks,
                &store,
                replica,
                config.consumer,
                Some((k, crate::kafka::consume::Inputs { topics: all_topics(), shard: (0, 1), role: None })),
                &rx,
                &readiness,
            );
            // It forwards REST commands and waits for their owners' answers.
            let a = Answers::default();
            let (a2, store, rx) = (a.clone(), store.clone(), rx.clone());
            tasks.spawn(async move { ended("forwarded-command answers", a2.run(store, rx).await) });
            answers = Some(a);
        }
        let models = ReadModels::new(store.clone());
        let opts = config.projections;
        for m in ReadModel::ALL {
            projections::with_read_model!(m, |p| spawn_projection(&mut tasks, &models, p, opts, rx.clone()));
        }
        if let Some(kafka) = config.kafka.clone() {
            let health = crate::kafka::relay::RelayHealth::default();
            if let (Role::Saga, Some(saga)) = (role, &saga) {
                // Its commands reach the services only through Kafka.
                saga.hold_deadlines_while_stalled(Arc::new(health.clone()));
            }
            let (store, rx) = (store.clone(), rx.clone());
            tasks.spawn(async move {
                ended("Kafka relay", crate::kafka::relay::run_observed(store, kafka, rx, health).await)
            });
        }
        if let Some(saga) = &saga {
            let (saga, rx, interval) = (saga.clone(), rx.clone(), config.timer_interval);
            tasks.spawn(async move {
                saga.run_timer(interval, rx).await;
                Ok("saga timer".to_owned())
            });
        }
        // The nodes that take REST commands bound the sagas they start.
        let admission = matches!(role, Role::All | Role::Query).then(|| {
            let admission = crate::app::admission::Admission::new(config.admission);
            let (a, store, rx, after) = (admission.clone(), store.clone(), rx.clone(), store.head());
            tasks.spawn(async move { ended("admission", a.run(store, after, rx).await) });
            admission
        });
        readiness.set_serving(true);
        Ok(Self {
            store,
            role,
            handlers,
            saga,
            consumers,
            models,
            readiness,
            answers,
            admission,
            shutdown,
            tasks,
        })
    }

    /// The read models.
    pub fn models(&self) -> &ReadModels<S> {
        &self.models
    }

    /// The store.
    pub fn store(&self) -> &EventStore<S> {
        &self.store
    }

    /// The role it runs.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The handlers (and through them the gateway).
    pub fn handlers(&self) -> &Arc<Handlers<S, G>> {
        &self.handlers
    }

    /// The saga manager (on the nodes that run it: `all` and `saga`).
    pub fn saga(&self) -> Option<&Arc<SagaRunner<S>>> {
        self.saga.as_ref()
    }

    /// Whether its consumers hold their inputs and have read them once (and the node serves).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The admission control of new orders (the nodes that take REST commands: `all`, `query`).
    pub fn admission(&self) -> Option<&crate::app::admission::Admission> {
        self.admission.as_ref()
    }

    /// The answers to the REST commands this node forwards (the query role).
    pub fn answers(&self) -> Option<&Answers> {
        self.answers.as_ref()
    }

    /// Re-drives dead letters through this node's own handlers and saga manager (for the admin
    /// API). A consumer this node does not run is refused, naming where its letters come from:
    /// the node never runs handlers on streams it does not own (a query node holds replicas).
    pub fn redriver(&self) -> crate::http::RedriveFn {
        let (store, handlers, saga) = (self.store.clone(), self.handlers.clone(), self.saga.clone());
        let (consumers, role) = (self.consumers.clone(), self.role);
        Arc::new(move |consumer: ConsumerName, event_id: uuid::Uuid| {
            let (store, handlers, saga, consumers) =
                (store.clone(), handlers.clone(), saga.clone(), consumers.clone());
            Box::pin(async move {
                if !consumers.contains(&consumer) {
                    return Err(not_owner(&store, role, consumer, event_id));
                }
                crate::app::ops::redrive(&store, &handlers, saga.as_deref(), consumer, event_id).await
            })
        })
    }

    /// Carries out operators' actions on sagas through this node's saga manager. A node that runs
    /// none refuses, naming the pods that own sagas.
    pub fn actor(&self) -> crate::http::ActFn {
        let (saga, role) = (self.saga.clone(), self.role);
        Arc::new(move |req: crate::http::SagaActionRequest| {
            let saga = saga.clone();
            Box::pin(async move {
                let Some(saga) = saga else {
                    return Err(crate::app::saga::ActError::NotOwner(format!(
                        "this node ({} role) runs no saga manager: send the action on the saga of order {} \
                         to a query node, which forwards it to the saga pod that owns it",
                        role.name(),
                        req.order
                    )));
                };
                match saga.act(req.order, &req.request).await {
                    // A saga pod holds the sagas of its partitions only.
                    Err(crate::app::saga::ActError::NotFound(order)) if role == Role::Saga => {
                        Err(crate::app::saga::ActError::NotOwner(format!(
                            "this saga pod holds no saga for order {order}: send the action to a query \
                             node, which forwards it to the saga pod that owns the order"
                        )))
                    }
                    other => other,
                }
            })
        })
    }

    /// Runs until `stop` completes (then stops gracefully) or until a consumer fails (then stops
    /// the rest and returns the failure): a node that lost a consumer must not keep serving.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Result<(), NodeError> {
        tokio::select! {
            _ = stop => self.shutdown().await,
            Some(end) = self.tasks.join_next() => {
                let error = match end {
                    Ok(Ok(task)) => NodeError::Stopped(task),
                    Ok(Err(e)) => e,
                    Err(e) => NodeError::Panicked(e.to_string()),
                };
                tracing::error!(%error, "stopping the node");
                let _ = self.shutdown().await;
                Err(error)
            }
        }
    }

    /// Graceful stop: stop reading new events, finish what is in flight, save checkpoints.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.readiness.set_serving(false);
        let _ = self.shutdown.send(true);
        let mut first_error = None;
        while let Some(end) = self.tasks.join_next().await {
            let end = end.map_err(|e| NodeError::Panicked(e.to_string())).and_then(|r| r);
            if let Err(e) = end {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How one of a node's tasks ended: `Ok` with the task's name when it stopped by itself.
type TaskEnd = Result<String, NodeError>;

/// Why a node stopped with an error: one of its tasks failed (the node stops the others rather
/// than serve without it).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A task on the local log (a consumer, admission, the answers of forwarded commands) failed.
    #[error("{task}: {cause}")]
    Store {
        /// The task.
        task: String,
        /// Why (in the message, not again as a source, so a chain prints it once).
        cause: event_store::Error,
    },
    /// A task on Kafka (a consumer of partitions, the relay) failed.
    #[error("{task}: {cause}")]
    Kafka {
        /// The task.
        task: String,
        /// Why.
        cause: crate::kafka::KafkaError,
    },
    /// A task ended while the node was running.
    #[error("{0} stopped unexpectedly")]
    Stopped(String),
    /// A task panicked.
    #[error("a task panicked: {0}")]
    Panicked(String),
}

/// A task's end, from what its run returned.
fn ended<E: Into<TaskFailure>>(task: &str, outcome: Result<(), E>) -> TaskEnd {
    match outcome {
        Ok(()) => Ok(task.to_owned()),
        Err(e) => Err(match e.into() {
            TaskFailure::Store(cause) => NodeError::Store { task: task.to_owned(), cause },
            TaskFailure::Kafka(cause) => NodeError::Kafka { task: task.to_owned(), cause },
        }),
    }
}

/// What a task's run can fail with.
enum TaskFailure {
    Store(event_store::Error),
    Kafka(crate::kafka::KafkaError),
}

impl From<event_store::Error> for TaskFailure {
    fn from(e: event_store::Error) -> Self {
        TaskFailure::Store(e)
    }
}

impl From<crate::kafka::KafkaError> for TaskFailure {
    fn from(e: crate::kafka::KafkaError) -> Self {
        TaskFailure::Kafka(e)
    }
}

/// Runs a handler until shutdown, on the local log or (with Kafka settings, its topics and its
/// share of their partitions) on Kafka partitions: the same handler on either transport.
fn spawn_consumer<S: Storage, H: Handler>(
    tasks: &mut JoinSet<TaskEnd>,
    store: &EventStore<S>,
    handler: Arc<H>,
    config: ConsumerConfig,
    kafka: Option<(&crate::kafka::KafkaConfig, crate::kafka::consume::Inputs)>,
    shutdown: &watch::Receiver<bool>,
    readiness: &Readiness,
) {
    let (store, rx, readiness) = (store.clone(), shutdown.clone(), readiness.clone());
    let name = handler.name().to_owned();
    match kafka {
        None => tasks.spawn(async move { ended(&name, consumer::run(store, handler, config, rx).await) }),
        Some((k, inputs)) => {
            readiness.expect(&name);
            let k = k.clone();
            tasks.spawn(async move {
                let r = crate::kafka::consume::run(store, handler, config, k, inputs, rx, readiness.clone())
                    .await;
                // A consumer that ended holds nothing: the node is not ready (it stops next).
                readiness.expect(&name);
                ended(&name, r)
            })
        }
    };
}

/// Runs a projection until shutdown. A projection that stops on a bad event is logged and stays
/// behind (its lag shows it) while the node keeps serving; it does not take the node down.
fn spawn_projection<S: Storage, P: Projection>(
    tasks: &mut JoinSet<TaskEnd>,
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
        Ok(name)
    });
}

impl<S: Storage> Runtime<S, crate::app::gateway::SimulatedGateway> {
    /// The knob of this node's simulated payment gateway (the admin route's).
    pub fn simulator(&self) -> crate::http::SimulatorFn {
        let handlers = self.handlers.clone();
        Arc::new(move |config| handlers.gateway().inner().reconfigure(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::gateway::{SimulatedGateway, SimulatedGatewayConfig};
    use crate::kafka::shard::{check_layout, Layout};
    use event_store::{MemoryStorage, StoreConfig};

    fn store_of(role: Option<&str>, count: i32) -> EventStore<MemoryStorage> {
        let store = EventStore::open(MemoryStorage::new(), StoreConfig::default()).expect("store");
        if let Some(role) = role {
            let layout = Layout { role: role.into(), index: 0, count, partitions: None };
            check_layout(&store, layout).expect("recorded");
        }
        store
    }

    #[tokio::test]
    async fn a_store_of_a_role_this_build_does_not_know_is_refused_not_taken_for_all() {
        assert_eq!(recorded_role(&store_of(None, 1)).expect("none recorded"), (Role::All, 1));
        assert_eq!(recorded_role(&store_of(Some("inventory"), 2)).expect("known"), (Role::Inventory, 2));
        let newer = store_of(Some("loyalty"), 1);
        assert!(matches!(recorded_role(&newer), Err(RoleError::Unknown(r)) if r == "loyalty"));
        // Re-drive on such a store runs nothing (an `all` node would run every handler).
        let gateway = SimulatedGateway::new(SimulatedGatewayConfig::default());
        let redriven = redrive_stopped(
            &newer,
            gateway,
            &RuntimeConfig::default(),
            ConsumerName::OrderService,
            uuid::Uuid::nil(),
        )
        .await;
        assert!(matches!(redriven, Err(RedriveError::Role(RoleError::Unknown(_)))), "{redriven:?}");
    }
}
