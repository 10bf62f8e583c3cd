//! Operations on a node's read models and dead letters, shared by the CLI (on a stopped node)
//! and the admin routes of the REST API (on a running one): rebuild, replay from a time, as-of,
//! backup, and re-drive.

use std::sync::Arc;

use event_store::{EventStore, Storage};
use projections::models::ReadModel;
use projections::{Projection, ReadModels};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::command_consumer::CommandConsumer;
use crate::app::consumer;
use crate::app::error::HandlerError;
use crate::app::gateway::PaymentGateway;
use crate::app::handlers::Handlers;
use crate::app::messages::ConsumerName;
use crate::app::saga::SagaRunner;

/// What went wrong with an admin operation.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A read model name that does not exist.
    #[error("unknown read model {0:?}; one of {list}, or all", list = ReadModel::names())]
    UnknownProjection(String),
    /// A consumer name that does not exist.
    #[error("{0}")]
    UnknownConsumer(String),
    /// This node does not run the consumer (it holds, at most, a replica of its dead letters).
    #[error("{consumer} does not run on this node ({role} role); {where_}")]
    NotOwner {
        /// The consumer.
        consumer: ConsumerName,
        /// This node's role.
        role: &'static str,
        /// Where the letter belongs.
        where_: String,
    },
    /// The dead letter to re-drive is not open.
    #[error("no open dead letter of {consumer} for event {event_id}")]
    NoSuchLetter {
        /// The consumer.
        consumer: String,
        /// The event.
        event_id: Uuid,
    },
    /// The re-driven message failed again (the letter stays open).
    #[error("still failing: {0}")]
    StillFailing(String),
    /// The read side failed.
    #[error(transparent)]
    Projection(#[from] projections::ProjectionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
}

/// What to do to a read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Fold the whole log into a new generation.
    Rebuild,
    /// Restore the state at a time (from a backup when there is one), then apply what followed.
    From(OffsetDateTime),
    /// Build the state at a time into a separate read model.
    AsOf(OffsetDateTime),
    /// Back up the current generation.
    Backup,
}

/// The outcome of an operation on one read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    /// The read model written (for as-of, the separate model's name).
    pub read_model: String,
    /// The generation now current (rebuild, replay).
    pub generation: Option<u32>,
    /// The backup a replay started from (its checkpoint).
    pub from_backup: Option<u64>,
    /// The checkpoint reached (or backed up).
    pub checkpoint: u64,
    /// Time taken, in milliseconds.
    pub millis: u64,
}

/// Resolves `name` (`all` for every read model).
pub fn read_models(name: &str) -> Result<Vec<ReadModel>, AdminError> {
    if name == "all" {
        return Ok(ReadModel::ALL.to_vec());
    }
    ReadModel::from_name(name).map(|m| vec![m]).ok_or_else(|| AdminError::UnknownProjection(name.to_owned()))
}

async fn one<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    p: P,
    mode: ReplayMode,
) -> Result<ReplayOutcome, AdminError> {
    let started = std::time::Instant::now();
    let name = p.name().to_owned();
    let p = Arc::new(p);
    let mut out = ReplayOutcome {
        read_model: name.clone(),
        generation: None,
        from_backup: None,
        checkpoint: 0,
        millis: 0,
    };
    match mode {
        ReplayMode::Rebuild | ReplayMode::From(_) => {
            let r = match mode {
                ReplayMode::From(t) => projections::replay_from(models, p, t).await?,
                _ => projections::rebuild(models, p).await?,
            };
            (out.generation, out.from_backup, out.checkpoint) =
                (Some(r.generation), r.from_backup, r.checkpoint);
        }
        ReplayMode::AsOf(t) => {
            out.read_model = projections::as_of(models, p, t).await?;
            out.checkpoint = models.checkpoint(&out.read_model, 0)?;
        }
        ReplayMode::Backup => {
            let m = models.clone();
            out.checkpoint = tokio::task::spawn_blocking(move || m.backup(&name))
                .await
                .map_err(|e| projections::ProjectionError::Task(e.to_string()))??;
        }
    }
    out.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(out)
}

/// Runs `mode` on the read model `name` (or `all`). Safe on a running node: rebuilds and
/// replays fill a new generation and switch to it under the model's writer lock.
pub async fn replay<S: Storage>(
    models: &ReadModels<S>,
    name: &str,
    mode: ReplayMode,
) -> Result<Vec<ReplayOutcome>, AdminError> {
    let mut out = Vec::new();
    for m in read_models(name)? {
        out.push(projections::with_read_model!(m, |p| one(models, p, mode).await?));
    }
    Ok(out)
}

/// Checks a consumer name.
pub fn consumer_name(name: &str) -> Result<ConsumerName, AdminError> {
    name.parse().map_err(AdminError::UnknownConsumer)
}

/// Re-drives the open dead letter of `consumer` for `event_id` through the node's own handlers
/// and saga manager. `Err(StillFailing)` leaves the letter open.
pub async fn redrive<S: Storage, G: PaymentGateway>(
    store: &EventStore<S>,
    handlers: &Arc<Handlers<S, G>>,
    saga: Option<&SagaRunner<S>>,
    consumer: ConsumerName,
    event_id: Uuid,
) -> Result<(), AdminError> {
    let open = consumer::list_dead_letters(store, consumer.as_str())?
        .into_iter()
        .any(|l| l.letter.event_id == event_id && !l.resolved);
    if !open {
        return Err(AdminError::NoSuchLetter { consumer: consumer.as_str().to_owned(), event_id });
    }
    let outcome: Result<(), HandlerError> = match (consumer.service(), saga) {
        (None, Some(saga)) => consumer::redrive(store, saga, event_id).await?,
        (None, None) => {
            return Err(AdminError::NotOwner {
                consumer,
                role: "this",
                where_: "this node runs no saga manager".into(),
            })
        }
        (Some(service), _) => {
            consumer::redrive(store, &CommandConsumer::new(handlers.clone(), service), event_id).await?
        }
    };
    outcome.map_err(|e| AdminError::StillFailing(e.to_string()))
}
