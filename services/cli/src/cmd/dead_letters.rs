//! `causeway dead-letters`: lists a stopped node's dead letters, or re-drives one through the
//! handlers its role runs.

use std::process::ExitCode;

use anyhow::Result;
use services::app::messages::ConsumerName;
use services::app::ops::{self, AdminError};
use services::node::{RedriveError, RuntimeConfig};

use crate::args::{write_line, GatewayArgs, StoreArgs};

/// The flags of `causeway dead-letters`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this consumer's (order-service, inventory-service, payment-service,
    /// shipping-service, saga-manager).
    #[arg(long)]
    pub consumer: Option<String>,
    /// Re-drive the dead letter of this original event id (needs --consumer).
    #[arg(long, requires = "consumer")]
    pub redrive: Option<uuid::Uuid>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// Lists, or re-drives.
pub async fn run(args: Args) -> Result<ExitCode> {
    let Args { store, consumer, redrive, json, gateway } = args;
    let consumer = consumer.as_deref().map(ops::consumer_name).transpose()?;
    let gateway = gateway.build()?;
    let store = store.open_existing()?;
    if let (Some(id), Some(name)) = (redrive, consumer) {
        return match services::node::redrive_stopped(&store, gateway, &RuntimeConfig::default(), name, id)
            .await
        {
            Ok(()) => {
                println!("re-driven: {id}");
                Ok(ExitCode::SUCCESS)
            }
            Err(RedriveError::Admin(
                e @ (AdminError::StillFailing(_)
                | AdminError::NoSuchLetter { .. }
                | AdminError::NotOwner { .. }),
            )) => {
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
        for l in services::app::consumer::list_dead_letters(&store, name.as_str())? {
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
