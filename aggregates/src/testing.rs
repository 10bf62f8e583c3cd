//! Given/when/then for deciders:
//!
//! ```
//! # use aggregates::{testing::given, inventory::*, Sku};
//! given::<Inventory>([])
//!     .when(InventoryCommand::AddStock { sku: Sku::from("A"), quantity: 5 })
//!     .then([InventoryEvent::StockAdded(StockAdded { sku: Sku::from("A"), quantity: 5 })]);
//! ```

use crate::Decider;

/// A state built from past events.
#[derive(Debug)]
pub struct Given<D: Decider> {
    state: D,
}

/// Starts a scenario from `events`.
pub fn given<D: Decider>(events: impl IntoIterator<Item = D::Event>) -> Given<D> {
    Given { state: events.into_iter().fold(D::default(), |s, e| s.evolve(&e)) }
}

impl<D: Decider> Given<D> {
    /// Decides `command` on the state.
    pub fn when(self, command: D::Command) -> Then<D> {
        let outcome = self.state.decide(command);
        Then { state: self.state, outcome }
    }

    /// The state built so far.
    pub fn state(&self) -> &D {
        &self.state
    }
}

/// The outcome of a scenario.
#[derive(Debug)]
pub struct Then<D: Decider> {
    state: D,
    outcome: Result<Vec<D::Event>, D::Error>,
}

impl<D: Decider> Then<D> {
    /// Asserts the command produced exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> D {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                events.iter().fold(self.state, |s, e| s.evolve(e))
            }
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e}"),
        }
    }

    /// Asserts the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: D::Error) {
        match self.outcome {
            Ok(events) => panic!("expected the error {expected:?}, got events {events:?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }
}
