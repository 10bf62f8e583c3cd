//! Changing a role's pod count is refused with a message that names both layouts, and the pod
//! starts again with its recorded one (deploy/README.md, "Changing the pod count").

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeway_tests::broker::Broker;

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn serve(broker: &Broker, dir: &std::path::Path, port: u16, count: u32, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(BIN)
        .args(["serve", "--role", "saga", "--node-id", "saga-1", "--shard-index", "1"])
        .args(["--shard-count", &count.to_string(), "--kafka-partitions", "4"])
        .args(["--kafka-bootstrap", &broker.bootstrap(), "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn")
}

async fn wait_ready(port: u16) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the pod did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(mut child: Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(child.wait().expect("wait").success(), "a graceful stop exits 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_refuses_another_pod_count_than_its_store_was_written_with() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("saga-1");
    let log = dir.path().join("saga-1.log");
    let port = free_port();
    // Pod 1 of 2 records its layout at first start.
    let pod = serve(&broker, &data, port, 2, &log);
    wait_ready(port).await;
    stop(pod);
    // Started as pod 1 of 3, it refuses, naming both layouts and where the procedure is.
    let mut pod = serve(&broker, &data, port, 3, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = pod.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "a pod started with another pod count kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("pod 1 of 2 of the saga role") && said.contains("pod 1 of 3"), "{said}");
    assert!(said.contains("Changing the pod count"), "{said}");
    // With its recorded count it starts again.
    let pod = serve(&broker, &data, port, 2, &log);
    wait_ready(port).await;
    stop(pod);
}
