//! The production topology on loopback: the test broker and `causeway serve --role ...` pods,
//! N of each role (each pod of a role owning its share of the role's partitions), started,
//! killed, paused and stopped one by one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::Broker;

/// The roles that own streams, in start order; then the query pods.
pub const OWNER_ROLES: [&str; 5] = ["order", "inventory", "payment", "shipping", "saga"];

/// The `causeway` binary: `CAUSEWAY_BIN`, or the one `cargo test --workspace` built next to this
/// test (`target/<profile>/causeway`).
pub fn causeway_bin() -> PathBuf {
    if let Ok(b) = std::env::var("CAUSEWAY_BIN") {
        return b.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("causeway");
    assert!(
        bin.exists(),
        "no causeway binary at {}: build it (cargo build --bin causeway) or set CAUSEWAY_BIN",
        bin.display()
    );
    bin
}

/// How many pods of each role, and how they are set up.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Pods of each owner role.
    pub pods: usize,
    /// Query pods.
    pub queries: usize,
    /// Partitions of every topic.
    pub partitions: u32,
    /// Extra arguments for the payment pods (the gateway's behaviour).
    pub payment_args: Vec<String>,
    /// Extra arguments for every pod.
    pub node_args: Vec<String>,
}

impl Default for Topology {
    fn default() -> Self {
        Self { pods: 2, queries: 2, partitions: 4, payment_args: Vec::new(), node_args: Vec::new() }
    }
}

/// A free loopback port (bound and let go: free at that moment).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

/// One pod.
#[derive(Debug)]
pub struct Node {
    /// Its role.
    pub role: &'static str,
    /// Its index among the role's pods.
    pub index: usize,
    /// Its REST port.
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    args: Vec<String>,
    bin: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// `role-index`: its node id.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role, self.index)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Starts it (again).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "warn,services=info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn a node");
        self.child = Some(child);
        self.paused = false;
    }

    /// Whether it runs (started, not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.paused {
                let _ = signal(c.id(), "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: it stops running without knowing.
    pub fn pause(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "STOP");
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(c) = &self.child {
            if self.paused {
                signal(c.id(), "CONT");
            }
        }
        self.paused = false;
    }

    /// SIGTERM and wait: `Ok` when it drained and exited 0.
    pub fn terminate(&mut self) -> Result<(), String> {
        self.resume();
        let Some(mut c) = self.child.take() else { return Ok(()) };
        signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match c.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("{} exited with {s}", self.name())),
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Err(format!("{} did not stop within 90 s of SIGTERM", self.name()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("{}: {e}", self.name())),
            }
        }
    }

    /// Its own last log lines (without librdkafka's connection noise).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let ours: Vec<&str> = log.lines().filter(|l| !l.contains("rdkafka")).collect();
        ours[ours.len().saturating_sub(n)..].iter().map(|l| (*l).to_owned()).collect()
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().is_ok_and(|s| s.success())
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The broker and every pod.
#[derive(Debug)]
pub struct Cluster {
    /// The Kafka-protocol broker.
    pub broker: Broker,
    /// Every pod: the owner roles' pods, then the query pods.
    pub nodes: Vec<Node>,
    /// Where the pods keep their stores and logs.
    pub root: tempfile::TempDir,
}

impl Cluster {
    /// Starts the broker and every pod of `topology`, and waits until every pod is ready.
    pub async fn start(topology: &Topology) -> Cluster {
        let broker = Broker::start();
        let root = tempfile::tempdir().expect("tempdir");
        let bin = causeway_bin();
        let mut nodes = Vec::new();
        let roles = OWNER_ROLES.iter().map(|r| (*r, topology.pods)).chain([("query", topology.queries)]);
        for (role, count) in roles {
            for index in 0..count {
                let port = free_port();
                let name = format!("{role}-{index}");
                let dir = root.path().join(&name);
                let mut args: Vec<String> = [
                    "serve",
                    "--role",
                    role,
                    "--node-id",
                    &name,
                    "--kafka-bootstrap",
                    &broker.bootstrap(),
                    "--kafka-partitions",
                    &topology.partitions.to_string(),
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                args.push(dir.display().to_string());
                if role != "query" {
                    args.extend([
                        "--shard-count".into(),
                        count.to_string(),
                        "--shard-index".into(),
                        index.to_string(),
                    ]);
                }
                if role == "payment" {
                    args.extend(topology.payment_args.iter().cloned());
                }
                args.extend(topology.node_args.iter().cloned());
                let mut node =
                    Node { role, index, port, dir, args, bin: bin.clone(), child: None, paused: false };
                node.spawn();
                nodes.push(node);
            }
        }
        let cluster = Cluster { broker, nodes, root };
        let client = reqwest::Client::new();
        for n in &cluster.nodes {
            cluster.wait_ready(&client, n, Duration::from_secs(120)).await;
        }
        cluster
    }

    /// Waits until `node` answers `/readyz` with 200.
    pub async fn wait_ready(&self, client: &reqwest::Client, node: &Node, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(node.url("/readyz")).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready:\n{}",
                node.name(),
                node.last_lines(30).join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The query pods.
    pub fn queries(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == "query")
    }

    /// The pods of `role`.
    pub fn pods<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// Keeps the pods' directory (stores and logs) after the cluster is gone; returns it.
    pub fn keep(&mut self) -> PathBuf {
        let dir = std::mem::replace(&mut self.root, tempfile::tempdir().expect("tempdir"));
        dir.keep()
    }

    /// What every pod said last, for a failing test.
    pub fn dump_logs(&self, n: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!("--- {}:\n{}\n", node.name(), node.last_lines(n).join("\n")));
        }
        out
    }
}
