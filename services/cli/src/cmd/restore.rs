//! `causeway restore --from-kafka`: rebuilds a lost log from Kafka, byte for byte, and verifies
//! it (counts and digest).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::args::KafkaArgs;
use crate::progress::Progress;

/// The flags of `causeway restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Required: restore from the Kafka topics.
    #[arg(long, required = true)]
    pub from_kafka: bool,
    /// The data directory to restore into.
    #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
    pub data_dir: PathBuf,
    /// Move an existing store aside instead of refusing.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Restores the log.
pub async fn run(args: Args) -> Result<ExitCode> {
    let Args { from_kafka: _, data_dir, force, kafka } = args;
    let config = kafka.required()?;
    let report = tokio::task::spawn_blocking(move || {
        let progress = Progress::new("restore: read Kafka", 0, "records");
        let report = services::kafka::restore::restore_observed(&config, &data_dir, force, &|n, total| {
            progress.set_total(total);
            progress.set(n);
        });
        if let Ok(r) = &report {
            progress.set(r.records);
        }
        progress.finish();
        report
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
