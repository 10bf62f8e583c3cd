//! Running projections: live, rebuild, replay from a timestamp, as-of.

use std::sync::Arc;

use event_store::{time_to_nanos, ReadAhead, RecordedEvent, Storage};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::store::{ReadModels, Tx};
use crate::{ProjectionError, Result};

/// Events applied per atomic commit by the live runner.
pub const CHUNK: usize = 1024;
/// Events applied per commit by rebuilds, replays and as-of builds: bigger chunks write each
/// document fewer times (nobody reads the generation being built).
pub const REBUILD_CHUNK: usize = 32 * 1024;

/// A named fold of the log into documents. `apply` must depend only on the events (the same
/// events give the same documents), so rebuilds and replays reproduce the live model.
pub trait Projection: Send + Sync + 'static {
    /// The read model's name.
    fn name(&self) -> &str;
    /// The categories whose events it folds (the others are skipped without being decoded).
    fn categories(&self) -> &[&str];
    /// The version of its fold and document layout. Raise it when a change makes documents
    /// built by the old code wrong (a new key layout, say): a node that finds its read model
    /// built by another version rebuilds it before serving from it.
    fn version(&self) -> u32 {
        1
    }
    /// Folds one event (ignoring the ones it does not care about).
    fn apply<S: Storage>(&self, tx: &mut Tx<'_, S>, event: &RecordedEvent) -> Result<()>;
}

/// Applies the log to generation `gen` of model `name` with `projection`, from its checkpoint up
/// to position `until`, committing every [`CHUNK`] events with the checkpoint. Returns the
/// checkpoint reached.
pub fn catch_up<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: &P,
    name: &str,
    gen: u32,
    until: u64,
) -> Result<u64> {
    catch_up_with(models, projection, name, gen, until, Fold::LIVE)
}

/// How [`catch_up_with`] reads and commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fold {
    /// Events folded between two commits.
    pub chunk: usize,
    /// Ranges at least this long are read with [`event_store::ParallelLogReader`].
    pub parallel_from: u64,
}

impl Fold {
    /// The live runner: [`CHUNK`]-event commits.
    pub const LIVE: Self = Self { chunk: CHUNK, parallel_from: PARALLEL_READ_FROM };
    /// Rebuilds, replays and checks: [`REBUILD_CHUNK`]-event commits.
    pub const REBUILD: Self = Self { chunk: REBUILD_CHUNK, parallel_from: PARALLEL_READ_FROM };
}

/// Ranges at least this long are read with worker threads by default.
pub const PARALLEL_READ_FROM: u64 = 50_000;

/// [`catch_up`] with chosen chunks and read-ahead.
pub fn catch_up_with<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: &P,
    name: &str,
    gen: u32,
    until: u64,
    fold: Fold,
) -> Result<u64> {
    let Fold { chunk, parallel_from } = fold;
    let mut cp = models.checkpoint(name, gen)?;
    if cp >= until {
        return Ok(cp);
    }
    // A long range (a rebuild, a replay, a node far behind) is read and decoded ahead by worker
    // threads while this one folds; a short one is read here.
    let store = models.store();
    let mut events: Box<dyn Iterator<Item = event_store::Result<RecordedEvent>>> =
        if until - cp >= parallel_from {
            Box::new(store.read_categories_parallel(
                projection.categories(),
                cp + 1,
                until,
                ReadAhead::default(),
            )?)
        } else {
            Box::new(store.read_categories_until(projection.categories(), cp + 1, until))
        };
    while cp < until {
        let mut tx = models.begin(name, gen);
        let mut last = cp;
        let mut seen = 0;
        for e in events.by_ref().take(chunk) {
            let e = e?;
            seen += 1;
            if let Err(err) = projection.apply(&mut tx, &e) {
                // Keep everything before the bad event (the chunk may hold half of its
                // changes, so redo the chunk up to it), then report it.
                drop(tx);
                if e.position > cp + 1 {
                    catch_up_with(models, projection, name, gen, e.position - 1, fold)?;
                }
                tracing::error!(projection = name, position = e.position, error = %err, "projection stopped");
                return Err(err);
            }
            last = e.position;
        }
        if seen < chunk {
            // Nothing more of its categories up to `until`: the checkpoint moves there.
            last = last.max(until.min(models.store().head()));
        }
        if last == cp {
            break;
        }
        models.commit(tx, last)?;
        cp = last;
    }
    Ok(cp)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ProjectionError::Task(e.to_string()))?
}

/// Least time between two commits of a live projection: under load it folds bigger chunks with
/// fewer writes, at the price of trailing the log by up to this much.
pub const MIN_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// How the live runner keeps backups (the starting points of replays from a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Take a backup each time the checkpoint passes this many more positions (0: never).
    pub backup_every: u64,
    /// Backups kept per read model (the oldest go first).
    pub keep_backups: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { backup_every: 1_000_000, keep_backups: 2 }
    }
}

/// Keeps the current generation of `projection` up to date until `shutdown` turns true, with the
/// default [`RunOptions`].
pub async fn run<S: Storage, P: Projection>(
    models: ReadModels<S>,
    projection: Arc<P>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    run_with(models, projection, shutdown, RunOptions::default()).await
}

/// Keeps the current generation of `projection` up to date until `shutdown` turns true, taking
/// backups as `options` say. After a rebuild switches generations it continues with the new one.
pub async fn run_with<S: Storage, P: Projection>(
    models: ReadModels<S>,
    projection: Arc<P>,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> Result<()> {
    // A read model built by another version of the projection is rebuilt first (queries keep
    // reading the old generation meanwhile).
    {
        let name = projection.name().to_owned();
        let gen = models.generation(&name)?;
        let built_by = models.built_by(&name, gen)?;
        let fresh = models.checkpoint(&name, gen)? == 0;
        match built_by {
            Some(v) if v == projection.version() => {}
            None if fresh || projection.version() == 1 => {
                models.set_built_by(&name, gen, projection.version())?
            }
            _ => {
                tracing::info!(projection = %name, built_by = built_by.unwrap_or(1), version = projection.version(),
                    "the read model was built by another version of its projection; rebuilding it");
                rebuild(&models, projection.clone()).await?;
            }
        }
    }
    let mut head = models.store().watch_head();
    let mut first = true;
    let catch_up_now = |models: ReadModels<S>, p: Arc<P>| {
        blocking(move || {
            let name = p.name().to_owned();
            let lock = models.writer(&name);
            let _guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let gen = models.generation(&name)?;
            let until = models.store().head();
            let cp = catch_up(&models, p.as_ref(), &name, gen, until)?;
            if options.backup_every > 0 {
                let last = models.backups(&name)?.last().copied().unwrap_or(0);
                if cp >= last.saturating_add(options.backup_every) {
                    let at = models.backup_locked(&name)?;
                    models.prune_backups(&name, options.keep_backups.max(1))?;
                    tracing::info!(projection = %name, checkpoint = at, "read model backed up");
                }
            }
            Ok(cp)
        })
    };
    loop {
        if !first {
            // Let events accumulate so each commit covers many of them.
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
                _ = tokio::time::sleep(MIN_COMMIT_INTERVAL) => {}
            }
        }
        first = false;
        catch_up_now(models.clone(), projection.clone()).await?;
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
            changed = head.changed() => if changed.is_err() { break },
        }
    }
    // A graceful stop leaves the model caught up with everything durable.
    catch_up_now(models, projection).await?;
    Ok(())
}

/// What a rebuild or replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// The generation now current.
    pub generation: u32,
    /// The backup (its checkpoint) the new generation started from; `None`: from the start.
    pub from_backup: Option<u64>,
    /// Its checkpoint when it was switched in.
    pub checkpoint: u64,
}

/// Builds the next generation: from the backup at `backup` (or empty), folds the log up to
/// `restore_until`, then up to the head, in big chunks; then, holding the writer lock, folds what
/// arrived meanwhile, makes it current and drops the old one. Queries read the current
/// generation until the switch, and the live runner keeps it up to date meanwhile.
fn build_next_generation<S: Storage, P: Projection>(
    m: &ReadModels<S>,
    p: &P,
    backup: Option<u64>,
    restore_until: u64,
) -> Result<Rebuilt> {
    let name = p.name().to_owned();
    let next = m.generation(&name)? + 1;
    match backup {
        Some(cp) => m.restore_backup(&name, cp, next)?,
        None => m.drop_generation(&name, next)?,
    }
    catch_up_with(m, p, &name, next, restore_until, Fold::REBUILD)?;
    // Then everything appended meanwhile, most of it without blocking the live runner.
    catch_up_with(m, p, &name, next, m.store().head(), Fold::REBUILD)?;
    let (current, checkpoint) = {
        let lock = m.writer(&name);
        let _guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = m.generation(&name)?;
        if current >= next {
            return Err(ProjectionError::Task(format!("{name} was rebuilt concurrently; try again")));
        }
        let checkpoint = catch_up_with(m, p, &name, next, m.store().head(), Fold::REBUILD)?;
        m.set_built_by(&name, next, p.version())?;
        m.switch(&name, next)?;
        (current, checkpoint)
    };
    // Nobody reads or writes the old generation any more.
    m.drop_generation(&name, current)?;
    Ok(Rebuilt { generation: next, from_backup: backup, checkpoint })
}

/// Rebuilds `projection` from the whole log into a new generation, then makes it current.
pub async fn rebuild<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: Arc<P>,
) -> Result<Rebuilt> {
    let (m, p) = (models.clone(), projection);
    blocking(move || build_next_generation(&m, p.as_ref(), None, m.store().head())).await
}

/// The last position recorded at or before `t`.
fn position_at<S: Storage>(models: &ReadModels<S>, t: OffsetDateTime) -> Result<u64> {
    let after = event_store::nanos_to_time(time_to_nanos(t).saturating_add(1));
    Ok(models.store().seek_time(after)?.saturating_sub(1))
}

/// Replays `projection` from time `t`: restores the model to its state at `t` (from the newest
/// backup at or before `t` that this version of the projection made, or from the start of the log when there is none, folding the log up
/// to `t` into a new generation), applies everything recorded after `t`, and switches to it.
pub async fn replay_from<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: Arc<P>,
    t: OffsetDateTime,
) -> Result<Rebuilt> {
    let (m, p) = (models.clone(), projection);
    blocking(move || {
        let at = position_at(&m, t)?;
        // A backup made by another version of the projection holds documents of another shape.
        let backup = m
            .backup_versions(p.name())?
            .into_iter()
            .rfind(|(cp, version)| *cp <= at && *version == p.version())
            .map(|(cp, _)| cp);
        build_next_generation(&m, p.as_ref(), backup, at)
    })
    .await
}

/// As-of models kept per projection: building another deletes the oldest beyond this many, so
/// as-of queries do not leave the store growing.
pub const KEEP_AS_OF: usize = 4;

/// Builds the state of `projection` as of time `t` (every event recorded at or before `t`) into a
/// separate read model named `<name>@<t in unix ns>`, generation 0, and returns that name. The
/// newest [`KEEP_AS_OF`] as-of models of a projection are kept; older ones are deleted.
pub async fn as_of<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: Arc<P>,
    t: OffsetDateTime,
) -> Result<String> {
    let (m, p) = (models.clone(), projection);
    blocking(move || {
        let name = format!("{}@{}", p.name(), time_to_nanos(t));
        m.drop_generation(&name, 0)?;
        let until = position_at(&m, t)?;
        catch_up_with(&m, p.as_ref(), &name, 0, until, Fold::REBUILD)?;
        m.record_as_of(&name)?;
        let built = m.as_of_models(&format!("{}@", p.name()))?;
        for (old, _) in built.iter().rev().skip(KEEP_AS_OF).filter(|(n, _)| *n != name) {
            m.drop_as_of(old)?;
        }
        Ok(name)
    })
    .await
}

/// Checks that the current generation of `projection` equals a fresh fold of the log up to its
/// checkpoint. Returns the differences (empty when it agrees). Builds the fold in a scratch model
/// (`<name>@verify`) and removes it afterwards.
pub fn verify<S: Storage, P: Projection>(models: &ReadModels<S>, projection: &P) -> Result<Vec<String>> {
    let name = projection.name().to_owned();
    let gen = models.generation(&name)?;
    let checkpoint = models.checkpoint(&name, gen)?;
    let scratch = format!("{name}@verify");
    models.drop_generation(&scratch, 0)?;
    catch_up_with(models, projection, &scratch, 0, checkpoint, Fold::REBUILD)?;
    let live = models.dump(&name, gen)?;
    let fresh = models.dump(&scratch, 0)?;
    models.drop_generation(&scratch, 0)?;
    let mut problems = Vec::new();
    for (k, v) in &fresh {
        match live.get(k) {
            None => problems.push(format!("read model {name}: {k} is missing")),
            Some(l) if l != v => problems.push(format!("read model {name}: {k} differs from the log")),
            Some(_) => {}
        }
    }
    for k in live.keys().filter(|k| !fresh.contains_key(*k)) {
        problems.push(format!("read model {name}: {k} is not in the log"));
    }
    Ok(problems)
}
