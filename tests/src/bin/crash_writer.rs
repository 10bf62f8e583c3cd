//! Appends to a sled event store from many tasks in fsync mode until it is killed, printing one
//! line per acknowledged append: `ACK <first_position> <last_position> <event ids, comma separated>`.
//!
//! Each append is a batch of 1-4 events over one or two streams; every event carries the batch id
//! and size in its metadata so a checker can prove no batch is ever half visible.
//!
//! Usage: `crash-writer <store dir> <seed>`.

use std::io::Write;

use anyhow::Context;
use event_store::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, SledConfig, SledStorage, StoreConfig, StreamId,
};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: crash-writer <dir> <seed>")?;
    let seed: u64 = args.next().context("usage: crash-writer <dir> <seed>")?.parse().context("seed")?;
    let storage = SledStorage::open(&SledConfig::new(&dir))?;
    let store = EventStore::open(storage, StoreConfig::default())?;
    println!("READY {}", store.head());
    std::io::stdout().flush()?;
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + task);
            loop {
                let batch = Uuid::now_v7();
                let size: usize = rng.gen_range(1..=4);
                let split = if size > 1 && rng.gen_bool(0.5) { rng.gen_range(1..size) } else { size };
                let mk = |i: usize| {
                    NewEvent::json("CrashTest", format!("{{\"task\":{task},\"i\":{i}}}").into_bytes())
                        .with_metadata("batch", batch.to_string())
                        .with_metadata("size", size.to_string())
                };
                let events: Vec<_> = (0..size).map(mk).collect();
                let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
                let (first, second) = events.split_at(split);
                let a = StreamId::new(format!("order-{}", rng.gen_range(0..50))).expect("valid id");
                let mut req = AppendRequest::single(a.clone(), ExpectedVersion::Any, first.to_vec());
                if !second.is_empty() {
                    let mut b = StreamId::new(format!("payment-{}", rng.gen_range(0..50))).expect("valid id");
                    if b == a {
                        b = StreamId::new("payment-x").expect("valid id");
                    }
                    req = req.and(b, ExpectedVersion::Any, second.to_vec());
                }
                match store.append(req).await {
                    Ok(r) => {
                        let mut out = std::io::stdout().lock();
                        let _ =
                            writeln!(out, "ACK {} {} {}", r.first_position, r.last_position, ids.join(","));
                        let _ = out.flush();
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        std::process::exit(3);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
