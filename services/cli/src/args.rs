//! The flags several commands share (the store, the simulated gateway, the saga's retries, the
//! node's bounds, Kafka) and the parsing and output helpers of every command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use event_store::{Durability, EventStore, SledConfig, SledStorage, StoreConfig};
use services::app::gateway::{SimulatedGateway, SimulatedGatewayConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    /// Power-loss safe: fdatasync before acknowledging (default).
    Fsync,
    /// Process-crash safe: flush every --flush-ms, acknowledge after the flush.
    Periodic,
}

/// Where the node keeps its log and how it writes it.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The node's data directory (a sled database).
    #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
    pub data_dir: PathBuf,
    /// Durability of appends.
    #[arg(long, env = "CAUSEWAY_DURABILITY", value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    /// Flush interval in periodic mode.
    #[arg(long, env = "CAUSEWAY_FLUSH_MS", default_value_t = 5)]
    pub flush_ms: u64,
    /// sled cache size in MiB.
    #[arg(long, env = "CAUSEWAY_CACHE_MIB", default_value_t = 256)]
    pub cache_mib: u64,
    /// Appends queued for the disk at most; past it appends wait (REST commands are refused
    /// with 429 once half of it is used).
    #[arg(long, env = "CAUSEWAY_MAX_PENDING_APPENDS", default_value_t = event_store::DEFAULT_MAX_PENDING_APPENDS)]
    pub max_pending_appends: usize,
    #[command(flatten)]
    pub group_commit: GroupCommitArgs,
}

/// The store's group-commit wait (`StoreConfig::group_commit_wait`), for the node and the
/// benchmarks alike.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct GroupCommitArgs {
    /// Fsync mode: how long a sync waits (µs, at most 100,000) for the appenders the previous one
    /// answered to append again, so one sync covers them all; 0 syncs at once.
    #[arg(
        long,
        env = "CAUSEWAY_GROUP_COMMIT_WAIT_US",
        default_value_t = event_store::DEFAULT_GROUP_COMMIT_WAIT.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=100_000)
    )]
    pub group_commit_wait_us: u64,
}

impl Default for GroupCommitArgs {
    fn default() -> Self {
        Self { group_commit_wait_us: event_store::DEFAULT_GROUP_COMMIT_WAIT.as_micros() as u64 }
    }
}

impl GroupCommitArgs {
    /// The wait.
    pub fn wait(&self) -> Duration {
        Duration::from_micros(self.group_commit_wait_us)
    }
}

impl StoreArgs {
    pub fn validate(&self) -> Result<()> {
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

    /// Opens the store of an existing node: refuses a directory that holds none (instead of
    /// creating an empty store there).
    pub fn open_existing(&self) -> Result<EventStore<SledStorage>> {
        ensure_store(&self.data_dir)?;
        self.open()
    }

    /// Opens (or creates) the store.
    pub fn open(&self) -> Result<EventStore<SledStorage>> {
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
            group_commit_wait: self.group_commit.wait(),
            ..StoreConfig::default()
        };
        Ok(EventStore::open(storage, config)?)
    }
}

/// The simulated payment gateway's behaviour.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Latency of each gateway call, in ms.
    #[arg(long, env = "CAUSEWAY_GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub gateway_latency_ms: u64,
    /// Fraction of gateway calls that fail transiently (0..1).
    #[arg(long, env = "CAUSEWAY_GATEWAY_FAILURE_RATE", default_value_t = 0.0)]
    pub gateway_failure_rate: f64,
    /// Fraction of payments declined (0..1).
    #[arg(long, env = "CAUSEWAY_GATEWAY_DECLINE_RATE", default_value_t = 0.0)]
    pub gateway_decline_rate: f64,
    /// Fraud check: the largest order amount (minor units) the payment service lets through;
    /// a larger one is refused before payment and the order cancelled. Unset: every amount passes.
    #[arg(long, env = "CAUSEWAY_FRAUD_LIMIT_MINOR")]
    pub fraud_limit_minor: Option<u64>,
}

impl GatewayArgs {
    pub fn build(&self) -> Result<SimulatedGateway> {
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
pub struct SagaArgs {
    /// How long a step may wait for its reply before it is sent again, in ms.
    #[arg(long, env = "CAUSEWAY_STEP_TIMEOUT_MS", default_value_t = 5_000)]
    pub step_timeout_ms: u64,
    /// Sends of a step (the first one included) before the saga gives up on it.
    #[arg(long, env = "CAUSEWAY_STEP_ATTEMPTS", default_value_t = 4)]
    pub step_attempts: u32,
    /// What a saga does when a step runs out of attempts: quarantine (park it for an operator,
    /// the default) or compensate (cancel the order for a timeout; a compensation that runs out
    /// fails the saga).
    #[arg(long, env = "CAUSEWAY_ON_STEP_EXHAUSTED", default_value = "quarantine", value_parser = parse_exhausted)]
    pub on_step_exhausted: aggregates::saga::OnExhausted,
}

fn parse_exhausted(s: &str) -> Result<aggregates::saga::OnExhausted, String> {
    match s {
        "quarantine" => Ok(aggregates::saga::OnExhausted::Quarantine),
        "compensate" => Ok(aggregates::saga::OnExhausted::Compensate),
        other => Err(format!("{other:?}: quarantine or compensate")),
    }
}

impl SagaArgs {
    pub fn policy(&self) -> Result<aggregates::saga::RetryPolicy> {
        if !(100..=3_600_000).contains(&self.step_timeout_ms) {
            bail!("--step-timeout-ms must be between 100 and 3600000");
        }
        if !(1..=100).contains(&self.step_attempts) {
            bail!("--step-attempts must be between 1 and 100");
        }
        Ok(aggregates::saga::RetryPolicy {
            step_timeout_ms: self.step_timeout_ms,
            max_attempts: self.step_attempts,
            on_exhausted: self.on_step_exhausted,
            ..aggregates::saga::RetryPolicy::default()
        })
    }
}

/// The node's bounds under overload (ARCHITECTURE.md, "Overload").
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Sagas in flight the node admits at start (the limit then adapts to saga latency).
    #[arg(long, env = "CAUSEWAY_ADMISSION_INITIAL", default_value_t = 256)]
    pub admission_initial: usize,
    /// The adaptive limit never goes below this.
    #[arg(long, env = "CAUSEWAY_ADMISSION_MIN", default_value_t = 16)]
    pub admission_min: usize,
    /// Nor above this.
    #[arg(long, env = "CAUSEWAY_ADMISSION_MAX", default_value_t = 20_000)]
    pub admission_max: usize,
    /// Saga latency (order placed to saga ended) the limit aims under, in ms.
    #[arg(long, env = "CAUSEWAY_ADMISSION_TARGET_MS", default_value_t = 1_000)]
    pub admission_target_ms: u64,
    /// Live feeds (`/api/events/live`) served at once.
    #[arg(long, env = "CAUSEWAY_MAX_LIVE_FEEDS", default_value_t = services::http::DEFAULT_MAX_LIVE_FEEDS)]
    pub max_live_feeds: usize,
    /// `/api` requests served at once; past it, 429.
    #[arg(long, env = "CAUSEWAY_MAX_IN_FLIGHT_REQUESTS", default_value_t = 1024)]
    pub max_in_flight_requests: usize,
    /// An `/api` request not answered in this time gets a 504 (outcome unknown), in ms.
    #[arg(long, env = "CAUSEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// HTTP connections open at once; past it, new connections wait in the listen backlog.
    #[arg(long, env = "CAUSEWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// A connection with no traffic this long is closed, in ms.
    #[arg(long, env = "CAUSEWAY_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
}

/// What [`LimitArgs`] set.
#[derive(Debug, Clone)]
pub struct Limits {
    pub admission: services::app::admission::AdmissionConfig,
    pub feeds: usize,
    pub http: services::http::HttpLimits,
    pub connections: usize,
    pub idle: Duration,
}

impl LimitArgs {
    pub fn limits(&self) -> Result<Limits> {
        let admission = services::app::admission::AdmissionConfig {
            initial: self.admission_initial,
            min: self.admission_min,
            max: self.admission_max,
            target: Duration::from_millis(self.admission_target_ms),
            ..services::app::admission::AdmissionConfig::default()
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
            http: services::http::HttpLimits {
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
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...). Serve mirrors the log there when set.
    #[arg(long = "kafka-bootstrap", env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: Option<String>,
    /// This node's name: the source of its records in Kafka (and what a restore takes back).
    #[arg(long, env = "CAUSEWAY_NODE_ID", default_value = "causeway-0")]
    pub node_id: String,
    /// Partitions of the topics the relay creates.
    #[arg(long, env = "CAUSEWAY_KAFKA_PARTITIONS", default_value_t = 4)]
    pub kafka_partitions: i32,
    /// Replication factor of the topics the relay creates.
    #[arg(long, env = "CAUSEWAY_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
    /// Producer compression: none, gzip, snappy, lz4, zstd.
    #[arg(long, env = "CAUSEWAY_KAFKA_COMPRESSION", default_value = "lz4")]
    pub kafka_compression: String,
    /// Producer linger (batching), in ms.
    #[arg(long, env = "CAUSEWAY_KAFKA_LINGER_MS", default_value_t = 5)]
    pub kafka_linger_ms: u32,
    /// Consumer fetch wait (how long an idle fetch waits at the broker), in ms.
    #[arg(long, env = "CAUSEWAY_KAFKA_FETCH_WAIT_MS", default_value_t = 20)]
    pub kafka_fetch_wait_ms: u32,
    /// Producer batch size in bytes.
    #[arg(long, env = "CAUSEWAY_KAFKA_BATCH_BYTES", default_value_t = 262_144)]
    pub kafka_batch_bytes: u32,
    /// Pods of this role: each takes the input partitions p with p % count == index.
    #[arg(long, env = "CAUSEWAY_SHARD_COUNT", default_value_t = 1)]
    pub shard_count: i32,
    /// This pod's index among them, or `auto`: the ordinal at the end of the host name (a
    /// StatefulSet pod `causeway-order-2` is 2).
    #[arg(long, env = "CAUSEWAY_SHARD_INDEX", default_value = "0")]
    pub shard_index: String,
}

impl KafkaArgs {
    /// The Kafka settings, or `None` when no bootstrap servers are configured.
    pub fn config(&self) -> Result<Option<services::kafka::KafkaConfig>> {
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

    pub fn shard_index(&self) -> Result<i32> {
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

    pub fn required(&self) -> Result<services::kafka::KafkaConfig> {
        self.config()?
            .context("Kafka is not configured: pass --kafka-bootstrap or set KAFKA_BOOTSTRAP_SERVERS")
    }
}

/// Fails unless `data_dir` holds a store (a sled database: its `db` file).
pub fn ensure_store(data_dir: &std::path::Path) -> Result<()> {
    if !SledStorage::exists_at(data_dir) {
        bail!("no store at {} (expected a sled database there)", data_dir.display());
    }
    Ok(())
}

/// Parses `--role`.
pub fn parse_role(s: &str) -> Result<services::node::Role, String> {
    s.parse()
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{s:?} is not an RFC 3339 time (like 2026-11-24T21:30:00Z)"))
}

/// Writes a line; `Ok(false)` when the reader went away (a closed pipe ends output quietly).
pub fn write_line(out: &mut impl std::io::Write, line: &str) -> Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}
