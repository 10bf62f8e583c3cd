//! The application: what the node does, whatever carries its messages. Nothing here depends on
//! HTTP or Kafka; the transports ([`crate::http`], [`crate::kafka`]) and the wiring
//! ([`crate::node`]) depend on it.
//!
//! - [`messages`]: stream names; command, reply and dead-letter envelopes; deterministic ids;
//!   the consumers' names.
//! - [`gateway`]: the ports to the outside (payment gateway, carrier, delivery health), a
//!   simulated gateway (bounded idempotency memory), a circuit breaker.
//! - [`handlers`]: load → decide → append for the Order, Inventory, Payment and Shipping
//!   services.
//! - [`commands`]: the API's own commands (place, cancel, add stock) and their answers.
//! - [`admission`]: admission control of new sagas (an adaptive limit on sagas in flight).
//! - [`consumer`]: checkpointed, partitioned consumers of the local log or of Kafka partitions,
//!   with dead letters; a service's command consumer.
//! - [`saga`]: the saga process manager (`saga`) and its deadline timer and retry budget
//!   (`saga::timer`).
//! - [`ops`]: rebuild, replay, as-of, backup and re-drive, for the CLI and the admin routes.
//! - [`invariants`]: the whole-system invariants, checked from the log.

pub mod admission;
pub mod commands;
pub mod consumer;
pub mod gateway;
pub mod handlers;
pub mod invariants;
pub mod messages;
pub mod ops;
pub mod saga;
