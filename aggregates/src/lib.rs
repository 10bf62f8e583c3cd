//! Causeway's domain: commands, events and pure deciders for Order, Inventory, Payment and
//! Shipping.
//!
//! Every aggregate implements [`Decider`]: `decide(&state, command)` returns the events a command
//! produces (or a [`Decider::Error`] when the command is refused), and `evolve(state, &event)`
//! folds an event into the state. Both are synchronous and pure: no clock, no randomness, no I/O.
//! Handlers put "now", new ids and looked-up facts (the payment gateway's answer, an address
//! check) into the command before deciding.
//!
//! Modules:
//! - [`money`] and [`ids`]: integer minor-unit money and newtype ids.
//! - [`order`], [`inventory`], [`payment`], [`shipping`]: the aggregates.
//! - [`saga`]: the order saga's own state machine (steps, compensation, deadlines, retries).
//! - [`codec`]: stable event names, schema versions, upcasting ([`DomainEvent`]).
//! - [`testing`]: the given/when/then harness used by the tests.

pub mod codec;
pub mod ids;
pub mod inventory;
pub mod money;
pub mod order;
pub mod payment;
pub mod saga;
pub mod shipping;
pub mod testing;

pub use codec::{DecodeError, DomainEvent};
pub use ids::{CustomerId, OrderId, Sku};
pub use money::{Currency, Money};

/// A pure decider: the state of one aggregate instance, the commands it accepts and the events
/// it records.
pub trait Decider: Default + Clone + std::fmt::Debug {
    /// What can be asked of it.
    type Command: std::fmt::Debug;
    /// What it records.
    type Event: Clone + PartialEq + std::fmt::Debug;
    /// Why a command is refused (a domain error, never an infrastructure failure).
    type Error: std::error::Error + PartialEq;

    /// The events `command` produces from this state; empty when it changes nothing (a repeated
    /// compensation, say).
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`.
    fn evolve(self, event: &Self::Event) -> Self;

    /// Folds events from the initial state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}
