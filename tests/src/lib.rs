//! Whole-system tests for Causeway live in `tests/tests/`; this crate holds what they share and
//! the programs they drive:
//!
//! - [`broker`]: Nisshi, the Kafka-protocol broker the tests start on loopback;
//! - [`cluster`]: the production topology on loopback (N pods of every role, the query pods),
//!   with pods to kill, pause and restart;
//! - [`faults`]: the randomized, seeded fault run (open-loop orders over every saga path under a
//!   nemesis), and [`check`]: what it must leave behind;
//! - [`otlp`]: an OpenTelemetry collector (OTLP/HTTP with JSON) that keeps the spans it gets;
//! - `crash-writer` (the store crash test's child) and `cluster-soak` (a long fault run from one
//!   command: `scripts/soak.sh`).

pub mod broker;
pub mod check;
pub mod cluster;
pub mod faults;
pub mod otlp;
