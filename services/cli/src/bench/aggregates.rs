//! `causeway bench aggregates`: the command path every user of an event store runs (load an
//! aggregate by reading its stream, decide, append one event with an expected version), on the
//! workload of the peer in `../shared/peers/cqrs-es-postgres` (cqrs-es + postgres-es):
//!
//! - (a) `seq`: 1,000 cart aggregates, 100 `AddItem` commands each, one command at a time,
//!   round-robin; every command reads its aggregate's whole stream, folds it, decides and appends
//!   one JSON `ItemAdded` event with `ExpectedVersion::Exact`, durable (fsync) before the next.
//! - (b) `conc`: the same commands over N tasks (default 10) owning disjoint aggregates.
//! - (c) `load`: after (a), each 100-event aggregate loaded by replay, one at a time.
//! - (d) stream reads: a stream written one event at a time (interleaved with the other
//!   aggregates, as (a) wrote it) against a stream written in one append, read while other
//!   streams are being written.
//!
//! (a) runs two ways: loading by replay (what the peer does) and through [`StateCache`] (the
//! folded state, checked against the stream's version). (b) runs those two and a third with no
//! load at all (the task knows its versions): the ceiling the appends and their syncs allow.
//!
//! Each run uses a fresh store (the peer truncates its table). Output: per-run details on
//! stderr, then one `name value` figure per line on stdout with the peer's names (medians, min,
//! max of the runs), so `scripts/bench-aggregates.sh` can put the two side by side.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregates::{Decider, DecodeError, DomainEvent};
use anyhow::{bail, ensure, Context, Result};
use event_store::{EventStore, ExpectedVersion, NewEvent, SledStorage, StreamId};
use serde::{Deserialize, Serialize};
use services::app::aggregate::StateCache;

type Store = EventStore<SledStorage>;

/// Options of `causeway bench aggregates`.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregateBenchArgs {
    /// Runs (the figures are their medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub runs: u64,
    /// Aggregates (carts).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub aggregates: u64,
    /// Commands (and so events) per aggregate.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub events_per_aggregate: u64,
    /// Tasks of workload (b).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub tasks: u64,
    /// Where to put the benchmark databases (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// sled cache in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// The store's group-commit wait.
    #[command(flatten)]
    pub group_commit: crate::args::GroupCommitArgs,
    /// Only workload (b), the concurrent commands, in its three ways (for profiling it).
    #[arg(long)]
    pub only_concurrent: bool,
}

/// A shopping cart, rebuilt from its events on every load.
#[derive(Debug, Default, Clone, PartialEq)]
struct Cart {
    lines: u64,
    units: u64,
    total_cents: u64,
}

/// The one command.
#[derive(Debug, Clone)]
struct AddItem {
    sku: String,
    qty: u32,
    unit_price_cents: u64,
}

/// The one event, in the JSON shape cqrs-es stores (an externally tagged enum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CartEvent {
    ItemAdded { sku: String, qty: u32, unit_price_cents: u64 },
}

/// Why a cart refuses a command.
#[derive(Debug, Clone, PartialEq)]
struct CartError(&'static str);

impl std::fmt::Display for CartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CartError {}

impl Decider for Cart {
    type Command = AddItem;
    type Event = CartEvent;
    type Error = CartError;

    fn decide(&self, command: AddItem) -> Result<Vec<CartEvent>, CartError> {
        if command.qty == 0 {
            return Err(CartError("quantity must be positive"));
        }
        if self.lines >= 10_000 {
            return Err(CartError("cart is full"));
        }
        Ok(vec![CartEvent::ItemAdded {
            sku: command.sku,
            qty: command.qty,
            unit_price_cents: command.unit_price_cents,
        }])
    }

    fn evolve(mut self, event: &CartEvent) -> Self {
        self.apply(event);
        self
    }
}

impl Cart {
    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded { qty, unit_price_cents, .. } => {
                self.lines += 1;
                self.units += u64::from(*qty);
                self.total_cents += u64::from(*qty) * unit_price_cents;
            }
        }
    }
}

impl DomainEvent for CartEvent {
    fn event_type(&self) -> &'static str {
        "ItemAdded"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        if event_type != "ItemAdded" {
            return Err(DecodeError::UnknownType(event_type.to_owned()));
        }
        if schema_version != 1 {
            return Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version: schema_version,
                max: 1,
            });
        }
        serde_json::from_slice(payload)
            .map_err(|e| DecodeError::Malformed { event_type: event_type.to_owned(), reason: e.to_string() })
    }
}

/// How a command loads its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loading {
    /// Read and fold the whole stream, every command (what the peer does).
    Replay,
    /// The folded state kept by a [`StateCache`], checked against the stream's version.
    Cached,
    /// No load at all: the task appends with the version it knows (the ceiling of any loading,
    /// what the appends and their syncs alone allow).
    None,
}

fn cart_id(i: u64) -> Result<StreamId> {
    Ok(StreamId::new(format!("cart-{i:05}"))?)
}

/// The peer's command for `round` of aggregate `agg`.
fn command(round: u64, agg: u64) -> AddItem {
    AddItem {
        sku: format!("SKU-{:04}-{:03}", agg % 9973, round),
        qty: (round % 5) as u32 + 1,
        unit_price_cents: 199 + (agg * 7 + round) % 5000,
    }
}

/// Loads a cart by replaying its whole stream (every event read, verified and folded, in
/// place): its state and version.
fn load(store: &Store, id: &StreamId) -> Result<(Cart, u64)> {
    let mut cart = Cart::default();
    let version = store.fold_stream(id, 1, |e| {
        let event: CartEvent = serde_json::from_slice(e.payload).context("undecodable cart event")?;
        cart.apply(&event);
        anyhow::Ok(())
    })?;
    Ok((cart, version.unwrap_or(0)))
}

/// Load → decide → append, again on a version conflict. Returns the conflicts met.
async fn execute(
    store: &Store,
    cache: &StateCache<Cart>,
    loading: Loading,
    id: &StreamId,
    command: AddItem,
    known_version: Option<u64>,
) -> Result<u64> {
    let mut conflicts = 0;
    loop {
        let (cart, version) = match loading {
            Loading::Replay => load(store, id)?,
            Loading::Cached => cache.load(store, id)?,
            Loading::None => (Cart::default(), known_version.unwrap_or(0)),
        };
        let events = cart.decide(command.clone())?;
        let new = events.iter().map(|e| NewEvent::json(e.event_type(), e.to_payload())).collect();
        match store.append_to(id, ExpectedVersion::Exact(version), new).await {
            Ok(done) => {
                if loading == Loading::Cached {
                    let state = events.iter().fold(cart, |c, e| c.evolve(e));
                    cache.appended(store, id, version, state, &done);
                }
                return Ok(conflicts);
            }
            Err(event_store::Error::Conflict { .. }) if conflicts < 100 => {
                cache.forget(id);
                conflicts += 1
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What one phase measured.
struct Phase {
    rate: f64,
    syncs: u64,
    sync_time: Duration,
    elapsed: Duration,
    conflicts: u64,
}

impl Phase {
    fn describe(&self, commands: u64) -> String {
        format!(
            "{} syncs ({:.2} commands/sync), {:.0} µs per sync, syncing {:.0}% of the time, {} conflicts",
            self.syncs,
            commands as f64 / self.syncs.max(1) as f64,
            self.sync_time.as_secs_f64() * 1e6 / self.syncs.max(1) as f64,
            100.0 * self.sync_time.as_secs_f64() / self.elapsed.as_secs_f64(),
            self.conflicts
        )
    }
}

async fn measure<F: std::future::Future<Output = Result<u64>>>(
    store: &Store,
    commands: u64,
    f: F,
) -> Result<Phase> {
    let (syncs, sync_time) = (store.sync_count(), store.sync_time());
    let started = Instant::now();
    let conflicts = f.await?;
    let elapsed = started.elapsed();
    Ok(Phase {
        rate: commands as f64 / elapsed.as_secs_f64(),
        syncs: store.sync_count() - syncs,
        sync_time: store.sync_time() - sync_time,
        elapsed,
        conflicts,
    })
}

/// (a): one command at a time, round-robin over the aggregates.
async fn sequential(store: &Store, args: &AggregateBenchArgs, loading: Loading) -> Result<u64> {
    let ids = (0..args.aggregates).map(cart_id).collect::<Result<Vec<_>>>()?;
    let cache = StateCache::new(args.aggregates as usize);
    let mut conflicts = 0;
    for round in 0..args.events_per_aggregate {
        for (agg, id) in ids.iter().enumerate() {
            conflicts += execute(store, &cache, loading, id, command(round, agg as u64), Some(round)).await?;
        }
    }
    Ok(conflicts)
}

/// (b): `tasks` tasks, task `t` owning the aggregates with index % tasks == t.
async fn concurrent(store: &Store, args: &AggregateBenchArgs, loading: Loading) -> Result<u64> {
    let mut handles = Vec::new();
    let cache = Arc::new(StateCache::new(args.aggregates as usize));
    for t in 0..args.tasks {
        let store = store.clone();
        let cache = cache.clone();
        let (aggregates, rounds, tasks) = (args.aggregates, args.events_per_aggregate, args.tasks);
        handles.push(tokio::spawn(async move {
            let mine = (t..aggregates)
                .step_by(tasks as usize)
                .map(|a| Ok((a, cart_id(a)?)))
                .collect::<Result<Vec<_>>>()?;
            let mut conflicts = 0;
            for round in 0..rounds {
                for (agg, id) in &mine {
                    conflicts +=
                        execute(&store, &cache, loading, id, command(round, *agg), Some(round)).await?;
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await??;
    }
    Ok(conflicts)
}

/// Every aggregate holds exactly `events_per_aggregate` events and the log nothing else.
fn check(store: &Store, args: &AggregateBenchArgs) -> Result<()> {
    let total = args.aggregates * args.events_per_aggregate;
    ensure!(store.head() == total, "the log holds {} events, not {total}", store.head());
    for agg in 0..args.aggregates {
        let id = cart_id(agg)?;
        let v = store.stream_version(&id)?;
        ensure!(v == args.events_per_aggregate, "{id} is at version {v}, not {}", args.events_per_aggregate);
    }
    Ok(())
}

/// (c): every aggregate loaded by replay, one at a time; loads per second.
fn loads(store: &Store, args: &AggregateBenchArgs) -> Result<f64> {
    let ids = (0..args.aggregates).map(cart_id).collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    for id in &ids {
        let (cart, version) = load(store, id)?;
        ensure!(
            cart.lines == args.events_per_aggregate && version == args.events_per_aggregate,
            "{id} replayed to {} lines at version {version}",
            cart.lines
        );
    }
    Ok(args.aggregates as f64 / started.elapsed().as_secs_f64())
}

/// (d): events/s of one reader reading streams written one event at a time, then of one reading
/// a stream of the same length written in one append, while two tasks append elsewhere.
async fn stream_reads(store: &Store, args: &AggregateBenchArgs) -> Result<(f64, f64)> {
    let bulk = StreamId::new("bulkcart-1")?;
    let events = (0..args.events_per_aggregate)
        .map(|round| {
            let event = Cart::default().decide(command(round, 0))?.remove(0);
            Ok(NewEvent::json("ItemAdded", event.to_payload()))
        })
        .collect::<Result<Vec<_>>>()?;
    store.append_to(&bulk, ExpectedVersion::NoStream, events).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let id = StreamId::new(format!("noise-{w}"))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = Cart::default().decide(command(n, w))?.remove(0);
                let event = NewEvent::json("ItemAdded", event.to_payload());
                store.append_to(&id, ExpectedVersion::Any, vec![event]).await?;
                n += 1;
            }
            written.fetch_add(n, Ordering::Relaxed);
            anyhow::Ok(())
        }));
    }
    let reader = {
        let store = store.clone();
        let ids = (0..args.aggregates).map(cart_id).collect::<Result<Vec<_>>>()?;
        let per = args.events_per_aggregate;
        tokio::task::spawn_blocking(move || -> Result<(f64, f64)> {
            // Reads the streams in turn for a second: events per second.
            let read_for = |streams: &mut dyn Iterator<Item = &StreamId>| -> Result<f64> {
                let started = Instant::now();
                let mut n = 0;
                while started.elapsed() < Duration::from_secs(1) {
                    let id = streams.next().context("no stream to read")?;
                    let (cart, _) = load(&store, id)?;
                    ensure!(cart.lines == per, "{id} has {} lines, not {per}", cart.lines);
                    n += per;
                }
                Ok(n as f64 / started.elapsed().as_secs_f64())
            };
            let (mut one_at_a_time, mut one_append) = (0.0, 0.0);
            // Alternate the two kinds so both see the same background.
            for round in 0..3 {
                one_at_a_time += read_for(&mut ids.iter().cycle().skip(round * 97))?;
                one_append += read_for(&mut std::iter::repeat(&bulk))?;
            }
            Ok((one_at_a_time / 3.0, one_append / 3.0))
        })
    };
    let rates = reader.await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    eprintln!("#   (d) background writers appended {} events meanwhile", written.load(Ordering::Relaxed));
    rates
}

fn fresh(dir: &Path, name: &str, args: &AggregateBenchArgs) -> Result<Store> {
    let path = dir.join(name);
    if path.exists() {
        std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
    }
    super::open_fsync(&path, args.cache_mib, args.group_commit.wait())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Median, min and max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (median, s[0], s[n - 1])
}

/// Runs the workloads `runs` times and prints their medians.
pub async fn run(args: AggregateBenchArgs) -> Result<()> {
    let (base, _tmp) = super::bench_dir(args.dir.as_deref())?;
    let total = args.aggregates * args.events_per_aggregate;
    eprintln!(
        "# causeway bench aggregates: {} aggregates x {} commands, {} tasks for (b), fsync durability, loadavg1 {}",
        args.aggregates,
        args.events_per_aggregate,
        args.tasks,
        loadavg()
    );
    let mut figures: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |name: String, value: f64| match figures.iter_mut().find(|(n, _)| *n == name) {
        Some((_, values)) => values.push(value),
        None => figures.push((name, vec![value])),
    };
    let conc_name = format!("conc{}_commands_per_s", args.tasks);
    for run in 1..=args.runs {
        for loading in [Loading::Replay, Loading::Cached, Loading::None] {
            let (tag, prefix) = match loading {
                Loading::Replay => ("replay", ""),
                Loading::Cached => ("cached state", "cached_"),
                Loading::None => ("no load (append ceiling)", "ceiling_"),
            };
            if !args.only_concurrent && loading != Loading::None {
                let store = fresh(&base, "seq", &args)?;
                let a = measure(&store, total, sequential(&store, &args, loading)).await?;
                check(&store, &args)?;
                eprintln!(
                    "# run {run} (a) sequential, {tag}: {total} commands in {:.2}s = {:.1} cmd/s; {} (loadavg1 {})",
                    a.elapsed.as_secs_f64(),
                    a.rate,
                    a.describe(total),
                    loadavg()
                );
                record(format!("{prefix}seq_commands_per_s"), a.rate);
                record(
                    format!("{prefix}seq_sync_us"),
                    a.sync_time.as_secs_f64() * 1e6 / a.syncs.max(1) as f64,
                );

                if loading == Loading::Replay {
                    let rate = {
                        let (store, args) = (store.clone(), args.clone());
                        tokio::task::spawn_blocking(move || loads(&store, &args)).await??
                    };
                    eprintln!(
                        "# run {run} (c) load-by-replay: {} aggregates x {} events = {rate:.1} loads/s (loadavg1 {})",
                        args.aggregates,
                        args.events_per_aggregate,
                        loadavg()
                    );
                    record("replay_loads_per_s".into(), rate);
                    record("replay_events_per_s".into(), rate * args.events_per_aggregate as f64);

                    let (single, bulk) = stream_reads(&store, &args).await?;
                    eprintln!(
                        "# run {run} (d) stream reads while writing elsewhere: {single:.0} events/s from streams \
                         written one event at a time, {bulk:.0} events/s from one written in one append"
                    );
                    record("stream_read_one_at_a_time_events_per_s".into(), single);
                    record("stream_read_one_append_events_per_s".into(), bulk);
                }
            }
            let store = fresh(&base, "conc", &args)?;
            let b = measure(&store, total, concurrent(&store, &args, loading)).await?;
            check(&store, &args)?;
            eprintln!(
                "# run {run} (b) {} tasks, {tag}: {total} commands in {:.2}s = {:.1} cmd/s; {} (loadavg1 {})",
                args.tasks,
                b.elapsed.as_secs_f64(),
                b.rate,
                b.describe(total),
                loadavg()
            );
            record(format!("{prefix}{conc_name}"), b.rate);
            record(format!("{prefix}conc_commands_per_sync"), total as f64 / b.syncs.max(1) as f64);
        }
    }
    if figures.is_empty() {
        bail!("no runs");
    }
    for (name, v) in &figures {
        let (med, min, max) = stats(v);
        println!("{name}_median {med:.1}");
        println!("{name}_min {min:.1}");
        println!("{name}_max {max:.1}");
    }
    Ok(())
}
