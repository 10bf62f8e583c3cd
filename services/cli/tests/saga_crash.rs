//! Crash in the middle of sagas with a real `kill -9`: `causeway load` is killed while hundreds of
//! sagas are in flight, then a restarted node is killed again as soon as its log says it began
//! recovering them (with sagas still unfinished), then a node runs to the end. `causeway verify`
//! must then find every saga ended and every invariant kept.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn spawn(args: &[&str], dir: &Path) -> Child {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn causeway")
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
}

fn terminate(child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(status.success());
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "the node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(BIN).arg("verify").arg("--data-dir").arg(dir).output().expect("verify");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for_store(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("db").exists() {
        assert!(Instant::now() < deadline, "the store was not created");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sagas_finish_and_invariants_hold_after_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    // 1. Load, killed mid-flight.
    let load = spawn(
        &["load", "--orders", "100000", "--concurrency", "256", "--skus", "5", "--undeliverable", "0.1"],
        &data,
    );
    wait_for_store(&data);
    std::thread::sleep(Duration::from_millis(2500));
    kill9(load);
    let (ok, report) = verify(&data);
    assert!(!ok && report.contains("unfinished saga"), "sagas were in flight at the kill:\n{report}");
    assert!(!report.contains("problem:"), "the log and the invariants hold even mid-flight:\n{report}");

    // 2. A node restarted on the log, killed as soon as it says it began recovering.
    let log_path = dir.path().join("recovering.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let node = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn causeway");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("recovering in-flight sagas") {
        assert!(Instant::now() < deadline, "the restarted node never began recovering");
        std::thread::sleep(Duration::from_millis(1));
    }
    kill9(node);
    let (ok, report) = verify(&data);
    assert!(!ok && report.contains("unfinished saga"), "it was killed with sagas still in flight:\n{report}");
    assert!(!report.contains("problem:"), "the log and the invariants hold after the second kill:\n{report}");

    // 3. A node that runs until every saga ended, then stops gracefully.
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_port();
        let node = spawn(&["serve", "--listen", &format!("127.0.0.1:{port}")], &data);
        std::thread::sleep(Duration::from_secs(3));
        // The REST API answers while the node runs.
        assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"), "healthz");
        assert!(http_get(port, "/readyz").starts_with("HTTP/1.1 200"), "readyz");
        let status = terminate(node);
        assert!(status.success(), "graceful stop exits 0, got {status}");
        let (ok, report) = verify(&data);
        assert!(!report.contains("problem:"), "an invariant is broken:\n{report}");
        if ok {
            assert!(report.contains("OK"));
            let completed: u64 = report
                .split("sagas: ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("completed count");
            assert!(completed > 0, "{report}");
            return;
        }
        last = report;
    }
    panic!("sagas still unfinished after restarts:\n{last}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    // A busy machine can take a while to bring the node up: retry the connection, do not guess.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "the node did not listen on {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
