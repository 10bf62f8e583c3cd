//! The sharded production topology under a randomized nemesis: 2 pods of every role (inventory
//! sharded by SKU) and 2 query pods, orders over every saga path, pods killed with `kill -9`, the
//! broker killed and stopped, pods paused past their deadlines. Nothing may be lost, doubled,
//! misrouted or left unfinished ([`causeway_tests::check`]). A time-boxed run with a fixed seed
//! and one with a random seed (printed, with the command that reproduces it); longer soaks run
//! with `scripts/soak.sh`.

use std::time::Duration;

use causeway_tests::faults::{run, Spec};

fn assert_clean(minutes: f64, spec: &Spec) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    eprintln!(
        "fault run with seed {} ({minutes} min of load); reproduce: scripts/soak.sh {minutes} {}",
        spec.seed, spec.seed
    );
    let report = rt.block_on(run(spec));
    eprintln!("{}", report.row(minutes));
    assert!(report.accepted > 0, "no order was accepted: {report:?}");
    assert!(
        report.outcomes.get("completed").copied().unwrap_or(0) > 0,
        "nothing completed: {:?}",
        report.outcomes
    );
    assert!(
        report.outcomes.get("compensated").copied().unwrap_or(0) > 0,
        "nothing compensated: {:?}",
        report.outcomes
    );
    assert!(!report.faults.is_empty(), "no fault was injected");
    assert!(
        report.violations.is_empty(),
        "seed {}: {} violations (reproduce: {}):\n{}",
        report.seed,
        report.violations.len(),
        report.reproduce(minutes),
        report.violations.join("\n")
    );
}

#[test]
fn the_sharded_cluster_loses_nothing_under_faults() {
    let load = 1.0;
    assert_clean(load, &Spec::new(20_261_202, Duration::from_secs_f64(load * 60.0)));
    let seed = rand::random::<u64>() % 1_000_000_000;
    assert_clean(load, &Spec::new(seed, Duration::from_secs_f64(load * 60.0)));
}
