//! `causeway load`: drives orders through an in-process node, or a running one over HTTP, and
//! reports sagas/s, completion latency and memory (the generator is [`crate::load`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use services::node::{Runtime, RuntimeConfig};

use crate::args::{DurabilityArg, GatewayArgs, StoreArgs};
use crate::load;

/// The flags of `causeway load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Orders to place.
    #[arg(long, default_value_t = 10_000)]
    pub orders: u64,
    /// Orders in flight at most.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Distinct SKUs.
    #[arg(long, default_value_t = 100)]
    pub skus: u64,
    /// Fraction of orders to an undeliverable address (compensated).
    #[arg(long, default_value_t = 0.0)]
    pub undeliverable: f64,
    /// Also report memory each time this many more orders have ended.
    #[arg(long, default_value_t = 10_000)]
    pub memory_checkpoint: u64,
    /// sled cache size in MiB (in-process runs).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_mib: u64,
    /// Use this data directory instead of a temporary one.
    #[arg(long, conflicts_with = "target")]
    pub data_dir: Option<PathBuf>,
    /// Drive a running node through its REST API (like http://127.0.0.1:8080) instead of an
    /// in-process one; completion is timed from the node's live event feed.
    #[arg(long, env = "CAUSEWAY_TARGET")]
    pub target: Option<String>,
    /// With --target: place orders at this many per second (open loop), at most
    /// --concurrency in flight.
    #[arg(long, requires = "target")]
    pub rate: Option<f64>,
    /// With --rate: offer orders for this many seconds (rate × seconds orders), instead of
    /// --orders.
    #[arg(long, requires = "rate")]
    pub duration: Option<f64>,
    /// With --target: send an order refused with 429/503 again this many times, each after
    /// the answer's Retry-After (same Idempotency-Key). An order whose outcome is unknown (a
    /// 504, or no answer in 65 s) is sent again at least 3 times, whatever this says.
    #[arg(long, default_value_t = 0, requires = "target")]
    pub retries: u32,
    /// With --target: once every order is answered, wait this long for accepted sagas to end.
    #[arg(long, default_value_t = 120.0)]
    pub drain_secs: f64,
    /// Durability of appends.
    #[arg(long, value_enum, default_value = "fsync")]
    pub durability: DurabilityArg,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub saga: crate::args::SagaArgs,
    /// With --target: the node's read token (its live feed needs it when the node has one).
    #[arg(long, env = "CAUSEWAY_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
}

/// Checks the flags and runs the load.
pub async fn run(args: Args) -> Result<ExitCode> {
    let Args {
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
        saga,
        read_token,
    } = args;
    let policy = saga.policy()?;
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
        read_token,
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
        group_commit: crate::args::GroupCommitArgs::default(),
    };
    let store = store_args.open()?;
    let node = Runtime::start(store, gateway.build()?, RuntimeConfig { policy, ..RuntimeConfig::default() })?;
    let report = load::run(&node, &spec).await?;
    node.shutdown().await?;
    load::print(&report);
    Ok(ExitCode::SUCCESS)
}
