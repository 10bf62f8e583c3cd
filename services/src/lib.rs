//! Causeway's services: command handlers, the saga process manager, the runtime of every role
//! (embedded, or one role per process talking through Kafka) behind the `causeway` binary.
//!
//! - [`api`]: the REST API (axum router, one JSON error shape, the bounds on requests,
//!   connections and live feeds).
//! - [`admission`]: admission control of new sagas (an adaptive limit on sagas in flight).
//! - [`admin`]: rebuild, replay, as-of, backup and re-drive, for the CLI and the admin routes.
//! - [`messages`]: stream names; command, reply and dead-letter envelopes; deterministic ids.
//! - [`handlers`]: load → decide → append for the Order, Inventory, Payment and Shipping
//!   services, and the API's own commands (place, cancel, add stock).
//! - [`gateway`]: the payment gateway port, a simulated gateway (bounded idempotency memory), a
//!   circuit breaker.
//! - [`consumer`]: checkpointed, partitioned consumers of the local log or of Kafka partitions,
//!   with dead letters.
//! - [`saga_runner`]: the saga process manager and its deadline timer.
//! - [`kafka`]: the relay to Kafka (CloudEvents records), topics, consumers fed from Kafka, the
//!   query role's replica, restore from Kafka.
//! - [`invariants`]: the whole-system invariants, checked from the log.
//! - [`runtime`]: the roles (`all`, the embedded default, or one of order, inventory, payment,
//!   shipping, saga, query) on a node's store.
//! - [`load`]: `causeway load`, saga throughput and latency, in process or over HTTP.
//! - [`bench`](mod@bench): `causeway bench store|projections|api|kafka` (`store --only saga`: the saga's
//!   appends alone, its write ceiling).

pub mod admin;
pub mod admission;
pub mod api;
pub mod bench;
pub mod commands;
pub mod consumer;
pub mod gateway;
pub mod handlers;
pub mod invariants;
pub mod kafka;
pub mod load;
pub mod messages;
pub mod runtime;
pub mod saga_runner;
