//! `causeway verify`: checks a stopped node's log (gapless positions, checksums, indexes), the
//! system invariants its role's log answers for, its read models against the log, and that the
//! current saga decider decides every recorded saga as it was recorded (a replay: a change to the
//! saga that would decide a running saga differently shows here).

use std::process::ExitCode;

use anyhow::Result;
use projections::models::ReadModel;
use services::app::invariants;

use crate::args::{SagaArgs, StoreArgs};
use crate::progress::Progress;

/// The flags of `causeway verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The saga settings the node ran with (the replay decides deadlines under them).
    #[command(flatten)]
    pub saga: SagaArgs,
    /// Replay every n-th saga only (a sample of a large log); 0 replays none.
    #[arg(long, default_value_t = 1)]
    pub replay_every: usize,
}

/// Runs the checks; exits 1 with a report on any problem.
pub fn run(args: Args) -> Result<ExitCode> {
    let store = args.store.open_existing()?;
    let progress = Progress::new("verify", store.head(), "events");
    let log = store.verify_observed(&|n| progress.set(n))?;
    progress.set(log.events);
    progress.finish();
    println!("log: {} events, {} streams", log.events, log.streams);
    // A node of a distributed deployment checks what its own log can answer for.
    let (role, _) = services::node::recorded_role(&store)?;
    let scope = role.scope();
    println!("role: {} ({scope:?})", role.name());
    let inv = invariants::check_scope(&store, scope)?;
    println!(
        "sagas: {} completed, {} compensated, {} failed, {} quarantined, {} unfinished; {} SKUs",
        inv.completed,
        inv.compensated,
        inv.failed,
        inv.quarantined.len(),
        inv.unfinished.len(),
        inv.skus
    );
    let models = projections::ReadModels::new(store.clone());
    let mut read_model_problems = Vec::new();
    for m in ReadModel::ALL {
        read_model_problems.extend(projections::with_read_model!(m, |p| projections::verify(&models, &p)?));
    }
    println!("read models: {} checked against the log", ReadModel::ALL.len());
    // The replay needs the sagas' inputs (order events, replies) in the same log: the embedded
    // node's and a query node's; a saga pod reads them from Kafka without keeping them.
    let replayed = if args.replay_every == 0 {
        println!("saga replay: not asked for");
        services::app::saga::replay::Replayed::default()
    } else if scope != invariants::Scope::Everything {
        println!(
            "saga replay: skipped (this log does not hold the sagas' inputs: run it on a query node's log)"
        );
        services::app::saga::replay::Replayed::default()
    } else {
        let r = services::app::saga::replay::replay(&store, args.saga.policy()?, args.replay_every)?;
        println!(
            "saga replay: {} sagas, {} decisions and {} inputs that decided nothing decided again by this build, {} diverge",
            r.sagas,
            r.decisions,
            r.idle_inputs,
            r.divergences.len()
        );
        r
    };
    let mut ok = true;
    for p in log.problems.iter().chain(inv.problems.iter()).chain(read_model_problems.iter()) {
        println!("problem: {p}");
        ok = false;
    }
    for o in &inv.unfinished {
        println!("unfinished saga: {o}");
        ok = false;
    }
    for d in &replayed.divergences {
        println!(
            "divergence: saga {} at version {} ({}): recorded {}; this build decides {}",
            d.order_id, d.version, d.input, d.recorded, d.now
        );
        ok = false;
    }
    for o in &inv.by_hand {
        println!("note: saga {o} has a compensation marked done by hand (not checked against the services)");
    }
    for o in &inv.quarantined {
        println!("quarantined saga: {o} (parked for an operator: causeway sagas retry, compensate, ...)");
        ok = false;
    }
    if ok {
        println!("OK");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}
