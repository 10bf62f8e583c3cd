//! `causeway bench`: the benchmarks (safe while a node runs: they use their own temporary
//! stores). The benchmarks themselves are [`crate::bench`].

use std::process::ExitCode;

use anyhow::Result;

use crate::bench;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Event store: durable and periodic appends, replay, stream reads, scale.
    Store(bench::StoreBenchArgs),
    /// The aggregate command path (load by replay, decide, append) on the cqrs-es peer's
    /// workload: one command at a time, over N tasks, and loads by replay.
    Aggregates(bench::AggregateBenchArgs),
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

/// Runs one benchmark.
pub async fn run(cmd: BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Store(args) => bench::store(args).await,
        BenchCmd::Aggregates(args) => bench::aggregates(args).await,
        BenchCmd::Projections(args) => bench::projections(args).await,
        BenchCmd::Api(args) => bench::api(args).await,
        BenchCmd::Kafka(args) => bench::kafka(args).await,
        BenchCmd::Probe(args) => bench::probe(args).await,
    }
    .map(|_| ExitCode::SUCCESS)
}
