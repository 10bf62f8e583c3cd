//! Model-based property test: random operations against the real store and a trivially correct
//! in-memory model, on both engines, including reopening the store in the middle.

use std::collections::{BTreeMap, HashMap};

use event_store::{
    AppendRequest, AppendResult, Direction, Error, EventStore, ExpectedVersion, MemoryStorage, NewEvent,
    ReadAhead, SledConfig, SledStorage, Storage, StoreConfig, StreamAppended, StreamId,
};
use proptest::prelude::*;
use uuid::Uuid;

const STREAMS: [&str; 4] = ["order-0", "order-1", "order-10", "payment-0"];

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    Exists,
    Current,
    Ahead,
    Behind,
}

#[derive(Debug, Clone)]
enum Op {
    Append { parts: Vec<(usize, Expect, u8)>, checkpoint: Option<u64> },
    Resend { index: usize, alter: bool },
    ReadStream { stream: usize, from: u64, backward: bool },
    ReadAll { from: u64 },
    ReadAllParallel { from: u64, workers: usize, chunk: u64, depth: usize },
    ReadCategory { payment: bool, from: u64 },
    Subscribe { after: u64 },
    Reopen,
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        1 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::Exists),
        3 => Just(Expect::Current),
        1 => Just(Expect::Ahead),
        1 => Just(Expect::Behind),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::collection::vec((0..STREAMS.len(), expect_strategy(), 1u8..4), 1..3), proptest::option::of(0u64..100))
            .prop_map(|(parts, checkpoint)| Op::Append { parts, checkpoint }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(index, alter)| Op::Resend { index, alter }),
        2 => (0..STREAMS.len(), 0u64..6, any::<bool>()).prop_map(|(stream, from, backward)| Op::ReadStream { stream, from, backward }),
        1 => (0u64..30).prop_map(|from| Op::ReadAll { from }),
        1 => (0u64..30, 1usize..5, 1u64..9, 1usize..3)
            .prop_map(|(from, workers, chunk, depth)| Op::ReadAllParallel { from, workers, chunk, depth }),
        1 => (any::<bool>(), 0u64..30).prop_map(|(payment, from)| Op::ReadCategory { payment, from }),
        1 => (0u64..30).prop_map(|after| Op::Subscribe { after }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelEvent {
    position: u64,
    stream: String,
    version: u64,
    id: Uuid,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Model {
    log: Vec<ModelEvent>,
    versions: HashMap<String, u64>,
    by_id: HashMap<Uuid, usize>,
    results: HashMap<Uuid, AppendResult>,
    checkpoints: BTreeMap<String, u64>,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(AppendResult),
    Conflict,
    Reused,
}

impl Model {
    fn version(&self, s: &str) -> u64 {
        self.versions.get(s).copied().unwrap_or(0)
    }

    fn append(&mut self, req: &AppendRequest) -> Outcome {
        let events: Vec<_> = req.streams.iter().flat_map(|s| s.events.iter().map(move |e| (s, e))).collect();
        let found: Vec<_> = events.iter().filter(|(_, e)| self.by_id.contains_key(&e.event_id)).collect();
        if !found.is_empty() {
            let same = found.iter().all(|(s, e)| {
                let m = &self.log[self.by_id[&e.event_id]];
                m.stream == s.stream.as_str() && m.payload == e.payload
            });
            if !same || found.len() < events.len() {
                return Outcome::Reused;
            }
            return Outcome::Ok(self.results[&events[0].1.event_id].clone());
        }
        for s in &req.streams {
            if !s.expected.accepts(self.version(s.stream.as_str())) {
                return Outcome::Conflict;
            }
        }
        let mut result =
            AppendResult { first_position: self.log.len() as u64 + 1, last_position: 0, streams: vec![] };
        for s in &req.streams {
            let mut v = self.version(s.stream.as_str());
            let first_version = v + 1;
            for e in &s.events {
                v += 1;
                let position = self.log.len() as u64 + 1;
                self.by_id.insert(e.event_id, self.log.len());
                self.log.push(ModelEvent {
                    position,
                    stream: s.stream.to_string(),
                    version: v,
                    id: e.event_id,
                    payload: e.payload.clone(),
                });
                result.last_position = position;
            }
            self.versions.insert(s.stream.to_string(), v);
            result.streams.push(StreamAppended {
                stream_id: s.stream.to_string(),
                first_version,
                last_version: v,
            });
        }
        for (name, value) in &req.checkpoints {
            self.checkpoints.insert(name.clone(), *value);
        }
        self.results.insert(events[0].1.event_id, result.clone());
        Outcome::Ok(result)
    }
}

fn key(e: &event_store::RecordedEvent) -> ModelEvent {
    ModelEvent {
        position: e.position,
        stream: e.stream_id.clone(),
        version: e.version,
        id: e.event_id,
        payload: e.payload.clone(),
    }
}

async fn run<S: Storage>(ops: Vec<Op>, open: impl Fn() -> EventStore<S>) -> Result<(), TestCaseError> {
    let mut store = Some(open());
    let mut model = Model::default();
    let mut sent: Vec<AppendRequest> = Vec::new();
    let mut counter = 0u64;
    for op in ops {
        let s = store.as_ref().expect("store is open");
        match op {
            Op::Append { parts, checkpoint } => {
                let mut req = AppendRequest::default();
                for (i, expect, n) in parts {
                    let name = STREAMS[i];
                    if req.streams.iter().any(|p| p.stream.as_str() == name) {
                        continue;
                    }
                    let cur = model.version(name);
                    let expected = match expect {
                        Expect::Any => ExpectedVersion::Any,
                        Expect::NoStream => ExpectedVersion::NoStream,
                        Expect::Exists => ExpectedVersion::Exists,
                        Expect::Current => ExpectedVersion::Exact(cur),
                        Expect::Ahead => ExpectedVersion::Exact(cur + 1),
                        Expect::Behind => ExpectedVersion::Exact(cur.saturating_sub(1)),
                    };
                    let events = (0..n)
                        .map(|_| {
                            counter += 1;
                            NewEvent::json("E", format!("{{\"n\":{counter}}}").into_bytes())
                        })
                        .collect();
                    req = req.and(StreamId::new(name).expect("id"), expected, events);
                }
                if let Some(cp) = checkpoint {
                    req = req.with_checkpoint("cp", cp);
                }
                let expected = model.append(&req);
                let got = s.append(req.clone()).await;
                check_outcome(expected, got)?;
                sent.push(req);
            }
            Op::Resend { index, alter } => {
                if sent.is_empty() {
                    continue;
                }
                let mut req = sent[index % sent.len()].clone();
                if alter {
                    req.streams[0].events[0].payload = b"{\"altered\":true}".to_vec();
                }
                let expected = model.append(&req);
                let got = s.append(req).await;
                check_outcome(expected, got)?;
            }
            Op::ReadStream { stream, from, backward } => {
                let name = STREAMS[stream];
                let id = StreamId::new(name).expect("id");
                let dir = if backward { Direction::Backward } else { Direction::Forward };
                let got: Vec<_> =
                    s.read_stream(&id, from, dir).map(|e| e.map(|e| key(&e))).collect::<Result<_, _>>()?;
                let mut want: Vec<_> = model
                    .log
                    .iter()
                    .filter(|e| {
                        e.stream == name && if backward { e.version <= from } else { e.version >= from }
                    })
                    .cloned()
                    .collect();
                if backward {
                    want.reverse();
                }
                prop_assert_eq!(got, want);
                prop_assert_eq!(s.stream_version(&id)?, model.version(name));
            }
            Op::ReadAll { from } => {
                let got: Vec<_> = s.read_all(from).map(|e| e.map(|e| key(&e))).collect::<Result<_, _>>()?;
                let want: Vec<_> = model.log.iter().filter(|e| e.position >= from).cloned().collect();
                prop_assert_eq!(got, want);
            }
            Op::ReadAllParallel { from, workers, chunk, depth } => {
                let got: Vec<_> = s
                    .read_all_parallel(from, ReadAhead { workers, chunk, depth })?
                    .map(|e| e.map(|e| key(&e)))
                    .collect::<Result<_, _>>()?;
                let want: Vec<_> = model.log.iter().filter(|e| e.position >= from).cloned().collect();
                prop_assert_eq!(got, want);
            }
            Op::ReadCategory { payment, from } => {
                let cat = if payment { "payment" } else { "order" };
                let got: Vec<_> =
                    s.read_category(cat, from).map(|e| e.map(|e| key(&e))).collect::<Result<_, _>>()?;
                let want: Vec<_> = model
                    .log
                    .iter()
                    .filter(|e| e.position >= from && e.stream.starts_with(&format!("{cat}-")))
                    .cloned()
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Subscribe { after } => {
                let mut sub = s.subscribe_all(after);
                let mut got = Vec::new();
                while let Some(e) = sub.try_next().await {
                    got.push(key(&e?));
                }
                let want: Vec<_> = model.log.iter().filter(|e| e.position > after).cloned().collect();
                prop_assert_eq!(got, want);
            }
            Op::Reopen => {
                drop(store.take());
                store = Some(open());
            }
        }
        let s = store.as_ref().expect("open");
        prop_assert_eq!(s.head(), model.log.len() as u64);
        prop_assert_eq!(s.checkpoint("cp")?, model.checkpoints.get("cp").copied());
    }
    let s = store.as_ref().expect("open");
    let report = s.verify()?;
    prop_assert!(report.is_ok(), "{:?}", report.problems);
    Ok(())
}

fn check_outcome(expected: Outcome, got: Result<AppendResult, Error>) -> Result<(), TestCaseError> {
    match (expected, got) {
        (Outcome::Ok(want), Ok(got)) => prop_assert_eq!(got, want),
        (Outcome::Conflict, Err(Error::Conflict { .. })) => {}
        (Outcome::Reused, Err(Error::EventIdReused { .. })) => {}
        (want, got) => prop_assert!(false, "model says {want:?}, store says {got:?}"),
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let storage = MemoryStorage::new();
        runtime().block_on(run(ops, || EventStore::open(storage.clone(), StoreConfig::default()).expect("open")))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn sled_store_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SledConfig::new(dir.path());
        runtime().block_on(run(ops, || {
            EventStore::open(SledStorage::open(&cfg).expect("sled"), StoreConfig::default()).expect("open")
        }))?;
    }
}
