//! `causeway replay`: rebuilds a stopped node's read model from the log, replays it from a
//! time, builds its state as of a time, or backs it up; or re-publishes events to Kafka.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use services::app::ops::{self, ReplayMode};

use crate::args::{parse_time, KafkaArgs, StoreArgs};
use crate::progress::Progress;

/// The flags of `causeway replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The read model: order-summaries, stock-levels, payment-ledger, saga-timelines,
    /// dead-letters, or all.
    #[arg(long, required_unless_present = "republish", conflicts_with = "republish")]
    pub projection: Option<String>,
    /// Restore the state at this time (RFC 3339) and apply everything after it.
    #[arg(long, conflicts_with = "as_of")]
    pub from: Option<String>,
    /// Build the state as of this time (RFC 3339) into `<name>@<unix ns>`.
    #[arg(long, conflicts_with = "backup")]
    pub as_of: Option<String>,
    /// Back up the current model at its checkpoint (a later replay from a time after it
    /// starts there instead of from the start of the log).
    #[arg(long, conflicts_with = "from")]
    pub backup: bool,
    /// Instead of a read model: produce the events from --from on to Kafka again (up to what
    /// the relay delivered), for a downstream consumer that lost data.
    #[arg(long, requires = "from", conflicts_with_all = ["as_of", "backup"])]
    pub republish: bool,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Runs the replay (or the re-publish).
pub async fn run(args: Args) -> Result<ExitCode> {
    let Args { store, projection, from, as_of, backup, republish, kafka } = args;
    match projection {
        Some(projection) if !republish => replay(store, projection, from, as_of, backup).await,
        _ => {
            let config = kafka.required()?;
            let t = parse_time(from.as_deref().unwrap_or_default())?;
            let store = store.open_existing()?;
            let from_position = store.seek_time(t)?;
            let sent = services::kafka::relay::republish(&store, &config, from_position).await?;
            println!("re-published {sent} events from position {from_position} ({t})");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn replay(
    store: StoreArgs,
    projection: String,
    from: Option<String>,
    as_of: Option<String>,
    backup: bool,
) -> Result<ExitCode> {
    let models = ops::read_models(&projection)?;
    let mode =
        match (from.as_deref().map(parse_time).transpose()?, as_of.as_deref().map(parse_time).transpose()?) {
            (Some(t), _) => ReplayMode::From(t),
            (_, Some(t)) => ReplayMode::AsOf(t),
            _ if backup => ReplayMode::Backup,
            _ => ReplayMode::Rebuild,
        };
    let store = store.open_existing()?;
    let head = store.head();
    let read_models = projections::ReadModels::new(store);
    for model in models {
        // A rebuild or replay fills the next generation, whose checkpoint tells how far it is.
        let progress = Arc::new(Progress::new(model.name(), head, "positions"));
        // The generation it fills is fixed before it starts (after the switch it is current).
        let next = read_models.generation(model.name())? + 1;
        let poller = matches!(mode, ReplayMode::Rebuild | ReplayMode::From(_)).then(|| {
            let (m, name) = (read_models.clone(), model.name());
            progress.poll(move || m.checkpoint(name, next).ok())
        });
        let outcomes = ops::replay(&read_models, model.name(), mode).await;
        // Joining the poller's thread waits for a checkpoint read in progress: not on a worker.
        tokio::task::block_in_place(|| drop(poller));
        let outcomes = outcomes?;
        for o in &outcomes {
            progress.set(o.checkpoint);
        }
        progress.finish();
        for o in outcomes {
            print_outcome(mode, &o);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_outcome(mode: ReplayMode, o: &ops::ReplayOutcome) {
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
