//! How handling a message fails, in two kinds a consumer acts on (a poison message is
//! dead-lettered, a transient failure retried), each with its typed cause (in its message: a
//! chain of errors prints each cause once); and why an aggregate could not be loaded. It
//! depends on `gateway` (a gateway error is transient) and on nothing else in the application.

/// How a message failed. The two kinds are what a consumer acts on: a poison message is
/// dead-lettered at once, a transient failure retried with backoff (then dead-lettered). A
/// domain refusal is neither: it is an answer (a `Rejected` reply), not an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// It can never be processed (bad payload, unknown type, undecodable history).
    #[error("poison message: {0}")]
    Poison(Poison),
    /// It may succeed later (store busy, gateway down, repeated conflicts).
    #[error("transient failure: {0}")]
    Transient(Transient),
}

/// Why a message can never be processed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Poison {
    /// The store refused what the message asks for as malformed (a bad stream id, say).
    #[error(transparent)]
    Store(event_store::Error),
    /// A stream's history cannot be read by this build.
    #[error("{stream} version {version}: {error}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// Why.
        error: aggregates::DecodeError,
    },
    /// The message itself cannot be read (its payload, type or envelope).
    #[error("{0}")]
    Message(String),
    /// A decider refused an input no correct sender would send (an invariant of the domain).
    #[error("{0}")]
    Refused(String),
    /// The node cannot take this message at all (not its consumer's, not in the log).
    #[error("{0}")]
    NotHere(String),
}

/// Why a message may succeed later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Transient {
    /// The store failed (I/O, overload, a poisoned store being reopened).
    #[error(transparent)]
    Store(event_store::Error),
    /// The payment gateway did not answer (or its breaker is open).
    #[error(transparent)]
    Gateway(#[from] crate::app::gateway::GatewayError),
    /// Optimistic concurrency lost this many times in a row.
    #[error("{what}: {attempts} conflicts in a row")]
    Conflicts {
        /// What kept changing.
        what: String,
        /// How many times.
        attempts: usize,
    },
}

impl HandlerError {
    /// A message that cannot be read.
    pub fn bad_message(reason: impl Into<String>) -> Self {
        HandlerError::Poison(Poison::Message(reason.into()))
    }

    /// `attempts` conflicts in a row on `what`.
    pub fn conflicts(what: impl Into<String>, attempts: usize) -> Self {
        HandlerError::Transient(Transient::Conflicts { what: what.into(), attempts })
    }
}

impl From<event_store::Error> for HandlerError {
    fn from(e: event_store::Error) -> Self {
        if e.is_client_error() {
            HandlerError::Poison(Poison::Store(e))
        } else {
            HandlerError::Transient(Transient::Store(e))
        }
    }
}

/// Why an aggregate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] event_store::Error),
    /// An event of the stream cannot be read by this build.
    #[error("{stream} version {version}: {error}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// Why.
        error: aggregates::DecodeError,
    },
}

impl From<LoadError> for HandlerError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) => e.into(),
            LoadError::Undecodable { stream, version, error } => {
                HandlerError::Poison(Poison::Undecodable { stream, version, error })
            }
        }
    }
}
