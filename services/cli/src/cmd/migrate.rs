//! `causeway migrate`: converts a store written by an older build (store format 1, 2 or 3) next to
//! it, checks the copy, then swaps the directories (the old store stays, renamed).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use event_store::{raw, EventStore, SledConfig, SledStorage, StoreConfig};

use crate::args::ensure_store;
use crate::progress::Progress;

/// The flags of `causeway migrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory to convert.
    #[arg(long, env = "CAUSEWAY_DATA_DIR", default_value = "./causeway-data")]
    pub data_dir: PathBuf,
}

/// Converts the store.
pub async fn run(args: Args) -> Result<ExitCode> {
    tokio::task::spawn_blocking(move || migrate(&args.data_dir)).await??;
    Ok(ExitCode::SUCCESS)
}

fn migrate(data_dir: &Path) -> Result<()> {
    ensure_store(data_dir)?;
    let old = SledStorage::open(&SledConfig::new(data_dir))
        .with_context(|| format!("opening the store at {}", data_dir.display()))?;
    let from = match raw::store_format(&old)? {
        None => bail!("{} holds no store", data_dir.display()),
        Some(f) if f == raw::STORE_FORMAT => {
            println!("{} is already of store format {f}: nothing to do", data_dir.display());
            return Ok(());
        }
        Some(f) => f,
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let sibling = |suffix: String| {
        let mut p = data_dir.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let target = sibling(format!(".migrating-{stamp}"));
    let kept = sibling(format!(".format-{from}-{stamp}"));
    if target.exists() || kept.exists() {
        bail!("{} or {} exists already; try again in a second", target.display(), kept.display());
    }
    let outcome = (|| -> Result<raw::Migration> {
        let new = SledStorage::open(&SledConfig::new(&target))?;
        let copy = Progress::new("migrate: copy", 0, "events");
        let report = raw::migrate_observed(&old, &new, &|n| copy.set(n))?;
        copy.set(report.events);
        copy.finish();
        let store = EventStore::open(new, StoreConfig::default())?;
        let check_progress = Progress::new("migrate: verify", report.events, "events");
        let check = store.verify_observed(&|n| check_progress.set(n))?;
        check_progress.set(check.events);
        check_progress.finish();
        if !check.is_ok() || check.events != report.events {
            bail!("the converted store does not verify: {}", check.problems.join("; "));
        }
        Ok(report)
    })();
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&target);
            return Err(e.context(format!("{} was left as it was", data_dir.display())));
        }
    };
    drop(old);
    std::fs::rename(data_dir, &kept)
        .with_context(|| format!("moving the old store to {}", kept.display()))?;
    std::fs::rename(&target, data_dir)
        .with_context(|| format!("moving the converted store from {}", target.display()))?;
    println!(
        "migrated {} events and {} other entries from store format {} to {}; log digest {}",
        report.events,
        report.other_entries,
        report.from_format,
        raw::STORE_FORMAT,
        report.digest
    );
    println!("the old store was kept at {}", kept.display());
    println!("OK");
    Ok(())
}
