//! Crash test with a real `kill -9`: a child process appends in fsync mode from 32 tasks and
//! reports every acknowledgement; we kill it at random moments, reopen the store and check that
//! every acknowledged event is there at its acknowledged position, positions are gapless, no batch
//! is half visible, and appending continues.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use event_store::{EventStore, ExpectedVersion, NewEvent, SledConfig, SledStorage, StoreConfig, StreamId};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const ROUNDS: u64 = 24;

struct Ack {
    first: u64,
    last: u64,
    ids: Vec<Uuid>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let ids = parts.next()?.split(',').map(|s| s.parse().ok()).collect::<Option<Vec<Uuid>>>()?;
    Some(Ack { first, last, ids })
}

#[test]
fn acknowledged_appends_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let mut total_acked = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
            .arg(dir.path())
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash-writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).expect("child became ready");
        assert!(ready.starts_with("READY"), "unexpected first line {ready:?}");
        // Wait for the first acknowledgement, so appends are in full flight whatever the machine's
        // load: a fixed delay after READY can end before a busy machine's first fsync does.
        let first_ack = rx.recv_timeout(Duration::from_secs(30)).expect("the child acknowledged an append");
        assert!(first_ack.starts_with("ACK "), "unexpected line {first_ack:?}");
        // Then kill at a random instant.
        let kill_after = Duration::from_millis(rng.gen_range(0..400));
        let started = Instant::now();
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the child was killed, not finished");
        reader.join().expect("reader");
        let acks: Vec<Ack> =
            std::iter::once(first_ack).chain(rx.try_iter()).filter_map(|l| parse_ack(&l)).collect();
        assert!(!acks.is_empty(), "round {round}: the child acknowledged nothing before the kill");
        total_acked += acks.len();

        rt.block_on(async {
            let storage = SledStorage::open(&SledConfig::new(dir.path())).expect("reopen after kill -9");
            let store = EventStore::open(storage, StoreConfig::default()).expect("open store");
            let report = store.verify().expect("verify");
            assert!(report.is_ok(), "round {round}: {:?}", &report.problems[..report.problems.len().min(5)]);
            assert_eq!(report.events, store.head(), "round {round}: positions are gapless up to the head");

            // Every acknowledged event is present at the acknowledged position.
            for ack in &acks {
                for (i, id) in ack.ids.iter().enumerate() {
                    let pos = ack.first + i as u64;
                    let e = store
                        .read_event(pos)
                        .expect("read")
                        .unwrap_or_else(|| panic!("round {round}: acknowledged position {pos} lost"));
                    assert_eq!(e.event_id, *id, "round {round}: position {pos} holds another event");
                }
                assert_eq!(ack.last, ack.first + ack.ids.len() as u64 - 1);
            }

            // No batch is half visible: every batch in the log has all its events.
            let mut batches: HashMap<String, (usize, usize)> = HashMap::new();
            for e in store.read_all(1) {
                let e = e.expect("decode");
                if e.event_type != "CrashTest" {
                    continue;
                }
                let size: usize = e.metadata["size"].parse().expect("size");
                let entry = batches.entry(e.metadata["batch"].clone()).or_insert((0, size));
                entry.0 += 1;
            }
            for (batch, (seen, size)) in &batches {
                assert_eq!(seen, size, "round {round}: batch {batch} is half visible");
            }

            // Appends continue after the crash.
            let head = store.head();
            let r = store
                .append_to(
                    &StreamId::new("recovery-check").expect("id"),
                    ExpectedVersion::Any,
                    vec![NewEvent::json("Resumed", b"{}".to_vec())],
                )
                .await
                .expect("append after recovery");
            assert_eq!(r.first_position, head + 1);
        });
    }
    assert!(total_acked > ROUNDS as usize, "only {total_acked} acknowledgements in {ROUNDS} rounds");
}
