//! The `causeway` binary: bad input gets a clear error (exit 2, never a panic), and the operator
//! commands work on a real store.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_LOG", "error").output().expect("run causeway")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs an `events ... --json` command that must succeed; its lines, parsed.
fn json_events(args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(args);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here");
    let missing = missing.to_str().expect("utf8");
    for (args, expect) in [
        (vec!["verify", "--data-dir", missing], "no store at"),
        (vec!["dead-letters", "--data-dir", missing], "no store at"),
        (vec!["load", "--orders", "0"], "must be at least 1"),
        (vec!["load", "--orders", "5", "--gateway-failure-rate", "2"], "between 0 and 1"),
        (vec!["serve", "--data-dir", missing, "--cache-mib", "0"], "--cache-mib must be at least 1"),
        (vec!["dead-letters", "--data-dir", missing, "--consumer", "nope"], "unknown consumer"),
        (vec!["load", "--orders", "many"], "invalid value"),
        (vec!["load", "--orders", "5", "--cache-mib", "0"], "invalid value"),
        (vec!["load", "--target", "ftp://example"], "--target must be an http:// URL"),
        (vec!["load", "--target", "http://127.0.0.1:1", "--orders", "3"], "no Causeway node answers"),
        (vec!["serve", "--data-dir", missing, "--admin-token", "short"], "at least 16 characters"),
        (vec!["serve", "--data-dir", missing, "--role", "saga"], "talks to the other roles through Kafka"),
        (
            vec![
                "serve",
                "--data-dir",
                missing,
                "--kafka-bootstrap",
                "127.0.0.1:1",
                "--shard-count",
                "2",
                "--shard-index",
                "2",
            ],
            "the index must be 0 to count - 1",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                missing,
                "--kafka-bootstrap",
                "127.0.0.1:1",
                "--kafka-compression",
                "brotli",
            ],
            "compression",
        ),
        (vec!["restore", "--from-kafka", "--data-dir", missing], "Kafka is not configured"),
        (vec!["dead-letters", "--redrive", "not-a-uuid", "--consumer", "order-service"], "invalid value"),
    ] {
        let out = run(&args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(expect), "{args:?}: expected {expect:?} in {all}");
        assert!(!all.contains("panicked"), "{args:?}: {all}");
    }
}

#[test]
fn dead_letters_are_listed_and_redriven() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let data = data.to_str().expect("utf8");
    // A gateway that always fails: payment commands end up in the dead letters.
    let out = run(&[
        "load",
        "--orders",
        "20",
        "--gateway-failure-rate",
        "1",
        "--on-step-exhausted",
        "compensate",
        "--data-dir",
        data,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["dead-letters", "--data-dir", data, "--consumer", "payment-service", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(!letters.is_empty());
    assert!(letters.iter().all(|l| l["resolved"] == false && l["event_type"] == "TakePayment"));
    let id = letters[0]["event_id"].as_str().expect("id").to_owned();
    // The sagas compensated after their timeouts, so the payment was cancelled before it was
    // taken. Re-driving the stale command answers it (rejected) without calling the gateway,
    // even one still failing, and charges nothing.
    let out = run(&[
        "dead-letters",
        "--data-dir",
        data,
        "--consumer",
        "payment-service",
        "--redrive",
        &id,
        "--gateway-failure-rate",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("re-driven"), "{}", text(&out));
    let out = run(&["dead-letters", "--data-dir", data, "--consumer", "payment-service"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.lines().any(|l| l.contains(&id) && l.contains("resolved")), "{listing}");
    // The invariants still hold: no compensated order holds money.
    let out = run(&["verify", "--data-dir", data]);
    assert!(out.status.success() && text(&out).contains("OK"), "{}", text(&out));
}

fn open_store(data: &str) -> event_store::EventStore<event_store::SledStorage> {
    let storage = event_store::SledStorage::open(&event_store::SledConfig::new(data)).expect("open");
    event_store::EventStore::open(storage, event_store::StoreConfig::default()).expect("store")
}

#[test]
fn verify_catches_a_corrupted_read_model_and_a_broken_invariant() {
    use projections::models::{OrderSummaries, OrderSummary, SagaTimeline, SagaTimelines};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let data = data.to_str().expect("utf8");
    let out = run(&["load", "--orders", "40", "--undeliverable", "0.3", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["verify", "--data-dir", data]);
    assert!(out.status.success(), "a healthy node verifies: {}", text(&out));

    // Corrupt one order summary behind the projection's back (same checkpoint).
    let rt = tokio::runtime::Runtime::new().expect("rt");
    {
        let store = open_store(data);
        let models = projections::ReadModels::new(store.clone());
        let gen = models.generation(OrderSummaries::NAME).expect("gen");
        let cp = models.checkpoint(OrderSummaries::NAME, gen).expect("cp");
        let (key, mut doc): (String, OrderSummary) = models
            .scan(OrderSummaries::NAME, "order/", None, 1)
            .expect("scan")
            .into_iter()
            .next()
            .expect("an order");
        doc.total = aggregates::Money(doc.total.0 + 1);
        let mut tx = models.begin(OrderSummaries::NAME, gen);
        tx.put(&key, doc).expect("put");
        models.commit(tx, cp).expect("commit");
    }
    let out = run(&["verify", "--data-dir", data]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("read model order-summaries"), "{}", text(&out));
    // A rebuild mends it.
    let out = run(&["replay", "--data-dir", data, "--projection", "order-summaries"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["verify", "--data-dir", data]);
    assert!(out.status.success(), "verifies after the rebuild: {}", text(&out));

    // Break an invariant: money captured for a compensated order.
    {
        let store = open_store(data);
        let models = projections::ReadModels::new(store.clone());
        let compensated = models
            .scan::<SagaTimeline>(SagaTimelines::NAME, "saga/", None, 1000)
            .expect("scan")
            .into_iter()
            .find(|(_, t)| t.status == "compensated")
            .expect("a compensated order")
            .1
            .order_id;
        use aggregates::codec::DomainEvent;
        let captured =
            aggregates::payment::PaymentEvent::PaymentCaptured(aggregates::payment::PaymentCaptured {
                order_id: compensated,
                amount: aggregates::Money(999),
            });
        let e = event_store::NewEvent::json(captured.event_type(), captured.to_payload());
        let stream = event_store::StreamId::new(format!("payment-{compensated}")).expect("id");
        rt.block_on(store.append_to(&stream, event_store::ExpectedVersion::Any, vec![e])).expect("append");
    }
    let out = run(&["verify", "--data-dir", data]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("compensated but money is held"), "{}", text(&out));
}

#[test]
fn replay_from_a_timestamp_and_as_of_run_and_bad_times_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let data = data.to_str().expect("utf8");
    let out = run(&["load", "--orders", "20", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out));
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let out = run(&["replay", "--data-dir", data, "--projection", "all", "--from", "2026-01-01T00:00:00Z"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5, "{}", text(&out));
    // Each read model's progress ends with its summary, on stderr.
    // (A slow run also writes "<model>: n of N positions in ..." lines every 10 s; those have " of ".)
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summaries = stderr.lines().filter(|l| l.contains(" positions in ") && !l.contains(" of ")).count();
    assert_eq!(summaries, 5, "{}", text(&out));
    let out = run(&["replay", "--data-dir", data, "--projection", "stock-levels", "--as-of", &now]);
    assert!(out.status.success() && text(&out).contains("stock-levels@"), "{}", text(&out));
    let out = run(&["verify", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out));
    // Events as JSON lines: a category, in log order.
    let events = json_events(&["events", "--data-dir", data, "--category", "saga", "--limit", "5", "--json"]);
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e["stream_id"].as_str().is_some_and(|s| s.starts_with("saga-"))));
    assert!(events.windows(2).all(|w| w[0]["position"].as_u64() < w[1]["position"].as_u64()));
    assert_eq!(events[0]["event_type"], "SagaStarted");
    for (args, expect) in [
        (vec!["events", "--data-dir", data, "--stream", "bad id"], "invalid stream id"),
        (vec!["events", "--data-dir", data, "--from-time", "noon"], "not an RFC 3339 time"),
        (vec!["replay", "--data-dir", data, "--projection", "nope"], "unknown read model"),
        (
            vec!["replay", "--data-dir", data, "--projection", "all", "--from", "yesterday"],
            "not an RFC 3339 time",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(expect), "{}", text(&out));
    }
}

/// The "completed / compensated / failed / quarantined" counts of a load report.
fn outcomes(report: &str) -> Vec<u64> {
    report
        .lines()
        .find(|l| l.starts_with("| completed / compensated / failed"))
        .and_then(|l| l.split('|').nth(2))
        .map(|v| v.split('/').filter_map(|n| n.trim().parse::<u64>().ok()).collect())
        .expect("outcome row")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_listening(port: u16) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the node did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two loads at once on one node: each counts the sagas of its own orders only (one load's
/// orders all complete, the other's all compensate).
#[test]
fn load_drives_a_running_node_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let port = free_port();
    let mut node = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn serve");
    wait_listening(port);
    let target = format!("http://127.0.0.1:{port}");
    // Two loads on one node at once, each paced over about 3 s so that they overlap: each
    // counts the sagas of its own orders only (the other's end on the same live feed).
    let other = {
        let target = target.clone();
        std::thread::spawn(move || {
            let args = ["load", "--target", &target, "--orders", "30", "--concurrency", "4", "--rate", "10"];
            run(&[&args[..], &["--skus", "2", "--undeliverable", "1"]].concat())
        })
    };
    let args = ["load", "--target", &target, "--orders", "60", "--concurrency", "8", "--rate", "20"];
    let out = run(&[&args[..], &["--skus", "3", "--undeliverable", "0"]].concat());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("| orders | 60 |"), "{report}");
    assert_eq!(outcomes(&report), [60, 0, 0, 0], "{report}");
    assert!(report.contains("p99 POST /api/orders"), "{report}");
    let out = other.join().expect("the other load");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcomes(&text(&out)), [0, 30, 0, 0], "{}", text(&out));
    let status = Command::new("kill").args(["-TERM", &node.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(node.wait().expect("wait").success(), "graceful stop");
    let out = run(&["verify", "--data-dir", data.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("OK"), "{}", text(&out));
    // Its progress ends with a summary on stderr, of every event checked; stdout stays the report.
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let events: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("log: ")?.split(' ').next()?.parse().ok())
        .expect("the log line");
    assert!(stderr.contains(&format!("verify: {events} events in ")), "{stderr}");
    assert!(!stdout.contains("verify: "), "{stdout}");
}

#[test]
fn migrate_converts_a_store_of_the_first_format_and_keeps_the_old_one() {
    use event_store::{raw, NewEvent};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        // Store format 1 as the first builds wrote it: one log record per key, an index entry
        // per event, and the format marker.
        let db = sled::Config::new().path(&data).open().expect("sled");
        let tree = db.open_tree(raw::SLED_TREE).expect("tree");
        for p in 1..=20u64 {
            let stream = format!("order-{}", p % 3);
            let version = p.div_ceil(3);
            let event = NewEvent::json("Noted", format!("{{\"n\":{p}}}").into_bytes());
            for (k, v) in raw::entries(p, version, 1_000 * p, &stream, &event).expect("entries") {
                tree.insert(k, v).expect("insert");
            }
        }
        tree.insert(b"Mformat", &1u64.to_be_bytes()).expect("marker");
        db.flush().expect("flush");
    }
    let data = data.to_str().expect("utf8");
    let old = run(&["events", "--data-dir", data]);
    assert!(!old.status.success());
    assert!(text(&old).contains("causeway migrate"), "{}", text(&old));

    let out = run(&["migrate", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out));
    // The copy and the check of the copy each end with a summary of all 20 events, on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("migrate: copy: 20 events in ") && stderr.contains("migrate: verify: 20 events in "),
        "{stderr}"
    );
    assert!(
        text(&out).contains("migrated 20 events") && text(&out).contains("from store format 1"),
        "{}",
        text(&out)
    );
    let lines = json_events(&["events", "--data-dir", data, "--json"]);
    assert_eq!(lines.len(), 20);
    for (i, e) in lines.iter().enumerate() {
        let p = i as u64 + 1;
        assert_eq!(e["position"], p);
        assert_eq!(e["version"], p.div_ceil(3));
        assert_eq!(e["payload"]["n"], p);
    }
    let again = run(&["migrate", "--data-dir", data]);
    assert!(again.status.success() && text(&again).contains("already of store format"), "{}", text(&again));
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data.format-1-"))
        .collect();
    assert_eq!(kept.len(), 1, "the old store is kept");
    let missing = dir.path().join("none");
    let none = run(&["migrate", "--data-dir", missing.to_str().expect("utf8")]);
    assert!(!none.status.success() && text(&none).contains("no store at"), "{}", text(&none));
}

/// `causeway sagas` lists a running node's sagas and retries a quarantined one through its API
/// (with the tokens), refusing what the saga's state does not allow.
#[test]
fn sagas_lists_and_retries_a_quarantined_saga_on_a_running_node() {
    use std::time::{Duration, Instant};
    const ADMIN: &str = "cli-admin-token-000001";
    const READ: &str = "cli-read-token-0000001";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let port = free_port();
    let mut node = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--step-timeout-ms",
            "300",
            "--step-attempts",
            "2",
        ])
        .args(["--gateway-failure-rate", "1", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "error")
        .env("CAUSEWAY_ADMIN_TOKEN", ADMIN)
        .env("CAUSEWAY_READ_TOKEN", READ)
        .spawn()
        .expect("spawn serve");
    let url = format!("http://127.0.0.1:{port}");
    let sagas = |args: &[&str]| {
        Command::new(BIN)
            .arg("sagas")
            .args(args)
            .args(["--url", &url])
            .env("RUST_LOG", "error")
            .env_remove("CAUSEWAY_ADMIN_TOKEN")
            .env_remove("CAUSEWAY_READ_TOKEN")
            .output()
            .expect("run causeway sagas")
    };
    wait_listening(port);
    let out = run(&["load", "--target", &url, "--orders", "1", "--drain-secs", "20", "--read-token", READ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(outcomes(&text(&out)), [0, 0, 0, 1], "the payment never answers: {}", text(&out));
    // Without the read token the list is refused; with it, the quarantined saga is there.
    let out = sagas(&["list"]);
    assert!(!out.status.success() && text(&out).contains("401"), "{}", text(&out));
    // (The read model trails the log by a few ms.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let out = sagas(&["list", "--status", "quarantined", "--json", "--read-token", READ]);
        assert!(out.status.success(), "{}", text(&out));
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if let Some(id) = page["sagas"][0]["order_id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no quarantined saga listed: {page}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = sagas(&["list", "--read-token", READ]);
    let table = text(&out);
    assert!(table.starts_with("ORDER") && table.contains(&id) && table.contains("quarantined"), "{table}");
    // Refused: no admin token; a state that does not allow it (exit 1, the state named).
    let out = sagas(&["retry", &id, "--operator", "ops"]);
    assert!(!out.status.success() && text(&out).contains("admin token"), "{}", text(&out));
    let out =
        sagas(&["mark-compensation-done", &id, "--operator", "ops", "--reason", "r", "--admin-token", ADMIN]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the saga is quarantined"), "{}", text(&out));
    // Retried with the gateway still failing: the action is recorded, the saga goes on retrying
    // and is quarantined again; `show` prints the operator's action on the timeline.
    let out = sagas(&[
        "retry",
        &id,
        "--operator",
        "ops@example.com",
        "--reason",
        "try again",
        "--key",
        "k1",
        "--admin-token",
        ADMIN,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("retry: saga {id} is now")), "{}", text(&out));
    let again = ["retry", &id, "--operator", "ops@example.com", "--reason", "try again", "--key", "k1"];
    let out = sagas(&[&again[..], &["--admin-token", ADMIN]].concat());
    assert!(text(&out).contains("repeated"), "the same key is one action: {}", text(&out));
    // The same key for another request (another reason) is refused.
    let out = sagas(&["retry", &id, "--operator", "ops@example.com", "--key", "k1", "--admin-token", ADMIN]);
    assert!(!out.status.success() && text(&out).contains("Idempotency-Key"), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sagas(&["show", &id, "--read-token", READ]);
        let shown = text(&out);
        if shown.contains("OperatorActed") && shown.lines().next().is_some_and(|l| l.ends_with("quarantined"))
        {
            assert!(shown.contains("retry by ops@example.com: try again"), "{shown}");
            assert_eq!(shown.matches("OperatorActed").count(), 1, "{shown}");
            break;
        }
        assert!(Instant::now() < deadline, "never quarantined again after the retry: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill").args(["-TERM", &node.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(node.wait().expect("wait").success(), "graceful stop");
    // verify names the parked saga (it has not ended).
    let out = run(&["verify", "--data-dir", data.to_str().expect("utf8")]);
    assert!(
        !out.status.success() && text(&out).contains(&format!("quarantined saga: {id}")),
        "{}",
        text(&out)
    );
}
