//! The application: what the node does, whatever carries its messages. Nothing here depends on
//! HTTP or Kafka code (its answers derive OpenAPI schemas, as the domain's types do); the
//! transports ([`crate::http`], [`crate::kafka`]) and the wiring ([`crate::node`]) depend on it.
//! Within it the leaves come first: `gateway` and `messages` depend on nothing here, `error` on
//! `gateway`, `aggregate` on those, and the rest on them, without cycles (one test-only edge:
//! the inventory snapshot test stocks a SKU through `commands`).
//!
//! - [`error`]: how handling a message fails (poison or transient, with typed causes), why an
//!   aggregate could not be loaded.
//! - [`messages`]: stream names; command, reply and dead-letter envelopes; deterministic ids;
//!   the consumers' names.
//! - [`trace`]: the W3C trace context that every event a request causes records.
//! - [`telemetry`]: the spans of the work on those events, one tree per request across nodes.
//! - [`aggregate`]: loading an aggregate from its stream; a decider's events as log events.
//! - [`gateway`]: the ports to the outside (the payment gateway, delivery health), a simulated
//!   gateway (bounded idempotency memory), a circuit breaker.
//! - [`handlers`]: decide → append for the Order, Inventory, Payment and Shipping services, one
//!   file each (the carrier, `SimulatedCarrier`, next to the shipping handler).
//! - [`commands`]: the API's own commands (place, cancel, add stock) and their answers.
//! - [`admission`]: admission control of new sagas (an adaptive limit on sagas in flight).
//! - [`consumer`]: checkpointed, partitioned consumers of the local log or of Kafka partitions,
//!   with dead letters.
//! - [`command_consumer`]: a service's command consumer (saga commands to its handlers,
//!   forwarded API commands to `commands`).
//! - [`saga`]: the saga process manager (`saga`) and its deadline timer and retry budget
//!   (`saga::timer`).
//! - [`ops`]: rebuild, replay, as-of, backup and re-drive, for the CLI and the admin routes.
//! - [`invariants`]: the whole-system invariants, checked from the log.

pub mod admission;
pub mod aggregate;
pub mod command_consumer;
pub mod commands;
pub mod consumer;
pub mod error;
pub mod gateway;
pub mod handlers;
pub mod invariants;
pub mod messages;
pub mod ops;
pub mod saga;
pub mod telemetry;
pub mod trace;
