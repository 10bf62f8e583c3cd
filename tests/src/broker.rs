//! A real Kafka-protocol broker for tests: Nisshi, started on a free loopback port with sqlite
//! storage in a temporary directory (so it survives a stop and a `kill -9`). `scripts/test.sh`
//! installs it; set `NISSHI_BIN` to use another binary.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

/// A running (or stopped) broker.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Ok(b) = std::env::var("NISSHI_BIN") {
        return b.into();
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let cargo_bin = home.join("bin").join("nisshi");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        PathBuf::from("nisshi")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Broker {
    /// Starts a broker and waits until it answers.
    pub fn start() -> Self {
        let mut b = Broker { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), child: None };
        b.restart();
        b
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again (same port, same storage) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("log file");
        let child = Command::new(binary())
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db", "--group-initial-rebalance-delay", "0s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the test broker {:?}: {e}. Install it with scripts/test.sh \
                     (cargo install nisshi --version 0.8.1 --locked --ignore-rust-version)",
                    binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(binary())
                .args(["topic", "list", "--broker", &url])
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    let log = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
                    panic!("the broker exited ({status}):\n{log}");
                }
            }
            assert!(Instant::now() < deadline, "the broker did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills it with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A record as a plain Kafka client sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub value: Vec<u8>,
}

/// Reads every partition of every topic on the broker up to its high watermark, with a plain
/// rdkafka consumer and no Causeway code (blocking).
pub fn read_everything(bootstrap: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("independent-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for t in md.topics().iter().filter(|t| !t.name().starts_with("__")) {
        for p in t.partitions() {
            let (low, high) =
                consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10)).expect("wm");
            if high > low {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(low)).expect("tpl");
                ends.insert((t.name().to_owned(), p.id()), high);
            }
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading the topics timed out");
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m.expect("record");
        if ends.get(&(m.topic().to_owned(), m.partition())).is_some_and(|e| m.offset() + 1 >= *e) {
            ends.remove(&(m.topic().to_owned(), m.partition()));
        }
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers.insert(
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}
