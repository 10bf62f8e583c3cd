//! Running projections: live, rebuild, replay from a timestamp, as-of.

use std::sync::Arc;

use event_store::{time_to_nanos, RecordedEvent, Storage};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::model::{ReadModels, Tx};
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
    catch_up_in_chunks(models, projection, name, gen, until, CHUNK)
}

/// [`catch_up`] with a chosen chunk size.
pub fn catch_up_in_chunks<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: &P,
    name: &str,
    gen: u32,
    until: u64,
    chunk: usize,
) -> Result<u64> {
    let mut cp = models.checkpoint(name, gen)?;
    while cp < until {
        let mut tx = models.begin(name, gen);
        let mut last = cp;
        let mut seen = 0;
        for e in models.store().read_categories_until(projection.categories(), cp + 1, until).take(chunk) {
            let e = e?;
            seen += 1;
            if let Err(err) = projection.apply(&mut tx, &e) {
                // Keep everything before the bad event (the chunk may hold half of its
                // changes, so redo the chunk up to it), then report it.
                drop(tx);
                if e.position > cp + 1 {
                    catch_up_in_chunks(models, projection, name, gen, e.position - 1, chunk)?;
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

/// Keeps the current generation of `projection` up to date until `shutdown` turns true. After a
/// rebuild switches generations it continues with the new one.
pub async fn run<S: Storage, P: Projection>(
    models: ReadModels<S>,
    projection: Arc<P>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut head = models.store().watch_head();
    let mut first = true;
    let catch_up_now = |models: ReadModels<S>, p: Arc<P>| {
        blocking(move || {
            let name = p.name().to_owned();
            let gen = models.generation(&name)?;
            let until = models.store().head();
            catch_up(&models, p.as_ref(), &name, gen, until)
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

/// Folds the log into the next generation (first up to `restore_until`, then up to the head,
/// in big chunks), makes it current, and drops the old one. Queries read the current generation
/// until the switch.
fn build_next_generation<S: Storage, P: Projection>(
    m: &ReadModels<S>,
    p: &P,
    restore_until: u64,
) -> Result<u32> {
    let name = p.name().to_owned();
    let current = m.generation(&name)?;
    let next = current + 1;
    m.drop_generation(&name, next)?;
    catch_up_in_chunks(m, p, &name, next, restore_until, REBUILD_CHUNK)?;
    // Then everything appended meanwhile.
    catch_up_in_chunks(m, p, &name, next, m.store().head(), REBUILD_CHUNK)?;
    m.switch(&name, next)?;
    m.drop_generation(&name, current)?;
    Ok(next)
}

/// Rebuilds `projection` from the whole log into a new generation, then makes it current.
/// Returns the new generation.
pub async fn rebuild<S: Storage, P: Projection>(models: &ReadModels<S>, projection: Arc<P>) -> Result<u32> {
    let (m, p) = (models.clone(), projection);
    blocking(move || build_next_generation(&m, p.as_ref(), m.store().head())).await
}

/// The last position recorded at or before `t`.
fn position_at<S: Storage>(models: &ReadModels<S>, t: OffsetDateTime) -> Result<u64> {
    let after = event_store::nanos_to_time(time_to_nanos(t).saturating_add(1));
    Ok(models.store().seek_time(after)?.saturating_sub(1))
}

/// Replays `projection` from time `t`: restores the model to its state at `t` (folding the log up
/// to `t` into a new generation), applies everything recorded after `t`, and switches to it.
pub async fn replay_from<S: Storage, P: Projection>(
    models: &ReadModels<S>,
    projection: Arc<P>,
    t: OffsetDateTime,
) -> Result<u32> {
    let (m, p) = (models.clone(), projection);
    blocking(move || build_next_generation(&m, p.as_ref(), position_at(&m, t)?)).await
}

/// Builds the state of `projection` as of time `t` (every event recorded at or before `t`) into a
/// separate read model named `<name>@<t in unix ns>`, generation 0, and returns that name.
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
        catch_up_in_chunks(&m, p.as_ref(), &name, 0, until, REBUILD_CHUNK)?;
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
    catch_up_in_chunks(models, projection, &scratch, 0, checkpoint, REBUILD_CHUNK)?;
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
