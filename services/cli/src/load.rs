//! `causeway load`: drives N orders through the embedded runtime ([`run`]) or through a running
//! node's REST API ([`run_remote`]), and measures saga throughput, completion latency (order
//! placed → saga ended), request latency (remote) and resident memory (in process).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregates::order::{LineItem, OrderCommand};
use aggregates::shipping::Address;
use aggregates::{Currency, CustomerId, Money, OrderId, Sku};
use event_store::{EventStore, Storage};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use uuid::Uuid;

use services::app::commands;
use services::app::gateway::PaymentGateway;
use services::node::Runtime;

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
    /// Report resident memory each time this many more orders have ended (0: only at the end).
    pub memory_checkpoint: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Orders placed per second at most (open loop: the pace does not wait for sagas to end,
    /// up to `concurrency` in flight); `None` places as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Remote runs: how often an order refused with 429/503 is sent again (with the same
    /// Idempotency-Key), each time after the answer's `Retry-After`.
    pub retries: u32,
    /// Remote runs: how long to wait, once every order is sent, for the accepted sagas to end.
    pub drain: Duration,
    /// Remote runs: the node's read token (its live feed needs it when the node has one).
    pub read_token: Option<String>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub orders: u64,
    pub completed: u64,
    pub compensated: u64,
    pub failed: u64,
    /// Sagas parked for an operator (a step ran out of attempts).
    pub quarantined: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// (orders ended, resident MiB, sagas in flight in memory, store size on disk in MiB)
    pub memory: Vec<(u64, f64, usize, f64)>,
    /// Latency of `POST /api/orders` (remote runs only).
    pub requests: Option<Histogram<u64>>,
    /// Requests that failed otherwise (remote runs only), with the first reason.
    pub errors: (u64, Option<String>),
    /// What the node answered (remote runs only).
    pub intake: Intake,
    /// In-process runs with memory checkpoints: the store's live data by kind at the end.
    pub space: Vec<(&'static str, u64, u64)>,
    /// The store's size on disk at the end (in-process runs).
    pub disk_bytes: u64,
}

/// How a remote node took the orders offered.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    /// How long the orders were being offered.
    pub offered_for: Duration,
    /// Orders accepted (2xx), after retries.
    pub accepted: u64,
    /// 429/503 answers (each refused attempt).
    pub refusals: u64,
    /// ... of those without a `Retry-After` header (should be none).
    pub refusals_without_retry_after: u64,
    /// Orders given up on after their last retry was refused.
    pub refused: u64,
    /// Sends again after a refusal.
    pub retried: u64,
    /// Accepted orders whose saga was seen ending within the offering time.
    pub ended_while_offered: u64,
    /// 504 answers, or no answer in the client's time (65 s): the outcome is unknown. The order
    /// is sent again with the same Idempotency-Key, at least 3 times (more with `retries`).
    pub timeouts: u64,
    /// Orders whose outcome was still unknown after their last retry (and whose saga was not
    /// seen ending): not counted as accepted or as ended.
    pub unknown: u64,
}

impl LoadReport {
    /// Ended sagas per second.
    pub fn sagas_per_sec(&self) -> f64 {
        (self.completed + self.compensated + self.failed + self.quarantined) as f64
            / self.elapsed.as_secs_f64()
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

/// A bar of ended sagas, when the spec asks for one.
fn progress_bar(spec: &LoadSpec) -> Option<indicatif::ProgressBar> {
    spec.progress.then(|| {
        let b = indicatif::ProgressBar::new(spec.orders);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} sagas ended  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
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
        commands::add_stock(&store, Uuid::now_v7(), Sku(format!("SKU-{s}")), per_sku, None).await?;
    }
    let placed: Arc<Mutex<HashMap<OrderId, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let slots = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let bar = progress_bar(spec);

    // Watch saga endings on the log.
    let mut sub = store.subscribe_category("saga", store.head());
    let watcher = {
        let placed = placed.clone();
        let slots = slots.clone();
        let bar = bar.clone();
        let saga = rt.saga().cloned();
        let total = spec.orders;
        let checkpoint = spec.memory_checkpoint;
        let sized = store.clone();
        let disk = move || sized.storage().size_on_disk().map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut completed, mut compensated, mut failed, mut quarantined) = (0u64, 0u64, 0u64, 0u64);
            let mut memory = Vec::new();
            while completed + compensated + failed + quarantined < total {
                let Some(e) = sub.next().await else { break };
                let e = e?;
                let outcome = match e.event_type.as_str() {
                    "SagaCompleted" => &mut completed,
                    "SagaCompensated" => &mut compensated,
                    "SagaFailed" => &mut failed,
                    "SagaQuarantined" => &mut quarantined,
                    _ => continue,
                };
                // Each order counts once, at its first end (a quarantined saga may end later).
                let Some(t) = order_of(&e.stream_id).and_then(|o| placed.lock().ok()?.remove(&o)) else {
                    continue;
                };
                *outcome += 1;
                latency.record(t.elapsed().as_micros() as u64)?;
                slots.add_permits(1);
                let ended = completed + compensated + failed + quarantined;
                if let Some(b) = &bar {
                    b.set_position(ended);
                }
                if checkpoint > 0 && ended % checkpoint == 0 {
                    memory.push((ended, rss_mib(), saga.as_ref().map_or(0, |s| s.in_flight()), disk()));
                }
            }
            let ended = completed + compensated + failed + quarantined;
            if memory.last().map(|m: &(u64, f64, usize, f64)| m.0) != Some(ended) {
                memory.push((ended, rss_mib(), saga.as_ref().map_or(0, |s| s.in_flight()), disk()));
            }
            anyhow::Ok(((completed, compensated, failed, quarantined), latency, memory))
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
            if let Err(e) = commands::place_order(&store, Uuid::now_v7(), cmd, None).await {
                tracing::error!(error = %e, "placing an order failed");
            }
        });
    }
    let ((completed, compensated, failed, quarantined), latency, memory) = watcher.await??;
    let space = if spec.memory_checkpoint > 0 { store.space_by_kind()? } else { Vec::new() };
    if let Some(b) = bar {
        b.finish();
    }
    Ok(LoadReport {
        orders: spec.orders,
        completed,
        compensated,
        failed,
        quarantined,
        elapsed: started.elapsed(),
        latency,
        memory,
        requests: None,
        errors: (0, None),
        intake: Intake::default(),
        space,
        disk_bytes: store.storage().size_on_disk().unwrap_or(0),
    })
}

/// Prints the report as a table.
pub fn print(report: &LoadReport) {
    println!("| measure | value |");
    println!("|---------|------:|");
    println!("| orders | {} |", report.orders);
    println!(
        "| completed / compensated / failed / quarantined | {} / {} / {} / {} |",
        report.completed, report.compensated, report.failed, report.quarantined
    );
    println!("| elapsed | {:.2} s |", report.elapsed.as_secs_f64());
    println!("| sagas/s | {:.0} |", report.sagas_per_sec());
    println!("| p50 completion latency | {:.2} ms |", report.latency_ms(0.5));
    println!("| p95 completion latency | {:.2} ms |", report.latency_ms(0.95));
    println!("| p99 completion latency | {:.2} ms |", report.latency_ms(0.99));
    if let Some(h) = &report.requests {
        println!("| p50 POST /api/orders | {:.2} ms |", h.value_at_quantile(0.5) as f64 / 1000.0);
        println!("| p99 POST /api/orders | {:.2} ms |", h.value_at_quantile(0.99) as f64 / 1000.0);
    }
    if report.requests.is_some() {
        let i = &report.intake;
        let secs = i.offered_for.as_secs_f64().max(1e-9);
        println!(
            "| offered | {} orders in {:.1} s ({:.0}/s) |",
            report.orders,
            secs,
            report.orders as f64 / secs
        );
        println!("| accepted | {} ({:.0}/s) |", i.accepted, i.accepted as f64 / secs);
        println!(
            "| refused (429/503 answers; orders given up) | {} ({:.0}/s); {} |",
            i.refusals,
            i.refusals as f64 / secs,
            i.refused
        );
        println!("| refusals without Retry-After | {} |", i.refusals_without_retry_after);
        println!("| sent again (after Retry-After, or after a 504) | {} |", i.retried);
        println!(
            "| 504 answers (outcome unknown); orders still unknown at the end | {}; {} |",
            i.timeouts, i.unknown
        );
        println!(
            "| completed while offering (goodput) | {} ({:.0}/s) |",
            i.ended_while_offered,
            i.ended_while_offered as f64 / secs
        );
        let ended = report.completed + report.compensated + report.failed + report.quarantined;
        println!("| accepted, not ended after the drain | {} |", i.accepted.saturating_sub(ended));
    }
    if report.errors.0 > 0 {
        println!(
            "| failed requests | {} (first: {}) |",
            report.errors.0,
            report.errors.1.as_deref().unwrap_or("?")
        );
    }
    if !report.space.is_empty() {
        let live: u64 = report.space.iter().map(|(_, _, b)| b).sum();
        for (kind, n, bytes) in &report.space {
            println!("| live data: {kind} | {n} entries, {:.0} MiB |", *bytes as f64 / 1048576.0);
        }
        println!(
            "| on disk beyond the live data (sled's overhead and garbage) | {:.0} MiB of {:.0} MiB |",
            report.disk_bytes.saturating_sub(live) as f64 / 1048576.0,
            report.disk_bytes as f64 / 1048576.0
        );
    }
    for (ended, rss, in_flight, disk) in &report.memory {
        println!("| after {ended} sagas ended | RSS {rss:.0} MiB, disk {disk:.0} MiB ({in_flight} sagas in memory) |");
    }
}

/// Timing of one order in a remote run.
#[derive(Debug, Default)]
struct Timings {
    /// The orders this run places and has not yet seen end or given up on.
    ours: HashSet<OrderId>,
    /// Sent, saga not seen ending yet.
    placed: HashMap<OrderId, Instant>,
    /// Saga ended before the POST's answer arrived.
    ended_early: HashMap<OrderId, Instant>,
    /// Completion latencies (µs) of those, recorded when the answer arrived.
    early_latencies: Vec<u64>,
}

/// Request latency, failures and the first failure's reason.
type RequestStats = (Histogram<u64>, u64, Option<String>);

/// The complete Server-Sent Events in `buf` (removed from it): type and data of each.
fn sse_frames(buf: &mut String) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let frame: String = buf.drain(..end + 2).collect();
        let (mut kind, mut data) = (String::new(), String::new());
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        out.push((kind, data));
    }
    out
}

/// Drives `spec.orders` orders through the REST API of the node at `base` (like
/// `http://127.0.0.1:8080`): stocks `spec.skus` SKUs, places orders with at most
/// `spec.concurrency` sagas in flight, and follows the live event feed to time each saga's end.
pub async fn run_remote(base: &str, spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    use anyhow::Context;
    use futures::StreamExt;
    let base = base.trim_end_matches('/').to_owned();
    // Longer than the node's own request time (30 s by default), so the node's 504 arrives
    // before the client gives up; a client time-out is an unknown outcome all the same.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &spec.read_token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the read token must be printable ASCII")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(spec.concurrency.max(1))
        .timeout(CLIENT_TIMEOUT)
        .default_headers(headers)
        .build()?;
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .with_context(|| format!("no Causeway node answers at {base}"))?;
    anyhow::ensure!(ready.status().is_success(), "the node at {base} is not ready ({})", ready.status());
    let per_sku = spec.orders * 3 + 100;
    for s in 0..spec.skus {
        let r = client
            .post(format!("{base}/api/products/SKU-{s}/stock"))
            .json(&serde_json::json!({ "quantity": per_sku }))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "stocking SKU-{s} failed: {}", r.text().await?);
    }
    // Follow the log from now on (the subscription exists once the headers arrive).
    let feed = client
        .get(format!("{base}/api/events/live"))
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await?
        .error_for_status()?;
    let timings: Arc<Mutex<Timings>> = Arc::default();
    let slots = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let bar = progress_bar(spec);
    // Requests that failed or were refused for good: no saga ends for them.
    let failed_requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Set when the last order was first sent, and when every request was answered.
    let offered_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let answered_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let watcher = {
        let (timings, slots, bar, total) = (timings.clone(), slots.clone(), bar.clone(), spec.orders);
        let (failed_requests, offered_at, answered_at, drain) =
            (failed_requests.clone(), offered_at.clone(), answered_at.clone(), spec.drain);
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3)?;
            let (mut completed, mut compensated, mut failed, mut quarantined) = (0u64, 0u64, 0u64, 0u64);
            let mut ended_while_offered = 0u64;
            let mut body = feed.bytes_stream();
            let mut buf = String::new();
            while completed + compensated + failed + quarantined
                < total - failed_requests.load(std::sync::atomic::Ordering::Acquire)
            {
                if answered_at.get().is_some_and(|t| t.elapsed() > drain) {
                    break; // what has not ended by now is reported as not ended
                }
                let chunk = match tokio::time::timeout(Duration::from_millis(200), body.next()).await {
                    Err(_) => continue, // look at the failed requests again
                    Ok(None) => anyhow::bail!("the live feed ended early"),
                    Ok(Some(chunk)) => chunk?,
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                for (kind, data) in sse_frames(&mut buf) {
                    let outcome = match kind.as_str() {
                        "SagaCompleted" => &mut completed,
                        "SagaCompensated" => &mut compensated,
                        "SagaFailed" => &mut failed,
                        "SagaQuarantined" => &mut quarantined,
                        _ => continue,
                    };
                    let event: serde_json::Value = serde_json::from_str(&data)?;
                    let Some(order) = event["stream_id"].as_str().and_then(order_of) else { continue };
                    let mut t = timings.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                    if !t.ours.remove(&order) {
                        continue; // another client's order, or one given up on
                    }
                    *outcome += 1;
                    if offered_at.get().is_none() {
                        ended_while_offered += 1;
                    }
                    match t.placed.remove(&order) {
                        Some(sent) => latency.record(sent.elapsed().as_micros() as u64)?,
                        None => {
                            t.ended_early.insert(order, Instant::now());
                        }
                    }
                    slots.add_permits(1);
                    if let Some(b) = &bar {
                        b.set_position(completed + compensated + failed + quarantined);
                    }
                }
            }
            anyhow::Ok(((completed, compensated, failed, quarantined), latency, ended_while_offered))
        })
    };
    let intake: Arc<Mutex<Intake>> = Arc::default();
    let requests: Arc<Mutex<RequestStats>> = Arc::new(Mutex::new((Histogram::new(3)?, 0, None)));
    let started = Instant::now();
    let mut posts = tokio::task::JoinSet::new();
    let mut pace = spec.rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for i in 0..spec.orders {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let permit = slots.acquire().await?;
        permit.forget(); // returned by the watcher when the saga ends
        let bad = spec.undeliverable > 0.0 && rand::random::<f64>() < spec.undeliverable;
        let body = serde_json::json!({
            "customer_id": format!("customer-{}", i % 1000),
            "items": [{"sku": format!("SKU-{}", i % spec.skus.max(1)), "quantity": 1, "unit_price_minor": 1999}],
            "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115",
                "country": if bad { "XX" } else { "DE" }},
        });
        let (client, url, timings, requests, slots, failed_requests, intake) = (
            client.clone(),
            format!("{base}/api/orders"),
            timings.clone(),
            requests.clone(),
            slots.clone(),
            failed_requests.clone(),
            intake.clone(),
        );
        let retries = spec.retries;
        let key = Uuid::now_v7().to_string();
        // The order this key places: only its saga's end is counted as this order's.
        let order = services::http::order_id_of_key(services::http::idempotency_uuid(&key));
        timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ours.insert(order);
        posts.spawn(async move {
            // Refusals are sent again `retries` times; an unknown outcome (a 504, or no answer in
            // the client's time) at least UNKNOWN_RESENDS times, since only the same key sent
            // again tells whether the order was recorded.
            let (mut refusals, mut unknowns, mut was_unknown) = (0u32, 0u32, false);
            let (sent, outcome) = loop {
                let sent = Instant::now();
                let outcome = post_order(&client, &url, &key, &body).await;
                let retry_after = match &outcome {
                    Ok(Posted::Refused { retry_after }) => {
                        let mut i = intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        i.refusals += 1;
                        if retry_after.is_none() {
                            i.refusals_without_retry_after += 1;
                        }
                        if refusals >= retries {
                            break (sent, outcome);
                        }
                        refusals += 1;
                        *retry_after
                    }
                    Ok(Posted::Unknown) => {
                        intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).timeouts += 1;
                        was_unknown = true;
                        if unknowns >= retries.max(UNKNOWN_RESENDS) {
                            break (sent, outcome);
                        }
                        unknowns += 1;
                        None
                    }
                    _ => break (sent, outcome),
                };
                {
                    let mut i = intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    i.retried += 1;
                }
                tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
            };
            let took = sent.elapsed().as_micros() as u64;
            let outcome = match outcome {
                Ok(Posted::Accepted(answered)) if answered != order => {
                    Err(anyhow::anyhow!("the node placed order {answered} for the key of order {order}"))
                }
                other => other,
            };
            match outcome {
                Ok(Posted::Accepted(_)) => {
                    intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).accepted += 1;
                    let _ = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.record(took);
                    let mut t = timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    match t.ended_early.remove(&order) {
                        Some(ended) => {
                            let us = ended.saturating_duration_since(sent).as_micros() as u64;
                            t.early_latencies.push(us);
                        }
                        None => {
                            t.placed.insert(order, sent);
                        }
                    }
                }
                other => {
                    // Given up on: its saga's end, if one comes, is not counted. If it has
                    // already ended (a 504 whose order was recorded), it counts as accepted.
                    if !timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ours.remove(&order)
                    {
                        intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).accepted += 1;
                        return;
                    }
                    // One category per order: an order that was once answered 504 may be
                    // recorded, so it stays unknown even if a later send was refused.
                    match other {
                        Err(e) => {
                            let mut req = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            req.1 += 1;
                            req.2.get_or_insert_with(|| e.to_string());
                        }
                        Ok(_) if was_unknown => {
                            intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unknown += 1;
                        }
                        Ok(_) => {
                            intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).refused += 1
                        }
                    }
                    failed_requests.fetch_add(1, std::sync::atomic::Ordering::Release);
                    // No saga will end for it: free its slot.
                    slots.add_permits(1);
                }
            }
        });
    }
    let _ = offered_at.set(Instant::now());
    let offered_for = started.elapsed();
    while posts.join_next().await.is_some() {}
    let _ = answered_at.set(Instant::now());
    let errors = {
        let r = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (r.1, r.2.clone())
    };
    let ((completed, compensated, failed, quarantined), mut latency, ended_while_offered) = watcher.await??;
    for us in &timings.lock().map_err(|_| anyhow::anyhow!("lock"))?.early_latencies {
        latency.record(*us)?;
    }
    if let Some(b) = bar {
        b.finish();
    }
    let request_histogram = requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone();
    let taken = intake.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(LoadReport {
        orders: spec.orders,
        completed,
        compensated,
        failed,
        quarantined,
        elapsed: started.elapsed(),
        latency,
        memory: Vec::new(),
        requests: Some(request_histogram),
        errors,
        space: Vec::new(),
        disk_bytes: 0,
        intake: Intake { offered_for, ended_while_offered, ..taken },
    })
}

/// How long the load generator waits for an answer to a POST: more than the node's request time.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(65);

/// Sends of an order whose outcome is unknown, at least (whatever `--retries` says).
const UNKNOWN_RESENDS: u32 = 3;

/// What became of one POST of an order.
enum Posted {
    /// 2xx: placed (or forwarded to its owner).
    Accepted(OrderId),
    /// 429 or 503: refused; try again after `retry_after`.
    Refused { retry_after: Option<Duration> },
    /// 504: the node's request time ran out; the order may or may not be recorded.
    Unknown,
}

async fn post_order(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> anyhow::Result<Posted> {
    use anyhow::Context;
    let r = match client.post(url).header("Idempotency-Key", key).json(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Ok(Posted::Unknown),
        Err(e) => return Err(e.into()),
    };
    let status = r.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
    {
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(300)));
        return Ok(Posted::Refused { retry_after });
    }
    if status == reqwest::StatusCode::GATEWAY_TIMEOUT {
        return Ok(Posted::Unknown);
    }
    let v: serde_json::Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {v}");
    v["order_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .map(OrderId)
        .map(Posted::Accepted)
        .context("no order_id in the answer")
}
