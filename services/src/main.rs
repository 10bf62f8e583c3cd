//! `causeway`: the Causeway node and its operator tools.
//!
//! Subcommands:
//! - `verify`: check a store's log integrity (gapless positions, checksums, indexes).
//! - `bench store`: the event store benchmarks (tables for BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use event_store::{EventStore, SledConfig, SledStorage, StoreConfig};

use services::bench;

#[derive(Debug, Parser)]
#[command(name = "causeway", version, about = "Causeway: an event-sourced order platform")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a node's log: gapless positions, checksums, monotonic timestamps, stream versions
    /// and indexes. NOT safe while the node runs: it needs the store's lock and refuses a
    /// locked store.
    Verify {
        /// The node's data directory.
        #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
        data_dir: PathBuf,
    },
    /// Benchmarks (safe while a node runs: they use their own temporary stores).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Event store: durable and periodic appends, replay, stream reads, scale.
    Store(bench::StoreBenchArgs),
    /// Internal: measures open time and memory of a big store in a fresh process.
    #[command(hide = true)]
    Probe(bench::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
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
        Cmd::Verify { data_dir } => verify(data_dir),
        Cmd::Bench(BenchCmd::Store(args)) => bench::store(args).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bench(BenchCmd::Probe(args)) => bench::probe(args).await.map(|_| ExitCode::SUCCESS),
    }
}

fn verify(data_dir: PathBuf) -> Result<ExitCode> {
    if !data_dir.join("db").exists() {
        anyhow::bail!("no store at {} (expected a sled database there)", data_dir.display());
    }
    let storage = SledStorage::open(&SledConfig::new(&data_dir)).context("open the store")?;
    let store = EventStore::open(storage, StoreConfig::default())?;
    let report = store.verify()?;
    println!("events: {}, streams: {}", report.events, report.streams);
    if report.is_ok() {
        println!("log: OK");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        Ok(ExitCode::from(1))
    }
}
