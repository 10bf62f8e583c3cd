//! Causeway's node: the application (command handlers, the saga process manager, consumers) and
//! the transports and wiring that run it, embedded in one process or one role per process
//! talking through Kafka. The `causeway` binary (`services/cli`) parses flags and calls in here.
//!
//! Dependencies point one way, and the folders say which:
//!
//! - [`app`]: the application. Messages, ports (payment gateway, carrier, delivery health),
//!   load → decide → append for each service, the API's commands, admission control, consumers
//!   with dead letters, the saga manager and its timer, operators' actions on sagas (retry,
//!   resume, compensate, mark a compensation done; quarantine), operations (replay, re-drive) and
//!   the system invariants. Depends on the domain (`aggregates`), the log (`event-store`) and the
//!   read models (`projections`) only: no HTTP, no Kafka.
//! - [`http`]: the REST API (axum router, one JSON error shape, the bounds on requests,
//!   connections and live feeds, the read token) over the application, and the web console at
//!   `/ui` (built into the binary).
//! - [`kafka`]: the relay to Kafka (CloudEvents records), topics and partitioning, consumers fed
//!   from Kafka, the query role's replica, restore from Kafka.
//! - [`node`]: the roles (`all`, the embedded default, or one of order, inventory, payment,
//!   shipping, saga, query) and the runtime that wires the application to a transport on a
//!   node's store.

pub mod app;
pub mod http;
pub mod kafka;
pub mod node;
