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
    let out = run(&["load", "--orders", "20", "--gateway-failure-rate", "1", "--data-dir", data]);
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
