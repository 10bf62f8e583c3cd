//! `causeway load`: drives N orders through the embedded runtime and measures saga throughput,
//! completion latency (order placed → saga ended) and resident memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregates::order::{LineItem, OrderCommand};
use aggregates::shipping::Address;
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use event_store::{EventStore, Storage};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::gateway::PaymentGateway;
use crate::handlers;
use crate::runtime::Runtime;

/// What to drive.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Orders to place.
    pub orders: u64,
    /// Orders in flight at most (placed, saga not ended).
    pub concurrency: usize,
    /// Distinct SKUs.
    pub skus: u64,
    /// Fraction of orders sent to an undeliverable address (they compensate).
    pub undeliverable: f64,
    /// Report resident memory after this many completed orders too.
    pub memory_checkpoint: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub orders: u64,
    pub completed: u64,
    pub compensated: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// (orders ended, resident MiB, sagas in flight in memory)
    pub memory: Vec<(u64, f64, usize)>,
}

impl LoadReport {
    /// Ended sagas per second.
    pub fn sagas_per_sec(&self) -> f64 {
        (self.completed + self.compensated + self.failed) as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Resident memory of this process in MiB (Linux; 0 elsewhere).
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn order_of(stream: &str) -> Option<OrderId> {
    stream.strip_prefix("saga-").and_then(|s| s.parse().ok()).map(OrderId)
}

/// Runs the load against a started runtime.
pub async fn run<S: Storage, G: PaymentGateway>(
    rt: &Runtime<S, G>,
    spec: &LoadSpec,
) -> anyhow::Result<LoadReport> {
    let store: EventStore<S> = rt.store().clone();
    let per_sku = spec.orders * 3 + 100;
    for s in 0..spec.skus {
        handlers::add_stock(&store, Uuid::now_v7(), Sku(format!("SKU-{s}")), per_sku).await?;
    }
    let placed: Arc<Mutex<HashMap<OrderId, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let slots = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let bar = if spec.progress {
        let b = indicatif::ProgressBar::new(spec.orders);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} sagas ended  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };

    // Watch saga endings on the log.
    let mut sub = store.subscribe_category("saga", store.head());
    let watcher = {
        let placed = placed.clone();
        let slots = slots.clone();
        let bar = bar.clone();
        let saga = rt.saga().clone();
        let total = spec.orders;
        let checkpoint = spec.memory_checkpoint;
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut completed, mut compensated, mut failed) = (0u64, 0u64, 0u64);
            let mut memory = Vec::new();
            while completed + compensated + failed < total {
                let Some(e) = sub.next().await else { break };
                let e = e?;
                let outcome = match e.event_type.as_str() {
                    "SagaCompleted" => &mut completed,
                    "SagaCompensated" => &mut compensated,
                    "SagaFailed" => &mut failed,
                    _ => continue,
                };
                *outcome += 1;
                if let Some(t) = order_of(&e.stream_id).and_then(|o| placed.lock().ok()?.remove(&o)) {
                    latency.record(t.elapsed().as_micros() as u64)?;
                }
                slots.add_permits(1);
                let ended = completed + compensated + failed;
                if let Some(b) = &bar {
                    b.set_position(ended);
                }
                if ended == checkpoint {
                    memory.push((ended, rss_mib(), saga.in_flight()));
                }
            }
            let ended = completed + compensated + failed;
            if memory.last().map(|m: &(u64, f64, usize)| m.0) != Some(ended) {
                memory.push((ended, rss_mib(), saga.in_flight()));
            }
            anyhow::Ok((completed, compensated, failed, latency, memory))
        })
    };

    let started = Instant::now();
    let address = |bad: bool| Address {
        line1: "1 Main St".into(),
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: if bad { "XX".into() } else { "DE".into() },
    };
    for i in 0..spec.orders {
        let permit = slots.acquire().await?;
        permit.forget(); // returned by the watcher when the saga ends
        let order_id = OrderId(Uuid::now_v7());
        let bad = spec.undeliverable > 0.0 && rand::random::<f64>() < spec.undeliverable;
        let cmd = OrderCommand::Place {
            order_id,
            customer_id: CustomerId(format!("customer-{}", i % 1000)),
            items: vec![LineItem {
                sku: Sku(format!("SKU-{}", i % spec.skus.max(1))),
                quantity: 1,
                unit_price: Money(1999),
            }],
            currency: Currency::from("EUR"),
            shipping_address: Some(address(bad)),
        };
        placed.lock().map_err(|_| anyhow::anyhow!("lock"))?.insert(order_id, Instant::now());
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = handlers::place_order(&store, Uuid::now_v7(), cmd).await {
                tracing::error!(error = %e, "placing an order failed");
            }
        });
    }
    let (completed, compensated, failed, latency, memory) = watcher.await??;
    if let Some(b) = bar {
        b.finish();
    }
    Ok(LoadReport {
        orders: spec.orders,
        completed,
        compensated,
        failed,
        elapsed: started.elapsed(),
        latency,
        memory,
    })
}

/// Prints the report as a table.
pub fn print(report: &LoadReport) {
    println!("| measure | value |");
    println!("|---------|------:|");
    println!("| orders | {} |", report.orders);
    println!(
        "| completed / compensated / failed | {} / {} / {} |",
        report.completed, report.compensated, report.failed
    );
    println!("| elapsed | {:.2} s |", report.elapsed.as_secs_f64());
    println!("| sagas/s | {:.0} |", report.sagas_per_sec());
    println!("| p50 completion latency | {:.2} ms |", report.latency_ms(0.5));
    println!("| p99 completion latency | {:.2} ms |", report.latency_ms(0.99));
    for (ended, rss, in_flight) in &report.memory {
        println!("| RSS after {ended} sagas ended | {rss:.0} MiB ({in_flight} sagas in memory) |");
    }
}
