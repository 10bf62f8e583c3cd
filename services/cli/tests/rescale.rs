//! Changing a role's pod count is refused with a message that names both layouts, both by a pod
//! whose store records another count and by a new pod (a new ordinal, an empty store) when the
//! cluster records another count; and the pod starts again with its recorded one
//! (deploy/README.md, "Changing the pod count").

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeway_tests::broker::Broker;

const BIN: &str = env!("CARGO_BIN_EXE_causeway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

fn serve(broker: &Broker, dir: &std::path::Path, port: u16, count: u32, log: &std::path::Path) -> Child {
    serve_as(broker, dir, port, 1, count, log)
}

fn serve_as(
    broker: &Broker,
    dir: &std::path::Path,
    port: u16,
    index: u32,
    count: u32,
    log: &std::path::Path,
) -> Child {
    let log = std::fs::File::create(log).expect("log");
    Command::new(BIN)
        .args([
            "serve",
            "--role",
            "saga",
            "--node-id",
            &format!("saga-{index}"),
            "--shard-index",
            &index.to_string(),
        ])
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

/// Waits until a pod that must refuse to start has exited; returns what it said.
async fn refused(mut pod: Child, log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = pod.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "a pod started with another pod count kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "it exits with an error");
    std::fs::read_to_string(log).expect("log")
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
    let said = refused(serve(&broker, &data, port, 3, &log), &log).await;
    assert!(said.contains("pod 1 of 2 of the saga role") && said.contains("pod 1 of 3"), "{said}");
    assert!(said.contains("Changing the pod count"), "{said}");
    // A new pod of a scale-up (pod 2 of 3, an empty store) refuses too: the cluster records 2
    // pods for the role, and its partitions would be replayed from the start by a pod that owns
    // none of their streams.
    let new_log = dir.path().join("saga-2.log");
    let said =
        refused(serve_as(&broker, &dir.path().join("saga-2"), free_port(), 2, 3, &new_log), &new_log).await;
    assert!(said.contains("runs the saga role as 2 pods") && said.contains("pod 2 of 3"), "{said}");
    // Its other pod, new as well (an empty store, pod 0 of 2), agrees with the cluster: it starts.
    let other_port = free_port();
    let other =
        serve_as(&broker, &dir.path().join("saga-0"), other_port, 0, 2, &dir.path().join("saga-0.log"));
    wait_ready(other_port).await;
    stop(other);
    // With its recorded count it starts again.
    let pod = serve(&broker, &data, port, 2, &log);
    wait_ready(port).await;
    stop(pod);
}
