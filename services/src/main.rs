//! `causeway`: the Causeway node and its operator tools. A thin binary: configuration, the choice
//! of concrete store and gateway, signal handling; everything else lives in the `services` library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use event_store::{Durability, EventStore, SledConfig, SledStorage, StoreConfig};
use projections::models::{DeadLetters, OrderSummaries, PaymentLedger, SagaTimelines, StockLevels};
use services::bench;
use services::gateway::{SimulatedGateway, SimulatedGatewayConfig};
use services::runtime::{Runtime, RuntimeConfig};
use services::{invariants, load};

use services::admin::{self, ReplayMode, PROJECTIONS};

/// sled allocates and frees a node per copy-on-write update; mimalloc halves what the system
/// allocator costs there (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "causeway", version, about = "Causeway: an event-sourced order platform")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Power-loss safe: fdatasync before acknowledging (default).
    Fsync,
    /// Process-crash safe: flush every --flush-ms, acknowledge after the flush.
    Periodic,
}

/// Where the node keeps its log and how it writes it.
#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// The node's data directory (a sled database).
    #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
    data_dir: PathBuf,
    /// Durability of appends.
    #[arg(long, env = "CAUSEWAY_DURABILITY", value_enum, default_value = "fsync")]
    durability: DurabilityArg,
    /// Flush interval in periodic mode.
    #[arg(long, env = "CAUSEWAY_FLUSH_MS", default_value_t = 5)]
    flush_ms: u64,
    /// sled cache size in MiB.
    #[arg(long, env = "CAUSEWAY_CACHE_MIB", default_value_t = 256)]
    cache_mib: u64,
    /// Appends queued for the disk at most; past it appends wait (REST commands are refused
    /// with 429 once half of it is used).
    #[arg(long, env = "CAUSEWAY_MAX_PENDING_APPENDS", default_value_t = event_store::DEFAULT_MAX_PENDING_APPENDS)]
    max_pending_appends: usize,
}

impl StoreArgs {
    fn validate(&self) -> Result<()> {
        if self.cache_mib == 0 {
            bail!("--cache-mib must be at least 1");
        }
        if !(16..=1_000_000).contains(&self.max_pending_appends) {
            bail!("--max-pending-appends must be between 16 and 1000000");
        }
        if matches!(self.durability, DurabilityArg::Periodic) && !(1..=10_000).contains(&self.flush_ms) {
            bail!("--flush-ms must be between 1 and 10000");
        }
        Ok(())
    }

    fn open(&self) -> Result<EventStore<SledStorage>> {
        self.validate()?;
        let sled =
            SledConfig { cache_capacity: self.cache_mib * 1024 * 1024, ..SledConfig::new(&self.data_dir) };
        let storage = SledStorage::open(&sled)
            .with_context(|| format!("opening the store at {}", self.data_dir.display()))?;
        let durability = match self.durability {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Periodic => {
                Durability::Periodic { interval: Duration::from_millis(self.flush_ms) }
            }
        };
        let config = StoreConfig {
            durability,
            max_pending_appends: self.max_pending_appends,
            ..StoreConfig::default()
        };
        Ok(EventStore::open(storage, config)?)
    }
}

/// The simulated payment gateway's behaviour.
#[derive(Debug, Clone, clap::Args)]
struct GatewayArgs {
    /// Latency of each gateway call, in ms.
    #[arg(long, env = "CAUSEWAY_GATEWAY_LATENCY_MS", default_value_t = 0)]
    gateway_latency_ms: u64,
    /// Fraction of gateway calls that fail transiently (0..1).
    #[arg(long, env = "CAUSEWAY_GATEWAY_FAILURE_RATE", default_value_t = 0.0)]
    gateway_failure_rate: f64,
    /// Fraction of payments declined (0..1).
    #[arg(long, env = "CAUSEWAY_GATEWAY_DECLINE_RATE", default_value_t = 0.0)]
    gateway_decline_rate: f64,
}

impl GatewayArgs {
    fn build(&self) -> Result<SimulatedGateway> {
        for (name, v) in [
            ("--gateway-failure-rate", self.gateway_failure_rate),
            ("--gateway-decline-rate", self.gateway_decline_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0 and 1, got {v}");
            }
        }
        Ok(SimulatedGateway::new(SimulatedGatewayConfig {
            latency: Duration::from_millis(self.gateway_latency_ms),
            failure_rate: self.gateway_failure_rate,
            decline_rate: self.gateway_decline_rate,
            ..SimulatedGatewayConfig::default()
        }))
    }
}

/// The saga's step deadlines and retries (the nodes that run the saga manager).
#[derive(Debug, Clone, clap::Args)]
struct SagaArgs {
    /// How long a step may wait for its reply before it is sent again, in ms.
    #[arg(long, env = "CAUSEWAY_STEP_TIMEOUT_MS", default_value_t = 5_000)]
    step_timeout_ms: u64,
    /// Sends of a step (the first one included) before the saga gives up and compensates.
    #[arg(long, env = "CAUSEWAY_STEP_ATTEMPTS", default_value_t = 4)]
    step_attempts: u32,
}

impl SagaArgs {
    fn policy(&self) -> Result<aggregates::saga::RetryPolicy> {
        if !(100..=3_600_000).contains(&self.step_timeout_ms) {
            bail!("--step-timeout-ms must be between 100 and 3600000");
        }
        if !(1..=100).contains(&self.step_attempts) {
            bail!("--step-attempts must be between 1 and 100");
        }
        Ok(aggregates::saga::RetryPolicy {
            step_timeout_ms: self.step_timeout_ms,
            max_attempts: self.step_attempts,
            ..aggregates::saga::RetryPolicy::default()
        })
    }
}

/// The node's bounds under overload (ARCHITECTURE.md, "Overload").
#[derive(Debug, Clone, clap::Args)]
struct LimitArgs {
    /// Sagas in flight the node admits at start (the limit then adapts to saga latency).
    #[arg(long, env = "CAUSEWAY_ADMISSION_INITIAL", default_value_t = 256)]
    admission_initial: usize,
    /// The adaptive limit never goes below this.
    #[arg(long, env = "CAUSEWAY_ADMISSION_MIN", default_value_t = 16)]
    admission_min: usize,
    /// Nor above this.
    #[arg(long, env = "CAUSEWAY_ADMISSION_MAX", default_value_t = 20_000)]
    admission_max: usize,
    /// Saga latency (order placed to saga ended) the limit aims under, in ms.
    #[arg(long, env = "CAUSEWAY_ADMISSION_TARGET_MS", default_value_t = 1_000)]
    admission_target_ms: u64,
    /// Live feeds (`/api/events/live`) served at once.
    #[arg(long, env = "CAUSEWAY_MAX_LIVE_FEEDS", default_value_t = services::api::DEFAULT_MAX_LIVE_FEEDS)]
    max_live_feeds: usize,
    /// `/api` requests served at once; past it, 429.
    #[arg(long, env = "CAUSEWAY_MAX_IN_FLIGHT_REQUESTS", default_value_t = 1024)]
    max_in_flight_requests: usize,
    /// An `/api` request not answered in this time gets a 504 (outcome unknown), in ms.
    #[arg(long, env = "CAUSEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// HTTP connections open at once; past it, new connections wait in the listen backlog.
    #[arg(long, env = "CAUSEWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// A connection with no traffic this long is closed, in ms.
    #[arg(long, env = "CAUSEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    idle_timeout_ms: u64,
}

/// What [`LimitArgs`] set.
#[derive(Debug, Clone)]
struct Limits {
    admission: services::admission::AdmissionConfig,
    feeds: usize,
    http: services::api::HttpLimits,
    connections: usize,
    idle: Duration,
}

impl LimitArgs {
    fn limits(&self) -> Result<Limits> {
        let admission = services::admission::AdmissionConfig {
            initial: self.admission_initial,
            min: self.admission_min,
            max: self.admission_max,
            target: Duration::from_millis(self.admission_target_ms),
            ..services::admission::AdmissionConfig::default()
        };
        admission.validate().map_err(anyhow::Error::msg)?;
        let counts = [self.max_live_feeds, self.max_in_flight_requests, self.max_connections];
        if counts.iter().any(|n| !(1..=1_000_000).contains(n)) {
            bail!("--max-live-feeds, --max-in-flight-requests and --max-connections must be between 1 and 1000000");
        }
        if !(1_000..=3_600_000).contains(&self.request_timeout_ms) {
            bail!("--request-timeout-ms must be between 1000 and 3600000");
        }
        if !(20_000..=3_600_000).contains(&self.idle_timeout_ms) {
            bail!("--idle-timeout-ms must be between 20000 and 3600000 (live feeds send a keep-alive every 15 s)");
        }
        if self.idle_timeout_ms < self.request_timeout_ms + 5_000 {
            bail!("--idle-timeout-ms must exceed --request-timeout-ms by 5000 at least (a request in progress must not be cut as idle)");
        }
        Ok(Limits {
            admission,
            feeds: self.max_live_feeds,
            http: services::api::HttpLimits {
                max_in_flight: self.max_in_flight_requests,
                request_timeout: Duration::from_millis(self.request_timeout_ms),
            },
            connections: self.max_connections,
            idle: Duration::from_millis(self.idle_timeout_ms),
        })
    }
}

/// Kafka: the relay that mirrors the log, restore, re-publish.
#[derive(Debug, Clone, clap::Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...). Serve mirrors the log there when set.
    #[arg(long = "kafka-bootstrap", env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap: Option<String>,
    /// This node's name: the source of its records in Kafka (and what a restore takes back).
    #[arg(long, env = "CAUSEWAY_NODE_ID", default_value = "causeway-0")]
    node_id: String,
    /// Partitions of the topics the relay creates.
    #[arg(long, env = "CAUSEWAY_KAFKA_PARTITIONS", default_value_t = 4)]
    kafka_partitions: i32,
    /// Replication factor of the topics the relay creates.
    #[arg(long, env = "CAUSEWAY_KAFKA_REPLICATION", default_value_t = 1)]
    kafka_replication: i32,
    /// Producer compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, env = "CAUSEWAY_KAFKA_COMPRESSION", default_value = "lz4")]
    kafka_compression: String,
    /// Producer linger (batching), in ms.
    #[arg(long, env = "CAUSEWAY_KAFKA_LINGER_MS", default_value_t = 5)]
    kafka_linger_ms: u32,
    /// Consumer fetch wait (how long an idle fetch waits at the broker), in ms.
    #[arg(long, env = "CAUSEWAY_KAFKA_FETCH_WAIT_MS", default_value_t = 20)]
    kafka_fetch_wait_ms: u32,
    /// Producer batch size in bytes.
    #[arg(long, env = "CAUSEWAY_KAFKA_BATCH_BYTES", default_value_t = 262_144)]
    kafka_batch_bytes: u32,
    /// Pods of this role: each takes the input partitions p with p % count == index.
    #[arg(long, env = "CAUSEWAY_SHARD_COUNT", default_value_t = 1)]
    shard_count: i32,
    /// This pod's index among them, or `auto`: the ordinal at the end of the host name (a
    /// StatefulSet pod `causeway-order-2` is 2).
    #[arg(long, env = "CAUSEWAY_SHARD_INDEX", default_value = "0")]
    shard_index: String,
}

impl KafkaArgs {
    /// The Kafka settings, or `None` when no bootstrap servers are configured.
    fn config(&self) -> Result<Option<services::kafka::KafkaConfig>> {
        let Some(bootstrap) = &self.bootstrap else { return Ok(None) };
        let c = services::kafka::KafkaConfig {
            partitions: self.kafka_partitions,
            replication: self.kafka_replication,
            compression: self.kafka_compression.clone(),
            linger_ms: self.kafka_linger_ms,
            fetch_wait_ms: self.kafka_fetch_wait_ms,
            batch_bytes: self.kafka_batch_bytes,
            shard: (self.shard_index()?, self.shard_count),
            ..services::kafka::KafkaConfig::new(bootstrap.clone(), self.node_id.clone())
        };
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(c))
    }

    fn shard_index(&self) -> Result<i32> {
        let raw = if self.shard_index == "auto" {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_default();
            let host = host.trim().to_owned();
            host.rsplit_once('-').map(|(_, n)| n.to_owned()).with_context(|| {
                format!("--shard-index auto needs a host name ending in -<ordinal>, got {host:?}")
            })?
        } else {
            self.shard_index.clone()
        };
        raw.parse().with_context(|| format!("shard index {raw:?} is not a number"))
    }

    fn required(&self) -> Result<services::kafka::KafkaConfig> {
        self.config()?
            .context("Kafka is not configured: pass --kafka-bootstrap or set KAFKA_BOOTSTRAP_SERVERS")
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node: every service, the saga manager and its timer on the local log, in one
    /// process (embedded mode). Stops gracefully on SIGTERM or Ctrl-C (finishes in-flight work,
    /// saves checkpoints). Takes the store's lock: one node per data directory.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
        /// Address of the REST API.
        #[arg(long, env = "CAUSEWAY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Bearer token of the admin routes (replay, re-drive), at least 16 characters. Without
        /// one the admin routes are disabled. Prefer the environment variable to the flag.
        #[arg(long, env = "CAUSEWAY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// What this node runs: all (everything in one process, the default) or one role of a
        /// distributed deployment (order, inventory, payment, shipping, saga, query), which needs
        /// Kafka.
        #[arg(long, env = "CAUSEWAY_ROLE", value_enum, default_value = "all")]
        role: services::runtime::Role,
        /// Query role: how long a forwarded command waits for its owner's answer before it is
        /// answered 202 Accepted, in ms.
        #[arg(long, env = "CAUSEWAY_FORWARD_WAIT_MS", default_value_t = 5_000)]
        forward_wait_ms: u64,
        #[command(flatten)]
        saga: SagaArgs,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Rebuild a lost log from Kafka, byte for byte, and verify it (counts and digest). Refuses a
    /// data directory that holds a store unless --force (which moves the old one aside). NOT safe
    /// while a node runs on the directory. The restored node re-runs its consumers from the start
    /// (idempotent) and rebuilds its read models when it next starts.
    Restore {
        /// Required: restore from the Kafka topics.
        #[arg(long, required = true)]
        from_kafka: bool,
        /// The data directory to restore into.
        #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
        data_dir: PathBuf,
        /// Move an existing store aside instead of refusing.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// Convert a store written by an older build (store format 1 or 2) to this build's format.
    /// Every record keeps its exact bytes (checked by digest), the indexes are written anew, and
    /// checkpoints, snapshots and read models are copied. The old store is kept next to the new
    /// one (`<data-dir>.format-<n>-<time>`). NOT safe while a node runs on the directory (it
    /// takes the lock and refuses a locked store).
    Migrate {
        /// The data directory to convert.
        #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
        data_dir: PathBuf,
    },
    /// Drive N orders through an in-process node and print sagas/s, completion latency and
    /// memory. NOT safe while a node runs on the same data directory (it takes the lock; by
    /// default it uses a fresh temporary directory).
    Load {
        /// Orders to place.
        #[arg(long, default_value_t = 10_000)]
        orders: u64,
        /// Orders in flight at most.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
        /// Distinct SKUs.
        #[arg(long, default_value_t = 100)]
        skus: u64,
        /// Fraction of orders to an undeliverable address (compensated).
        #[arg(long, default_value_t = 0.0)]
        undeliverable: f64,
        /// Also report memory each time this many more orders have ended.
        #[arg(long, default_value_t = 10_000)]
        memory_checkpoint: u64,
        /// sled cache size in MiB (in-process runs).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        cache_mib: u64,
        /// Use this data directory instead of a temporary one.
        #[arg(long, conflicts_with = "target")]
        data_dir: Option<PathBuf>,
        /// Drive a running node through its REST API (like http://127.0.0.1:8080) instead of an
        /// in-process one; completion is timed from the node's live event feed.
        #[arg(long, env = "CAUSEWAY_TARGET")]
        target: Option<String>,
        /// With --target: place orders at this many per second (open loop), at most
        /// --concurrency in flight.
        #[arg(long, requires = "target")]
        rate: Option<f64>,
        /// With --rate: offer orders for this many seconds (rate × seconds orders), instead of
        /// --orders.
        #[arg(long, requires = "rate")]
        duration: Option<f64>,
        /// With --target: send an order refused with 429/503 again this many times, each after
        /// the answer's Retry-After (same Idempotency-Key).
        #[arg(long, default_value_t = 0, requires = "target")]
        retries: u32,
        /// With --target: once every order is answered, wait this long for accepted sagas to end.
        #[arg(long, default_value_t = 120.0)]
        drain_secs: f64,
        /// Durability of appends.
        #[arg(long, value_enum, default_value = "fsync")]
        durability: DurabilityArg,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Check a node's log (gapless positions, checksums, indexes) and the system invariants
    /// (every saga ended; stock conserved; compensated orders hold no stock or money; completed
    /// orders have one payment and one shipment). Exits 1 with a report on any problem. NOT safe
    /// while the node runs: it needs the store's lock and refuses a locked store.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Read events: a stream, a category, or the global log from a position or a time; text or
    /// JSON lines. NOT safe while the node runs: it needs the store's lock (tailing a live node
    /// goes through its API).
    Events {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this stream (e.g. order-<id>).
        #[arg(long, conflicts_with_all = ["category"])]
        stream: Option<String>,
        /// Only this category (e.g. saga).
        #[arg(long)]
        category: Option<String>,
        /// From this global position (inclusive).
        #[arg(long, default_value_t = 1, conflicts_with = "from_time")]
        from_position: u64,
        /// From this time (RFC 3339).
        #[arg(long)]
        from_time: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a read model from the log, replay it from a timestamp, or build its state as of a
    /// time into a separate model. NOT safe while the node runs: it needs the store's lock and
    /// refuses a locked store (the node itself keeps serving the old model during a rebuild).
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// The read model: order-summaries, stock-levels, payment-ledger, saga-timelines,
        /// dead-letters, or all.
        #[arg(long, required_unless_present = "republish", conflicts_with = "republish")]
        projection: Option<String>,
        /// Restore the state at this time (RFC 3339) and apply everything after it.
        #[arg(long, conflicts_with = "as_of")]
        from: Option<String>,
        /// Build the state as of this time (RFC 3339) into `<name>@<unix ns>`.
        #[arg(long, conflicts_with = "backup")]
        as_of: Option<String>,
        /// Back up the current model at its checkpoint (a later replay from a time after it
        /// starts there instead of from the start of the log).
        #[arg(long, conflicts_with = "from")]
        backup: bool,
        /// Instead of a read model: produce the events from --from on to Kafka again (up to what
        /// the relay delivered), for a downstream consumer that lost data.
        #[arg(long, requires = "from", conflicts_with_all = ["as_of", "backup"])]
        republish: bool,
        #[command(flatten)]
        kafka: KafkaArgs,
    },
    /// List dead letters (messages a consumer could not process, with the reason and the
    /// original), or re-drive one. NOT safe while the node runs: it needs the store's lock.
    DeadLetters {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this consumer's (order-service, inventory-service, payment-service,
        /// shipping-service, saga-manager).
        #[arg(long)]
        consumer: Option<String>,
        /// Re-drive the dead letter of this original event id (needs --consumer).
        #[arg(long, requires = "consumer")]
        redrive: Option<uuid::Uuid>,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Benchmarks (safe while a node runs: they use their own temporary stores).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Event store: durable and periodic appends, replay, stream reads, scale.
    Store(bench::StoreBenchArgs),
    /// Read models: full rebuild rate of each projection over a log filled by real sagas.
    Projections(bench::ProjectionBenchArgs),
    /// REST query latency (p50/p99 per route) over real HTTP, idle and while orders are placed.
    Api(bench::ApiBenchArgs),
    /// Kafka relay throughput against raw rdkafka producing the same records (needs a broker).
    Kafka(bench::KafkaBenchArgs),
    /// Internal: measures open time and memory of a big store in a fresh process.
    #[command(hide = true)]
    Probe(bench::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,causeway=info,services=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Serve { store, gateway, listen, admin_token, kafka, role, forward_wait_ms, saga, limits } => {
            let limits = limits.limits()?;
            let kafka = kafka.config()?;
            if role != services::runtime::Role::All && kafka.is_none() {
                bail!(
                    "the {} role talks to the other roles through Kafka: pass --kafka-bootstrap or set \
                     KAFKA_BOOTSTRAP_SERVERS (or run --role all)",
                    role.name()
                );
            }
            let config = RuntimeConfig {
                kafka,
                policy: saga.policy()?,
                admission: limits.admission,
                ..RuntimeConfig::default()
            };
            let http = HttpOptions {
                listen,
                admin_token,
                forward_wait: Duration::from_millis(forward_wait_ms),
                limits,
            };
            serve(store, gateway, http, config, role).await
        }
        Cmd::Restore { from_kafka: _, data_dir, force, kafka } => {
            let config = kafka.required()?;
            let report = tokio::task::spawn_blocking(move || {
                services::kafka::restore::restore(&config, &data_dir, force)
            })
            .await??;
            if let Some(aside) = &report.moved_aside {
                println!("the old store was moved to {}", aside.display());
            }
            println!(
                "restored {} events in {} streams from {} records ({} repeats dropped); digest {}",
                report.events, report.streams, report.records, report.duplicates, report.digest
            );
            println!("OK");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Migrate { data_dir } => {
            tokio::task::spawn_blocking(move || migrate(&data_dir)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Load {
            orders,
            concurrency,
            skus,
            undeliverable,
            memory_checkpoint,
            cache_mib,
            data_dir,
            target,
            rate,
            duration,
            retries,
            drain_secs,
            durability,
            gateway,
        } => {
            if duration.is_some_and(|d| !(d.is_finite() && d > 0.0 && d <= 86_400.0)) {
                bail!("--duration must be between 0 and 86400 seconds");
            }
            if !(drain_secs.is_finite() && (0.0..=86_400.0).contains(&drain_secs)) {
                bail!("--drain-secs must be between 0 and 86400");
            }
            let orders = match (duration, rate) {
                (Some(d), Some(r)) if r.is_finite() && r > 0.0 => ((d * r).ceil() as u64).max(1),
                _ => orders,
            };
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)) {
                bail!("--rate must be a number of orders per second above 0 and at most 1000000");
            }
            if orders > 1_000_000_000 {
                bail!("--orders must be at most 1000000000");
            }
            if orders == 0 || concurrency == 0 || skus == 0 {
                bail!("--orders, --concurrency and --skus must be at least 1");
            }
            if !(0.0..=1.0).contains(&undeliverable) {
                bail!("--undeliverable must be between 0 and 1");
            }
            let spec = load::LoadSpec {
                orders,
                concurrency,
                skus,
                undeliverable,
                memory_checkpoint,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                rate,
                retries,
                drain: Duration::from_secs_f64(drain_secs),
            };
            if let Some(target) = target {
                if !target.starts_with("http://") {
                    bail!("--target must be an http:// URL, like http://127.0.0.1:8080 (got {target:?})");
                }
                let report = load::run_remote(&target, &spec).await?;
                load::print(&report);
                return Ok(if report.errors.0 == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) });
            }
            let tmp = tempfile::tempdir()?;
            let store_args = StoreArgs {
                data_dir: data_dir.unwrap_or_else(|| tmp.path().to_path_buf()),
                durability,
                flush_ms: 5,
                cache_mib,
                max_pending_appends: event_store::DEFAULT_MAX_PENDING_APPENDS,
            };
            let store = store_args.open()?;
            let node = Runtime::start(store, gateway.build()?, RuntimeConfig::default())?;
            let report = load::run(&node, &spec).await?;
            node.shutdown().await.map_err(anyhow::Error::msg)?;
            load::print(&report);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { store } => verify(store),
        Cmd::Events { store, stream, category, from_position, from_time, limit, json } => {
            events(store, stream, category, from_position, from_time, limit, json)
        }
        Cmd::Replay { store, projection, from, as_of, backup, republish, kafka } => match projection {
            Some(projection) if !republish => replay(store, projection, from, as_of, backup).await,
            _ => {
                let config = kafka.required()?;
                let t = parse_time(from.as_deref().unwrap_or_default())?;
                if !store.data_dir.join("db").exists() {
                    bail!("no store at {} (expected a sled database there)", store.data_dir.display());
                }
                let store = store.open()?;
                let from_position = store.seek_time(t)?;
                let sent = services::kafka::relay::republish(&store, &config, from_position).await?;
                println!("re-published {sent} events from position {from_position} ({t})");
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::DeadLetters { store, consumer, redrive, json, gateway } => {
            dead_letters(store, consumer, redrive, json, gateway).await
        }
        Cmd::Bench(BenchCmd::Store(args)) => bench::store(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Projections(args)) => bench::projections(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Api(args)) => bench::api(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Kafka(args)) => bench::kafka(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Probe(args)) => bench::probe(args).await.map(|_| ExitCode::SUCCESS),
    }
}

/// `causeway migrate`: converts the store in `data_dir` next to it, checks the copy, then swaps
/// the directories (the old store stays, renamed).
fn migrate(data_dir: &std::path::Path) -> Result<()> {
    use event_store::raw;
    if !data_dir.join("db").exists() {
        bail!("no store at {} (expected a sled database there)", data_dir.display());
    }
    let old = SledStorage::open(&SledConfig::new(data_dir))
        .with_context(|| format!("opening the store at {}", data_dir.display()))?;
    let from = match raw::store_format(&old)? {
        None => bail!("{} holds no store", data_dir.display()),
        Some(f) if f == raw::STORE_FORMAT => {
            println!("{} is already of store format {f}: nothing to do", data_dir.display());
            return Ok(());
        }
        Some(f) => f,
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let sibling = |suffix: String| {
        let mut p = data_dir.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let target = sibling(format!(".migrating-{stamp}"));
    let kept = sibling(format!(".format-{from}-{stamp}"));
    if target.exists() || kept.exists() {
        bail!("{} or {} exists already; try again in a second", target.display(), kept.display());
    }
    let outcome = (|| -> Result<raw::Migration> {
        let new = SledStorage::open(&SledConfig::new(&target))?;
        let report = raw::migrate(&old, &new)?;
        let store = EventStore::open(new, StoreConfig::default())?;
        let check = store.verify()?;
        if !check.is_ok() || check.events != report.events {
            bail!("the converted store does not verify: {}", check.problems.join("; "));
        }
        Ok(report)
    })();
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&target);
            return Err(e.context(format!("{} was left as it was", data_dir.display())));
        }
    };
    drop(old);
    std::fs::rename(data_dir, &kept)
        .with_context(|| format!("moving the old store to {}", kept.display()))?;
    std::fs::rename(&target, data_dir)
        .with_context(|| format!("moving the converted store from {}", target.display()))?;
    println!(
        "migrated {} events and {} other entries from store format {} to {}; log digest {}",
        report.events,
        report.other_entries,
        report.from_format,
        raw::STORE_FORMAT,
        report.digest
    );
    println!("the old store was kept at {}", kept.display());
    println!("OK");
    Ok(())
}

/// How `serve` serves HTTP.
#[derive(Debug)]
struct HttpOptions {
    listen: std::net::SocketAddr,
    admin_token: Option<String>,
    forward_wait: Duration,
    limits: Limits,
}

async fn serve(
    store: StoreArgs,
    gateway: GatewayArgs,
    http: HttpOptions,
    config: RuntimeConfig,
    role: services::runtime::Role,
) -> Result<ExitCode> {
    let HttpOptions { listen, admin_token, forward_wait, limits } = http;
    // A forwarded command's answer must be awaited inside the request's time, or the client
    // gets "outcome unknown" for commands that were carried out.
    if limits.http.request_timeout <= forward_wait + Duration::from_secs(1) {
        bail!(
            "--request-timeout-ms ({} ms) must be more than --forward-wait-ms + 1000 ({} ms)",
            limits.http.request_timeout.as_millis(),
            forward_wait.as_millis() + 1000
        );
    }
    use services::api::CommandRoute;
    use services::runtime::Role;
    use std::future::IntoFuture;
    if let Some(t) = &admin_token {
        if t.chars().count() < services::api::MIN_ADMIN_TOKEN
            || t.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "the admin token must be at least {} characters with no spaces",
                services::api::MIN_ADMIN_TOKEN
            );
        }
    }
    let gateway = gateway.build()?;
    let store = store.open()?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let mirrored = config.kafka.is_some();
    let source = config.kafka.as_ref().map(|k| k.source()).unwrap_or_default();
    let node = Runtime::start_role(store, gateway, config, role)?;
    let (stop_http, mut http_stopped) = tokio::sync::watch::channel(false);
    // Latencies as histograms with buckets (the dashboard's quantiles come from them); other
    // histograms (sizes) stay summaries.
    const SECONDS: [f64; 15] =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &SECONDS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let commands = match (role, node.answers()) {
        (Role::All, _) => CommandRoute::Local,
        (Role::Query, Some(answers)) => {
            CommandRoute::Forward { answers: answers.clone(), source, wait: forward_wait }
        }
        (other, _) => CommandRoute::Refuse { role: other.name() },
    };
    let state = services::api::ApiState {
        store: node.store().clone(),
        models: node.models().clone(),
        ready: node.readiness().clone(),
        metrics: Some(metrics),
        stopping: http_stopped.clone(),
        admin: admin_token.map(|token| services::api::AdminApi { token, redrive: node.redriver() }),
        commands,
        admission: node.admission().cloned(),
        feeds: services::api::LiveFeeds::new(limits.feeds),
        limits: limits.http,
    };
    let listener = services::api::BoundedListener::new(listener, limits.connections, limits.idle);
    let server = tokio::spawn(
        axum::serve(listener, services::api::app(state))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    tracing::info!(head = node.store().head(), %listen, role = role.name(), "causeway node running");
    if mirrored {
        tracing::info!("mirroring the log to Kafka");
    }
    let stop = async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
    };
    let outcome = node.run_until(stop).await;
    let _ = stop_http.send(true);
    server.await.context("the HTTP server task failed")?.context("the HTTP server failed")?;
    outcome.map_err(anyhow::Error::msg)?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn verify(store: StoreArgs) -> Result<ExitCode> {
    if !store.data_dir.join("db").exists() {
        bail!("no store at {} (expected a sled database there)", store.data_dir.display());
    }
    let store = store.open()?;
    let log = store.verify()?;
    println!("log: {} events, {} streams", log.events, log.streams);
    // A node of a distributed deployment checks what its own log can answer for.
    let role = services::kafka::shard::recorded(&store)?
        .and_then(|l| services::runtime::Role::from_name(&l.role))
        .unwrap_or(services::runtime::Role::All);
    let scope = invariants::Scope::of_role(role);
    println!("role: {} ({scope:?})", role.name());
    let inv = invariants::check_scope(&store, scope)?;
    println!(
        "sagas: {} completed, {} compensated, {} failed, {} unfinished; {} SKUs",
        inv.completed,
        inv.compensated,
        inv.failed,
        inv.unfinished.len(),
        inv.skus
    );
    let models = projections::ReadModels::new(store.clone());
    let mut read_model_problems = Vec::new();
    macro_rules! check {
        ($p:expr) => {
            read_model_problems.extend(projections::verify(&models, &$p)?);
        };
    }
    check!(OrderSummaries);
    check!(StockLevels);
    check!(PaymentLedger);
    check!(SagaTimelines);
    check!(DeadLetters);
    println!("read models: {} checked against the log", PROJECTIONS.len());
    let mut ok = true;
    for p in log.problems.iter().chain(inv.problems.iter()).chain(read_model_problems.iter()) {
        println!("problem: {p}");
        ok = false;
    }
    for o in &inv.unfinished {
        println!("unfinished saga: {o}");
        ok = false;
    }
    if ok {
        println!("OK");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

async fn dead_letters(
    store: StoreArgs,
    consumer: Option<String>,
    redrive: Option<uuid::Uuid>,
    json: bool,
    gateway: GatewayArgs,
) -> Result<ExitCode> {
    use services::gateway::Breaker;
    use services::handlers::{Handlers, SimulatedCarrier};
    use services::messages::ConsumerName;
    use services::runtime::Role;
    use services::saga_runner::SagaRunner;
    use std::sync::Arc;

    let consumer = consumer.as_deref().map(admin::consumer_name).transpose()?;
    if !store.data_dir.join("db").exists() {
        bail!("no store at {} (expected a sled database there)", store.data_dir.display());
    }
    let config = RuntimeConfig::default();
    let gateway = gateway.build()?;
    let store = store.open()?;
    if let (Some(id), Some(name)) = (redrive, consumer) {
        // A node of a distributed deployment re-drives only the consumers it runs.
        let layout = services::kafka::shard::recorded(&store)?;
        let sharded_inventory = layout.as_ref().is_some_and(|l| l.role == "inventory" && l.count > 1);
        let role = layout.and_then(|l| Role::from_name(&l.role)).unwrap_or(Role::All);
        if !role.consumers().contains(&name) {
            let e = admin::not_owner(&store, role, name, id);
            println!("{e}");
            return Ok(ExitCode::from(1));
        }
        // The same handlers as the running pod, the sharded-inventory refusal included.
        let handlers = Arc::new(
            Handlers::new(store.clone(), Breaker::new(gateway, config.breaker), SimulatedCarrier::default())
                .with_sharded_inventory(sharded_inventory),
        );
        let saga = if role.runs_saga() {
            let saga = SagaRunner::new(store.clone(), config.policy);
            saga.recover()?;
            Some(saga)
        } else {
            None
        };
        return match admin::redrive(&store, &handlers, saga.as_ref(), name, id).await {
            Ok(()) => {
                println!("re-driven: {id}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ (admin::AdminError::StillFailing(_) | admin::AdminError::NoSuchLetter { .. })) => {
                println!("{e}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        };
    }
    let names: Vec<ConsumerName> = match consumer {
        Some(c) => vec![c],
        None => ConsumerName::ALL.to_vec(),
    };
    let mut out = std::io::stdout().lock();
    for name in names {
        for l in services::consumer::list_dead_letters(&store, name.as_str())? {
            let line = if json {
                serde_json::to_string(&l)?
            } else {
                format!(
                    "{} {} position {} {} {} ({}): {}",
                    name,
                    if l.resolved { "resolved" } else { "OPEN" },
                    l.letter.position,
                    l.letter.event_type,
                    l.letter.event_id,
                    l.letter.stream_id,
                    l.letter.reason
                )
            };
            if !write_line(&mut out, &line)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a line; `Ok(false)` when the reader went away (a closed pipe ends output quietly).
fn write_line(out: &mut impl std::io::Write, line: &str) -> Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{s:?} is not an RFC 3339 time (like 2026-11-24T21:30:00Z)"))
}

async fn replay(
    store: StoreArgs,
    projection: String,
    from: Option<String>,
    as_of: Option<String>,
    backup: bool,
) -> Result<ExitCode> {
    admin::projection_names(&projection)?;
    let mode =
        match (from.as_deref().map(parse_time).transpose()?, as_of.as_deref().map(parse_time).transpose()?) {
            (Some(t), _) => ReplayMode::From(t),
            (_, Some(t)) => ReplayMode::AsOf(t),
            _ if backup => ReplayMode::Backup,
            _ => ReplayMode::Rebuild,
        };
    if !store.data_dir.join("db").exists() {
        bail!("no store at {} (expected a sled database there)", store.data_dir.display());
    }
    let store = store.open()?;
    let models = projections::ReadModels::new(store);
    for o in admin::replay(&models, &projection, mode).await? {
        let secs = o.millis as f64 / 1000.0;
        match (mode, o.generation) {
            (ReplayMode::Backup, _) => {
                println!("{}: backed up at position {} in {secs:.2} s", o.read_model, o.checkpoint)
            }
            (ReplayMode::AsOf(t), _) => println!("{}: built as of {t} in {secs:.2} s", o.read_model),
            (_, Some(gen)) => {
                let start = match o.from_backup {
                    Some(cp) => format!("from the backup at position {cp}"),
                    None => "from the start of the log".to_owned(),
                };
                println!(
                    "{}: generation {gen} built {start} up to position {} in {secs:.2} s",
                    o.read_model, o.checkpoint
                );
            }
            (_, None) => println!("{}: done in {secs:.2} s", o.read_model),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn events(
    store: StoreArgs,
    stream: Option<String>,
    category: Option<String>,
    from_position: u64,
    from_time: Option<String>,
    limit: usize,
    json: bool,
) -> Result<ExitCode> {
    let from_time = from_time.as_deref().map(parse_time).transpose()?;
    let stream = stream.map(event_store::StreamId::new).transpose()?;
    if !store.data_dir.join("db").exists() {
        bail!("no store at {} (expected a sled database there)", store.data_dir.display());
    }
    let store = store.open()?;
    let start = match from_time {
        Some(t) => store.seek_time(t)?,
        None => from_position.max(1),
    };
    let iter: Box<dyn Iterator<Item = event_store::Result<event_store::RecordedEvent>>> =
        match (&stream, &category) {
            (Some(s), _) => Box::new(
                store
                    .read_stream(s, 1, event_store::Direction::Forward)
                    .filter(move |e| e.as_ref().map_or(true, |e| e.position >= start)),
            ),
            (None, Some(c)) => Box::new(store.read_category(c, start)),
            (None, None) => Box::new(store.read_all(start)),
        };
    let mut out = std::io::stdout().lock();
    for e in iter.take(limit) {
        let e = e?;
        let line = if json {
            let payload = serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&e.payload).into_owned())
            });
            serde_json::json!({
                "position": e.position,
                "stream_id": e.stream_id,
                "version": e.version,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "schema_version": e.schema_version,
                "recorded_at": e.recorded_at().format(&time::format_description::well_known::Rfc3339)?,
                "correlation_id": e.correlation_id,
                "causation_id": e.causation_id,
                "metadata": e.metadata,
                "content_type": e.content_type,
                "payload": payload,
            })
            .to_string()
        } else {
            let payload = String::from_utf8_lossy(&e.payload);
            let short: String = payload.chars().take(120).collect();
            format!(
                "{:>8}  {}  {}@{}  {}  {}",
                e.position,
                e.recorded_at().format(&time::format_description::well_known::Rfc3339)?,
                e.stream_id,
                e.version,
                e.event_type,
                short
            )
        };
        if !write_line(&mut out, &line)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
