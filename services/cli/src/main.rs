//! `causeway`: the Causeway node and its operator tools. A thin binary: it parses the command
//! line and hands each command to its module in [`cmd`]; the node itself is the `services`
//! library. Shared flags are in [`args`]; the load generator ([`load`]) and the benchmarks
//! ([`bench`]) live here, outside the node's library.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod args;
mod bench;
mod cmd;
mod load;
mod progress;
mod telemetry;

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

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node: every service, the saga manager and its timer on the local log, in one
    /// process (embedded mode). Stops gracefully on SIGTERM or Ctrl-C (finishes in-flight work,
    /// saves checkpoints). Takes the store's lock: one node per data directory.
    Serve(cmd::serve::Args),
    /// Rebuild a lost log from Kafka, byte for byte, and verify it (counts and digest). Refuses a
    /// data directory that holds a store unless --force (which moves the old one aside). NOT safe
    /// while a node runs on the directory. The restored node re-runs its consumers from the start
    /// (idempotent) and rebuilds its read models when it next starts.
    Restore(cmd::restore::Args),
    /// Convert a store written by an older build (store format 1, 2 or 3) to this build's format.
    /// Every record keeps its exact bytes (checked by digest), the indexes are written anew, and
    /// checkpoints, snapshots and read models are copied. The old store is kept next to the new
    /// one (`<data-dir>.format-<n>-<time>`). NOT safe while a node runs on the directory (it
    /// takes the lock and refuses a locked store).
    Migrate(cmd::migrate::Args),
    /// Drive N orders through an in-process node and print sagas/s, completion latency and
    /// memory. NOT safe while a node runs on the same data directory (it takes the lock; by
    /// default it uses a fresh temporary directory).
    Load(cmd::load::Args),
    /// Check a node's log (gapless positions, checksums, indexes) and the system invariants
    /// (every saga ended; stock conserved; compensated orders hold no stock or money; completed
    /// orders have one payment and one shipment). Exits 1 with a report on any problem. NOT safe
    /// while the node runs: it needs the store's lock and refuses a locked store.
    Verify(cmd::verify::Args),
    /// Read events: a stream, a category, or the global log from a position or a time; text or
    /// JSON lines. NOT safe while the node runs: it needs the store's lock (tailing a live node
    /// goes through its API).
    Events(cmd::events::Args),
    /// Rebuild a read model from the log, replay it from a timestamp, or build its state as of a
    /// time into a separate model. NOT safe while the node runs: it needs the store's lock and
    /// refuses a locked store (the node itself keeps serving the old model during a rebuild).
    Replay(cmd::replay::Args),
    /// List dead letters (messages a consumer could not process, with the reason and the
    /// original), or re-drive one. NOT safe while the node runs: it needs the store's lock.
    DeadLetters(cmd::dead_letters::Args),
    /// List sagas (by state, age, order id) and act on one: retry, resume, compensate, mark a
    /// compensation done. Safe while the node runs: it goes through the node's API, and the
    /// node's saga manager carries each action out with its audit record.
    Sagas(cmd::sagas::Args),
    /// Benchmarks (safe while a node runs: they use their own temporary stores).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Cmd::Serve(args) => Some((
            &args.otlp,
            telemetry::Origin { node_id: args.kafka.node_id.clone(), role: args.role.name() },
        )),
        _ => None,
    };
    let exporter = match telemetry::init(otlp) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    telemetry::shutdown(exporter);
    code
}

async fn run(command: Cmd) -> Result<ExitCode> {
    match command {
        Cmd::Serve(args) => cmd::serve::run(args).await,
        Cmd::Restore(args) => cmd::restore::run(args).await,
        Cmd::Migrate(args) => cmd::migrate::run(args).await,
        Cmd::Load(args) => cmd::load::run(args).await,
        Cmd::Verify(args) => cmd::verify::run(args),
        Cmd::Events(args) => cmd::events::run(args),
        Cmd::Replay(args) => cmd::replay::run(args).await,
        Cmd::DeadLetters(args) => cmd::dead_letters::run(args).await,
        Cmd::Sagas(args) => cmd::sagas::run(args).await,
        Cmd::Bench(bench) => cmd::bench::run(bench).await,
    }
}
