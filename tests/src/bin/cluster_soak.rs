//! A long fault run of the sharded cluster: `cluster-soak <minutes> [seed]` (see
//! `scripts/soak.sh`). Prints the run's table row for RELIABILITY.md and every violation; exits 1
//! when there is one.

use std::time::Duration;

use causeway_tests::faults::{run, Spec};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let minutes: f64 = args.next().and_then(|m| m.parse().ok()).unwrap_or(10.0);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    if !(minutes.is_finite() && minutes > 0.0) {
        eprintln!("usage: cluster-soak <minutes> [seed]");
        return std::process::ExitCode::from(2);
    }
    eprintln!("fault run: seed {seed}, {minutes} minutes of load");
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let spec = Spec::new(seed, Duration::from_secs_f64(minutes * 60.0));
    let report = rt.block_on(run(&spec));
    println!("| seed | minutes | orders | faults | violations | command |");
    println!("|---|---:|---|---|---:|---|");
    println!("{}", report.row(minutes));
    println!("whole run: {:.1} min", report.elapsed.as_secs_f64() / 60.0);
    for v in &report.violations {
        println!("VIOLATION: {v}");
    }
    if report.violations.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
