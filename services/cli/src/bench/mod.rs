//! `causeway bench store`: the event store's benchmarks, measured side by side in one run so the
//! ratios hold on a noisy machine. Prints one table per section (see BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use event_store::{
    raw, Direction, Durability, EventStore, ExpectedVersion, NewEvent, ReadAhead, SledConfig, SledStorage,
    Snapshot, StoreConfig, StreamId,
};
use hdrhistogram::Histogram;

use crate::load::rss_mib;

mod aggregates;
pub use aggregates::{run as aggregates, AggregateBenchArgs};

type Store = EventStore<SledStorage>;

/// Options of `causeway bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Events in the store for the scale section (0 skips it).
    #[arg(long, default_value_t = 5_000_000)]
    pub scale_events: u64,
    /// Events for the replay section.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: u64,
    /// Small sizes for a quick look (1 s runs, 200k replay, 500k scale).
    #[arg(long)]
    pub quick: bool,
    /// Where to put the benchmark databases (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// sled cache in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// Only these sections (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<StoreSection>,
    /// Events per append when filling the scale section's store (each append to one stream).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub scale_append: u64,
    /// The store's group-commit wait for the fsync sections (`durable`, `saga`).
    #[command(flatten)]
    pub group_commit: crate::args::GroupCommitArgs,
}

/// A section of `bench store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreSection {
    /// Durable (fsync) appends, 1 to 256 writers.
    Durable,
    /// Periodic appends against raw sled inserts.
    Periodic,
    /// Global replay.
    Replay,
    /// Stream read latency.
    Streams,
    /// The large store (`--scale-events`).
    Scale,
    /// The order saga's appends alone, without handlers or subscriptions (its write ceiling).
    Saga,
}

fn payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"order_id":"0192f0c4-7a51-7cc3-9a1e-3d5c4b2a1f{:02}","customer_id":"c-{}","items":[{{"sku":"SKU-{}","qty":2,"unit_price_minor":1999}}],"total_minor":3998,"currency":"EUR"}}"#,
        i % 100,
        i % 997,
        i % 113
    )
    .into_bytes()
}

fn event(i: u64) -> NewEvent {
    NewEvent::json("OrderPlaced", payload(i))
}

fn sled_config(path: &Path, cache_mib: u64) -> SledConfig {
    SledConfig { cache_capacity: cache_mib * 1024 * 1024, ..SledConfig::new(path) }
}

/// [`open`] in fsync mode with the given group-commit wait.
fn open_fsync(path: &Path, cache_mib: u64, group_commit_wait: Duration) -> Result<Store> {
    let storage = SledStorage::open(&sled_config(path, cache_mib))?;
    let config = StoreConfig { durability: Durability::Fsync, group_commit_wait, ..StoreConfig::default() };
    Ok(EventStore::open(storage, config)?)
}

fn open(path: &Path, cache_mib: u64, durability: Durability) -> Result<Store> {
    let storage = SledStorage::open(&sled_config(path, cache_mib))?;
    Ok(EventStore::open(storage, StoreConfig { durability, ..StoreConfig::default() })?)
}

/// One throughput measurement.
struct Run {
    events: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    fn p(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A benchmark task: returns the operations it did and their latency.
type Worker = tokio::task::JoinHandle<Result<(u64, Histogram<u64>)>>;

/// Waits for benchmark tasks and sums them into one run timed from `started`.
async fn collect(tasks: Vec<Worker>, started: Instant) -> Result<Run> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut events = 0;
    for t in tasks {
        let (n, h) = t.await??;
        events += n;
        latency.add(h)?;
    }
    Ok(Run { events, elapsed: started.elapsed(), latency })
}

/// `writers` tasks append single events to their own streams until `duration` has passed.
async fn concurrent_appends(store: &Store, writers: usize, duration: Duration, tag: &str) -> Result<Run> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let stream = StreamId::new(format!("order-{tag}{w}"))?;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).context("histogram")?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                store.append_to(&stream, ExpectedVersion::Any, vec![event(n)]).await?;
                hist.record(t.elapsed().as_micros() as u64).context("record")?;
                n += 1;
            }
            anyhow::Ok((n, hist))
        }));
    }
    collect(tasks, started).await
}

fn header(title: &str) {
    println!("\n## {title}\n");
}

/// Runs every section.
pub async fn store(args: StoreBenchArgs) -> Result<()> {
    let mut args = args;
    if args.quick {
        args.seconds = args.seconds.min(1.0);
        args.replay_events = args.replay_events.min(200_000);
        args.scale_events = args.scale_events.min(500_000);
    }
    let (base, _tmp) = bench_dir(args.dir.as_deref())?;
    let secs = Duration::from_secs_f64(args.seconds);
    println!("# causeway bench store  (cores: {}, {} s per run)", num_cpus(), args.seconds);

    let wanted = |s: StoreSection| args.only.is_empty() || args.only.contains(&s);
    if wanted(StoreSection::Durable) {
        durable_appends(&base.join("durable"), &args, secs).await?;
    }
    if wanted(StoreSection::Periodic) {
        periodic_vs_raw(&base.join("periodic"), &args, secs).await?;
    }
    if wanted(StoreSection::Replay) {
        replay(&base.join("replay"), &args).await?;
    }
    if wanted(StoreSection::Streams) {
        stream_reads(&base.join("streams"), &args).await?;
    }
    if wanted(StoreSection::Saga) {
        saga_writes(&base.join("saga"), &args, secs).await?;
    }
    if args.scale_events > 0 && wanted(StoreSection::Scale) {
        scale(&base.join("scale"), &args, secs).await?;
    }
    Ok(())
}

/// Where a benchmark puts its databases: `dir` (created if needed), or a temporary directory
/// removed when the returned guard is dropped.
fn bench_dir(dir: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn durable_appends(dir: &Path, args: &StoreBenchArgs, secs: Duration) -> Result<()> {
    header("Durable appends (fsync mode), single-event appends, each writer on its own stream");
    let store = open_fsync(dir, args.cache_mib, args.group_commit.wait())?;
    println!("| writers | events/s | p50 ack ms | p99 ack ms | syncs | events/sync | vs 1 writer |");
    println!("|--------:|---------:|-----------:|-----------:|------:|------------:|------------:|");
    let mut base_rate = 0.0;
    for writers in [1usize, 64, 256] {
        let syncs = store.sync_count();
        let run = concurrent_appends(&store, writers, secs, &format!("w{writers}-")).await?;
        let syncs = store.sync_count() - syncs;
        if writers == 1 {
            base_rate = run.rate();
        }
        println!(
            "| {writers} | {:.0} | {:.2} | {:.2} | {syncs} | {:.1} | {:.1}x |",
            run.rate(),
            run.p(0.5),
            run.p(0.99),
            run.events as f64 / syncs.max(1) as f64,
            run.rate() / base_rate
        );
    }
    Ok(())
}

async fn periodic_vs_raw(dir: &Path, args: &StoreBenchArgs, secs: Duration) -> Result<()> {
    header("Periodic appends (10 ms flush) vs raw sled inserts of the same bytes");
    std::fs::create_dir_all(dir)?;
    // Raw sled: one thread inserting exactly the entries the store writes for each event
    // (record + stream, category and event-id index), no checks, no flush.
    let raw_dir = dir.join("raw");
    let raw_rate = tokio::task::spawn_blocking({
        let raw_dir = raw_dir.clone();
        let cache = args.cache_mib;
        move || -> Result<(f64, f64, f64)> {
            let db = sled::Config::new().path(&raw_dir).cache_capacity(cache * 1024 * 1024).open()?;
            let tree = db.open_tree(raw::SLED_TREE)?;
            let deadline = Instant::now() + secs;
            let started = Instant::now();
            let mut n = 0u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    n += 1;
                    let stream = format!("order-r{}", n % 256);
                    for (k, v) in raw::entries(n, n / 256 + 1, n, &stream, &event(n))? {
                        tree.insert(k, v)?;
                    }
                }
            }
            let all = n as f64 / started.elapsed().as_secs_f64();
            // The same records alone, without any index entries.
            let started = Instant::now();
            let deadline = Instant::now() + secs;
            let mut m = 0u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    m += 1;
                    let stream = format!("order-r{}", m % 256);
                    let [(k, v), ..] = raw::entries(n + m, m, m, &stream, &event(m))?;
                    tree.insert(k, v)?;
                }
            }
            let log_only = m as f64 / started.elapsed().as_secs_f64();
            // The same entries, 256 events per atomic batch (what the writer does per group).
            let started = Instant::now();
            let deadline = Instant::now() + secs;
            let mut b = 0u64;
            while Instant::now() < deadline {
                let mut batch = sled::Batch::default();
                for _ in 0..256 {
                    b += 1;
                    let stream = format!("order-b{}", b % 256);
                    for (k, v) in raw::entries(n + m + b, b / 256 + 1, b, &stream, &event(b))? {
                        batch.insert(k, v);
                    }
                }
                tree.apply_batch(batch)?;
            }
            let batched = b as f64 / started.elapsed().as_secs_f64();
            Ok((all, log_only, batched))
        }
    })
    .await??;
    let store = open(
        &dir.join("store"),
        args.cache_mib,
        Durability::Periodic { interval: Duration::from_millis(10) },
    )?;
    println!("| what | events/s | p50 ack ms | p99 ack ms | vs raw (same entries) |");
    println!("|------|---------:|-----------:|-----------:|----------------------:|");
    println!("| raw sled insert, record + 2 index entries, 1 thread | {:.0} | - | - | 100% |", raw_rate.0);
    println!(
        "| raw sled insert, record only, 1 thread | {:.0} | - | - | {:.0}% |",
        raw_rate.1,
        100.0 * raw_rate.1 / raw_rate.0
    );
    println!(
        "| raw sled apply_batch, same entries, 256 events/batch | {:.0} | - | - | {:.0}% |",
        raw_rate.2,
        100.0 * raw_rate.2 / raw_rate.0
    );
    for writers in [256usize, 1024, 2048] {
        let run = concurrent_appends(&store, writers, secs, &format!("p{writers}-")).await?;
        println!(
            "| store, periodic, {writers} writers | {:.0} | {:.2} | {:.2} | {:.0}% |",
            run.rate(),
            run.p(0.5),
            run.p(0.99),
            100.0 * run.rate() / raw_rate.0
        );
    }
    Ok(())
}

/// The event types an append writes to one stream of a category.
type StreamWrite = (&'static str, &'static [&'static str]);

/// One append of the order saga's happy path: what it writes per stream, and whether it carries
/// a consumer checkpoint.
const SAGA_APPENDS: [(&[StreamWrite], bool); 14] = [
    (&[("order", &["OrderPlaced"])], false),
    (&[("saga", &["SagaStarted", "StepRequested"]), ("inventory_commands", &["ReserveStock"])], true),
    (&[("inventory", &["StockReserved"]), ("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "StepRequested"]), ("payment_commands", &["CheckFraud"])], true),
    (&[("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "StepRequested"]), ("payment_commands", &["TakePayment"])], true),
    (&[("payment", &["PaymentAuthorized", "PaymentCaptured"]), ("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "StepRequested"]), ("shipping_commands", &["CreateShipment"])], true),
    (&[("shipment", &["ShipmentCreated"]), ("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "StepRequested"]), ("inventory_commands", &["CommitStock"])], true),
    (&[("inventory", &["StockCommitted"]), ("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "StepRequested"]), ("order_commands", &["ConfirmOrder"])], true),
    (&[("order", &["OrderConfirmed"]), ("replies", &["CommandReplied"])], true),
    (&[("saga", &["StepSucceeded", "SagaCompleted"])], true),
];

/// `pipelines` tasks each write whole sagas, one append after the other as the real saga's
/// hops do (each waits for the previous one to be durable), until `duration` has passed.
/// Returns the run counted in sagas, with each saga's time from its first append to its last.
async fn saga_pipelines(store: &Store, pipelines: usize, duration: Duration, tag: &str) -> Result<Run> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(pipelines);
    for w in 0..pipelines {
        let store = store.clone();
        let tag = format!("{tag}{w}");
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).context("histogram")?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                for (i, (streams, checkpoint)) in SAGA_APPENDS.iter().enumerate() {
                    let mut request = event_store::AppendRequest::default();
                    for (category, types) in streams.iter() {
                        // 100 SKUs shared by every saga, as in `causeway load`; the rest per saga.
                        let id = match *category {
                            "inventory" => format!("SKU-{}", (w as u64 + n) % 100),
                            _ => format!("{tag}-{n}"),
                        };
                        let events = types
                            .iter()
                            .map(|t| NewEvent::json(*t, payload(n + i as u64)))
                            .collect::<Vec<_>>();
                        request = request.and(
                            StreamId::new(format!("{category}-{id}"))?,
                            ExpectedVersion::Any,
                            events,
                        );
                    }
                    if *checkpoint {
                        request = request.with_checkpoint(format!("consumer.bench-{}", i % 5), n);
                    }
                    store.append(request).await?;
                }
                hist.record(t.elapsed().as_micros() as u64).context("record")?;
                n += 1;
            }
            anyhow::Ok((n, hist))
        }));
    }
    collect(tasks, started).await
}

/// The order saga's writes alone: what the store can take of them in fsync mode with no
/// handler, subscription or read model doing any work. This bounds the embedded saga rate.
async fn saga_writes(dir: &Path, args: &StoreBenchArgs, secs: Duration) -> Result<()> {
    let events: usize = SAGA_APPENDS.iter().map(|(s, _)| s.iter().map(|(_, t)| t.len()).sum::<usize>()).sum();
    header(&format!(
        "The order saga's appends alone (fsync): {} dependent appends, {events} events per saga",
        SAGA_APPENDS.len()
    ));
    let store = open_fsync(dir, args.cache_mib, args.group_commit.wait())?;
    println!("| sagas in flight | sagas/s | events/s | p50 saga ms | p99 saga ms | events/sync |");
    println!("|----------------:|--------:|---------:|------------:|------------:|------------:|");
    for pipelines in [32usize, 128, 512] {
        let syncs = store.sync_count();
        let run = saga_pipelines(&store, pipelines, secs, &format!("s{pipelines}-")).await?;
        let syncs = store.sync_count() - syncs;
        let ev = run.events * events as u64;
        println!(
            "| {pipelines} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            run.rate(),
            run.rate() * events as f64,
            run.p(0.5),
            run.p(0.99),
            ev as f64 / syncs.max(1) as f64
        );
    }
    Ok(())
}

/// Tasks that fill a store with `batch`-event appends: enough appends in flight to fill each
/// flush, at least 64, more for small appends.
fn fill_tasks(batch: u64) -> u64 {
    (6_400 / batch.max(1)).clamp(64, 4_096)
}

/// Fills a store quickly: [`fill_tasks`] appenders writing batches of `batch` events.
async fn fill(store: &Store, events: u64, streams: u64, batch: u64) -> Result<Duration> {
    let started = Instant::now();
    let tasks = fill_tasks(batch);
    let per_task = events / tasks;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_task {
                let n = batch.min(per_task - done);
                let stream = StreamId::new(format!("order-{}", (t * per_task + done) / batch % streams))?;
                let evs = (0..n).map(|i| event(done + i)).collect();
                store.append_to(&stream, ExpectedVersion::Any, evs).await?;
                done += n;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(started.elapsed())
}

/// Reads every event of `events` (touching each payload); returns how many and the seconds taken.
fn drain(
    events: impl Iterator<Item = event_store::Result<event_store::RecordedEvent>>,
) -> Result<(u64, f64)> {
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0usize);
    for e in events {
        bytes += e?.payload.len();
        n += 1;
    }
    std::hint::black_box(bytes);
    Ok((n, started.elapsed().as_secs_f64()))
}

async fn replay(dir: &Path, args: &StoreBenchArgs) -> Result<()> {
    header(&format!("Global replay (read + decode), {} events", args.replay_events));
    let periodic = Durability::Periodic { interval: Duration::from_millis(10) };
    {
        let store = open(dir, args.cache_mib, periodic)?;
        fill(&store, args.replay_events, 10_000, 50).await?;
    }
    let path = dir.to_path_buf();
    let cache = args.cache_mib;
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<(String, f64)>> {
        let mut rows = Vec::new();
        // Alternate the two readers three times each; report the median rate of each.
        let mut raw_rates = Vec::new();
        let mut store_rates = Vec::new();
        let mut parallel_rates = Vec::new();
        for _ in 0..3 {
            let db = sled::Config::new().path(&path).cache_capacity(cache * 1024 * 1024).open()?;
            let tree = db.open_tree(raw::SLED_TREE)?;
            let started = Instant::now();
            let mut n = 0u64;
            let mut bytes = 0usize;
            for kv in tree.range(raw::log_start().to_vec()..raw::log_end().to_vec()) {
                let (k, v) = kv?;
                for e in raw::decode_frame(&k, &v)? {
                    bytes += e.payload.len();
                    n += 1;
                }
            }
            raw_rates.push(n as f64 / started.elapsed().as_secs_f64());
            drop(tree);
            drop(db);
            std::hint::black_box(bytes);

            // Each store reader on a freshly opened store, like the raw scan.
            let fresh = || -> Result<Store> {
                Ok(EventStore::open(SledStorage::open(&sled_config(&path, cache))?, StoreConfig::default())?)
            };
            let (m, secs) = drain(fresh()?.read_all(1))?;
            store_rates.push(m as f64 / secs);
            if m != n {
                bail!("store read {m} events, raw scan {n}");
            }
            let (p, secs) = drain(fresh()?.read_all_parallel(1, ReadAhead::default())?)?;
            parallel_rates.push(p as f64 / secs);
            if p != n {
                bail!("the parallel reader read {p} events, raw scan {n}");
            }
        }
        raw_rates.sort_by(f64::total_cmp);
        store_rates.sort_by(f64::total_cmp);
        parallel_rates.sort_by(f64::total_cmp);
        rows.push(("raw sled scan + decode".to_owned(), raw_rates[1]));
        rows.push(("store read_all (verified, decoded)".to_owned(), store_rates[1]));
        rows.push((
            format!("store read_all_parallel ({} read-ahead threads)", ReadAhead::default().workers),
            parallel_rates[1],
        ));
        Ok(rows)
    })
    .await??;
    println!("| reader | events/s (median of 3) | vs raw |");
    println!("|--------|-----------------------:|-------:|");
    let raw_rate = rows[0].1;
    for (name, rate) in rows {
        println!("| {name} | {rate:.0} | {:.0}% |", 100.0 * rate / raw_rate);
    }
    Ok(())
}

async fn stream_reads(dir: &Path, args: &StoreBenchArgs) -> Result<()> {
    header("Stream read latency (load a stream and fold it; snapshot taken 10 events before the end)");
    let store = open(dir, args.cache_mib, Durability::Periodic { interval: Duration::from_millis(10) })?;
    // Background noise: other streams interleaved with the measured ones.
    fill(&store, 200_000, 5_000, 20).await?;
    println!("| events in stream | snapshot | p50 µs | p99 µs | events read |");
    println!("|-----------------:|----------|-------:|-------:|------------:|");
    for len in [100u64, 1000] {
        let stream = StreamId::new(format!("order-len{len}"))?;
        for chunk in (0..len).collect::<Vec<_>>().chunks(50) {
            store.append_to(&stream, ExpectedVersion::Any, chunk.iter().map(|i| event(*i)).collect()).await?;
        }
        let snap_version = len - 10;
        let folded: u64 = store
            .read_stream(&stream, 1, Direction::Forward)
            .take(snap_version as usize)
            .map(|e| e.map(|e| e.payload.len() as u64))
            .sum::<Result<u64, _>>()?;
        store.save_snapshot(
            &stream,
            &Snapshot { version: snap_version, schema_version: 1, payload: folded.to_be_bytes().to_vec() },
        )?;
        for with_snapshot in [false, true] {
            let store = store.clone();
            let stream = stream.clone();
            let (hist, read) = tokio::task::spawn_blocking(move || -> Result<(Histogram<u64>, u64)> {
                let mut hist = Histogram::<u64>::new(3)?;
                let mut read = 0;
                for _ in 0..500 {
                    let t = Instant::now();
                    let (mut state, from) = match (with_snapshot, store.load_snapshot(&stream)?) {
                        (true, Some(s)) => (u64::from_be_bytes(s.payload[..8].try_into()?), s.version + 1),
                        _ => (0, 1),
                    };
                    read = 0;
                    for e in store.read_stream(&stream, from, Direction::Forward) {
                        state += e?.payload.len() as u64;
                        read += 1;
                    }
                    std::hint::black_box(state);
                    hist.record(t.elapsed().as_nanos() as u64)?;
                }
                Ok((hist, read))
            })
            .await??;
            println!(
                "| {len} | {} | {:.1} | {:.1} | {read} |",
                if with_snapshot { "yes" } else { "no" },
                hist.value_at_quantile(0.5) as f64 / 1000.0,
                hist.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
    }
    Ok(())
}

async fn scale(dir: &Path, args: &StoreBenchArgs, secs: Duration) -> Result<()> {
    header(&format!("Scale: {} events", args.scale_events));
    let periodic = Durability::Periodic { interval: Duration::from_millis(10) };
    // Baseline append rate on an empty store, measured in this same run.
    let empty_dir = dir.join("empty");
    let empty_rate = {
        let store = open(&empty_dir, args.cache_mib, Durability::Fsync)?;
        concurrent_appends(&store, 256, secs, "e").await?
    };
    let full_dir = dir.join("full");
    let fill_time = {
        let store = open(&full_dir, args.cache_mib, periodic)?;
        fill(&store, args.scale_events, 100_000, args.scale_append).await?
    };
    // Open, memory and append rate are measured in fresh processes so their RSS is their own:
    // one that only opens the store (sled scans its log since the previous open), then one that
    // opens it again, replays it and appends.
    let run_probe = |extra: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new(std::env::current_exe()?)
            .args(["bench", "probe"])
            .arg(&full_dir)
            .args(["--cache-mib", &args.cache_mib.to_string(), "--seconds", &args.seconds.to_string()])
            .args(extra)
            .output()
            .context("run the probe process")?;
        if !out.status.success() {
            bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("probe output")
    };
    let first = run_probe(&["--open-only"])?;
    let probe = run_probe(&[])?;
    let disk = dir_size(&full_dir)?;
    let f = |k: &str| probe[k].as_f64().unwrap_or(f64::NAN);
    println!("| measure | value | goal |");
    println!("|---------|------:|------|");
    println!(
        "| fill rate (periodic, {} tasks x {}-event appends) | {:.0} events/s | - |",
        fill_tasks(args.scale_append),
        args.scale_append,
        args.scale_events as f64 / fill_time.as_secs_f64()
    );
    println!(
        "| open time, first open after the fill | {:.0} ms | < 2000 ms |",
        first["open_ms"].as_f64().unwrap_or(f64::NAN)
    );
    println!("| open time, next open | {:.0} ms | < 2000 ms |", f("open_ms"));
    println!("| RSS after open | {:.0} MiB | - |", f("rss_open_mib"));
    println!(
        "| RSS after full replay + appends (cache {} MiB) | {:.0} MiB | < 512 MiB |",
        args.cache_mib,
        f("rss_end_mib")
    );
    println!("| full replay, read_all | {:.0} events/s | - |", f("replay_rate"));
    println!("| full replay, read_all_parallel | {:.0} events/s | - |", f("parallel_replay_rate"));
    println!("| disk bytes per event | {:.0} | - |", disk as f64 / args.scale_events as f64);
    println!(
        "| fsync append rate, 256 writers, empty store | {:.0} events/s (p99 {:.2} ms) | - |",
        empty_rate.rate(),
        empty_rate.p(0.99)
    );
    println!(
        "| fsync append rate, 256 writers, full store | {:.0} events/s (p99 {:.2} ms) | >= 80% of empty |",
        f("append_rate"),
        f("append_p99_ms")
    );
    println!("| full / empty append rate | {:.0}% | >= 80% |", 100.0 * f("append_rate") / empty_rate.rate());
    Ok(())
}

fn dir_size(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Options of the hidden `causeway bench probe` (run by the scale section in a fresh process).
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The store to open.
    pub dir: PathBuf,
    /// sled cache in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// Seconds of appends.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Only open the store and report the open time and memory.
    #[arg(long)]
    pub open_only: bool,
}

/// Opens a big store, replays it, appends for a while; prints JSON figures.
pub async fn probe(args: ProbeArgs) -> Result<()> {
    let started = Instant::now();
    let store = open(&args.dir, args.cache_mib, Durability::Fsync)?;
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_open = rss_mib();
    if args.open_only {
        println!("{}", serde_json::json!({ "open_ms": open_ms, "rss_open_mib": rss_open }));
        return Ok(());
    }
    let reader = store.clone();
    let (n, replay_secs, parallel_secs) = tokio::task::spawn_blocking(move || -> Result<(u64, f64, f64)> {
        let (n, replay_secs) = drain(reader.read_all(1))?;
        let (p, parallel_secs) = drain(reader.read_all_parallel(1, ReadAhead::default())?)?;
        if p != n {
            bail!("the parallel reader read {p} events, read_all {n}");
        }
        Ok((n, replay_secs, parallel_secs))
    })
    .await??;
    let run = concurrent_appends(&store, 256, Duration::from_secs_f64(args.seconds), "probe").await?;
    let out = serde_json::json!({
        "events": n,
        "open_ms": open_ms,
        "rss_open_mib": rss_open,
        "replay_rate": n as f64 / replay_secs,
        "parallel_replay_rate": n as f64 / parallel_secs,
        "append_rate": run.rate(),
        "append_p99_ms": run.p(0.99),
        "rss_end_mib": rss_mib(),
    });
    println!("{out}");
    Ok(())
}

/// Options of `causeway bench projections`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionBenchArgs {
    /// Orders driven through the node first (each writes ~29 events).
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// sled cache in MiB (the node's `--cache-mib`).
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
}

/// A running node in `dir` after `orders` orders went through the real saga path (100 SKUs, 5%
/// compensated), and the load it ran.
async fn filled_node(
    dir: &Path,
    durability: Durability,
    orders: u64,
    cache_mib: u64,
) -> Result<(
    EventStore<SledStorage>,
    services::node::Runtime<SledStorage, services::app::gateway::SimulatedGateway>,
    crate::load::LoadSpec,
)> {
    use services::node::{Runtime, RuntimeConfig};
    let store = open(dir, cache_mib, durability)?;
    let node = Runtime::start(
        store.clone(),
        services::app::gateway::SimulatedGateway::default(),
        RuntimeConfig::default(),
    )?;
    let spec = crate::load::LoadSpec {
        orders,
        concurrency: 256,
        skus: 100,
        undeliverable: 0.05,
        memory_checkpoint: 0,
        progress: false,
        rate: None,
        retries: 0,
        drain: Duration::from_secs(120),
        read_token: None,
    };
    crate::load::run(&node, &spec).await?;
    Ok((store, node, spec))
}

/// Fills a store through the real saga path, then times a full rebuild of each read model.
pub async fn projections(args: ProjectionBenchArgs) -> Result<()> {
    use projections::models::{OrderSummaries, SagaTimelines, StockLevels};

    let dir = tempfile::tempdir()?;
    let durability = Durability::Periodic { interval: Duration::from_millis(5) };
    let (store, node, _) = filled_node(dir.path(), durability, args.orders, args.cache_mib).await?;
    node.shutdown().await?;
    let models = projections::ReadModels::new(store.clone());
    let events = store.head();
    header(&format!(
        "Projection rebuild, {} orders, {events} events in the log, {} MiB cache",
        args.orders, args.cache_mib
    ));
    println!("| read model | rebuild s | log events/s | documents |");
    println!("|------------|----------:|-------------:|----------:|");
    macro_rules! row {
        ($p:expr, $name:expr) => {{
            let t = Instant::now();
            let gen = projections::rebuild(&models, std::sync::Arc::new($p)).await?.generation;
            let secs = t.elapsed().as_secs_f64();
            let docs = models.dump($name, gen)?.len();
            println!("| {} | {:.2} | {:.0} | {} |", $name, secs, events as f64 / secs, docs);
        }};
    }
    row!(OrderSummaries, OrderSummaries::NAME);
    row!(StockLevels, StockLevels::NAME);
    row!(SagaTimelines, SagaTimelines::NAME);
    Ok(())
}

/// Options of `causeway bench api`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// Orders placed before measuring (the documents queried).
    #[arg(long, default_value_t = 5_000)]
    pub orders: u64,
    /// Concurrent query clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds of queries on an idle node.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Orders placed through the API while the second round of queries runs.
    #[arg(long, default_value_t = 3_000)]
    pub load_orders: u64,
}

/// Latency per route.
type RouteHistograms = std::collections::BTreeMap<&'static str, Histogram<u64>>;

/// `clients` loops of GET queries over HTTP until `stop` turns true.
async fn query_clients(
    base: String,
    orders: Arc<Vec<(String, String)>>,
    clients: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(RouteHistograms, u64, Duration)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, base, orders, stop) = (client.clone(), base.clone(), orders.clone(), stop.clone());
        tasks.spawn(async move {
            let mut hist = RouteHistograms::new();
            let mut failed = 0u64;
            let mut i = c;
            while !*stop.borrow() {
                let (order, customer) = &orders[i % orders.len()];
                let (route, url) = match i % 4 {
                    0 => ("GET /api/orders/{id}", format!("{base}/api/orders/{order}")),
                    1 => (
                        "GET /api/customers/{id}/orders",
                        format!("{base}/api/customers/{customer}/orders?limit=20"),
                    ),
                    2 => (
                        "GET /api/products/{sku}/stock",
                        format!("{base}/api/products/SKU-{}/stock", i % 100),
                    ),
                    _ => ("GET /api/sagas/{id}", format!("{base}/api/sagas/{order}")),
                };
                i += clients + 1;
                let t = Instant::now();
                let ok = match client.get(url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    hist.entry(route).or_insert(Histogram::new(3)?).record(t.elapsed().as_micros() as u64)?;
                } else {
                    failed += 1;
                }
            }
            anyhow::Ok((hist, failed))
        });
    }
    let mut all = RouteHistograms::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        let (hist, f) = r??;
        failed += f;
        for (route, h) in hist {
            all.entry(route).or_insert(Histogram::new(3)?).add(h)?;
        }
    }
    Ok((all, failed, started.elapsed()))
}

/// Serves a node over real HTTP, fills it, then times GET queries from concurrent clients: on an
/// idle node, then while orders are placed through the API.
pub async fn api(args: ApiBenchArgs) -> Result<()> {
    use std::future::IntoFuture;

    anyhow::ensure!(
        args.orders > 0 && args.clients > 0 && args.seconds > 0.0,
        "--orders, --clients and --seconds must be positive"
    );
    let dir = tempfile::tempdir()?;
    let (store, node, spec) = filled_node(dir.path(), Durability::Fsync, args.orders, 256).await?;
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let state = services::http::ApiState {
        store: store.clone(),
        models: node.models().clone(),
        ready: node.readiness().clone(),
        metrics: None,
        stopping: http_stopped.clone(),
        admin: None,
        commands: services::http::CommandRoute::Local,
        admission: node.admission().cloned(),
        feeds: services::http::LiveFeeds::default(),
        limits: services::http::HttpLimits::default(),
        read_token: None,
        compat: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut stopped = http_stopped.clone();
    let server = tokio::spawn(
        axum::serve(listener, services::http::app(state))
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    // The orders to query, with their customers.
    let orders: Vec<(String, String)> = store
        .read_category("order", 1)
        .filter_map(|e| e.ok())
        .filter(|e| e.event_type == "OrderPlaced")
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.payload).ok()?;
            Some((v["order_id"].as_str()?.to_owned(), v["customer_id"].as_str()?.to_owned()))
        })
        .collect();
    anyhow::ensure!(!orders.is_empty(), "no orders to query");
    let orders = Arc::new(orders);

    header(&format!(
        "REST query latency, {} orders in the read models, {} clients over HTTP/1.1 on loopback",
        orders.len(),
        args.clients
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let idle = tokio::spawn(query_clients(base.clone(), orders.clone(), args.clients, rx));
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let _ = stop.send(true);
    let (idle, idle_failed, idle_elapsed) = idle.await??;

    let (stop, rx) = tokio::sync::watch::channel(false);
    let busy = tokio::spawn(query_clients(base.clone(), orders.clone(), args.clients, rx));
    let load_spec = crate::load::LoadSpec { orders: args.load_orders, concurrency: 64, ..spec };
    let load = crate::load::run_remote(&base, &load_spec).await?;
    let _ = stop.send(true);
    let (busy, busy_failed, busy_elapsed) = busy.await??;

    println!("| route | idle p50 ms | idle p99 ms | under load p50 ms | under load p99 ms |");
    println!("|-------|------------:|------------:|------------------:|------------------:|");
    let ms = |h: Option<&Histogram<u64>>, q: f64| h.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    for route in idle.keys() {
        let (i, b) = (idle.get(route), busy.get(route));
        println!(
            "| {route} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(i, 0.5),
            ms(i, 0.99),
            ms(b, 0.5),
            ms(b, 0.99)
        );
    }
    let total = |m: &RouteHistograms| m.values().map(Histogram::len).sum::<u64>();
    println!(
        "\nqueries/s: idle {:.0}, under load {:.0} (failed: {idle_failed} idle, {busy_failed} under load)",
        total(&idle) as f64 / idle_elapsed.as_secs_f64(),
        total(&busy) as f64 / busy_elapsed.as_secs_f64(),
    );
    println!(
        "the load meanwhile: {} orders through the API at {:.0} sagas/s, POST p99 {:.2} ms, completion p99 {:.2} ms",
        load.orders,
        load.sagas_per_sec(),
        load.requests.as_ref().map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0),
        load.latency_ms(0.99)
    );
    let _ = stop_http.send(true);
    server.await??;
    node.shutdown().await?;
    Ok(())
}

/// Options of `causeway bench kafka`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaBenchArgs {
    /// The broker (host:port).
    #[arg(long = "kafka-bootstrap", env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: String,
    /// Events in the log to mirror.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
}

/// Relay throughput against raw rdkafka producing the same records to the same broker, in one
/// run: the relay mirrors a filled log from its checkpoint to the head (reads, CloudEvents
/// headers, ordered delivery confirmation, checkpoints); the raw producer sends the very same
/// records (same topics, keys, partitions, headers, payloads) and waits for every delivery.
pub async fn kafka(args: KafkaBenchArgs) -> Result<()> {
    use event_store::{ExpectedVersion, NewEvent, StreamId};
    use rdkafka::producer::FutureProducer;
    use services::kafka::{partition_of_stream, relay, topic_for, KafkaConfig};

    anyhow::ensure!(args.events > 0, "--events must be at least 1");
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), 256, Durability::Periodic { interval: Duration::from_millis(5) })?;
    // 1,000 streams over four categories, 100 events per append.
    let categories = ["order", "payment", "shipment", "saga"];
    let streams: Vec<StreamId> = (0..1000)
        .map(|i| StreamId::compose(categories[i % 4], uuid::Uuid::now_v7()))
        .collect::<Result<_, _>>()?;
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(args.payload.saturating_sub(11)));
    let mut appended = 0;
    while appended < args.events {
        let n = (args.events - appended).min(100);
        let stream = &streams[(appended / 100) as usize % streams.len()];
        let events = (0..n).map(|_| NewEvent::json("Happened", body.clone().into_bytes())).collect();
        store.append_to(stream, ExpectedVersion::Any, events).await?;
        appended += n;
    }
    let head = store.head();
    let node = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let config = KafkaConfig { partitions: 4, ..KafkaConfig::new(args.bootstrap.clone(), node.clone()) };
    config.validate().map_err(anyhow::Error::msg)?;
    let topics: Vec<String> = categories.iter().map(|c| format!("{c}_domain_events")).collect();
    services::kafka::ensure_topics(&config, &topics).await?;
    header(&format!(
        "Kafka relay vs raw rdkafka, {head} events of {} bytes, 4 partitions per topic, lz4, acks=all, idempotent",
        args.payload
    ));

    // The relay, from an empty checkpoint to the head.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(relay::run(store.clone(), config.clone(), rx));
    loop {
        if store.checkpoint(relay::CHECKPOINT)?.unwrap_or(0) >= head {
            break;
        }
        anyhow::ensure!(!task.is_finished(), "the relay stopped early");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let relay_secs = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await??;

    // Raw rdkafka: the same records, every delivery awaited.
    let raw_config = KafkaConfig { node_id: format!("{node}-raw"), ..config.clone() };
    let producer: FutureProducer = raw_config.producer().create()?;
    let source = raw_config.source();
    let events: Vec<event_store::RecordedEvent> = store.read_all(1).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for e in &events {
        let topic = topic_for(&e.stream_id);
        let record = relay::record(e, &topic, partition_of_stream(&e.stream_id, 4), &source);
        pending.push_back(producer.send_result(record).map_err(|(err, _)| err)?);
        // The same number in flight as the relay's window.
        if pending.len() >= raw_config.window {
            if let Some(f) = pending.pop_front() {
                f.await?.map_err(|(err, _)| err)?;
            }
        }
    }
    for f in pending {
        f.await?.map_err(|(err, _)| err)?;
    }
    let raw_secs = started.elapsed().as_secs_f64();

    println!("| producer | seconds | events/s | vs raw |");
    println!("|----------|--------:|---------:|-------:|");
    println!(
        "| raw rdkafka (same records, same window) | {raw_secs:.2} | {:.0} | 100% |",
        head as f64 / raw_secs
    );
    println!(
        "| Causeway relay (log read, headers, ordered checkpoints) | {relay_secs:.2} | {:.0} | {:.0}% |",
        head as f64 / relay_secs,
        100.0 * raw_secs / relay_secs
    );
    Ok(())
}
