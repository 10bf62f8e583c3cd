//! Events as versioned contracts: a stable name, a schema version, a JSON payload, and upcasting
//! of older versions on read.
//!
//! Each aggregate's event enum has one variant per event type, holding a payload struct. The
//! [`domain_events!`](crate::domain_events) macro implements [`DomainEvent`] for it: the variant
//! name is the stable event name, and each payload type says its current schema version and how
//! to upcast older JSON ([`Upcast`]). A newer version than the code knows, an unknown name or a
//! malformed payload is a [`DecodeError`], never a panic.

use serde_json::Value;

/// Why a stored event cannot be turned into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No event of this aggregate has this name.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A schema version this build cannot read (newer than it knows, or 0).
    #[error("{event_type} schema version {version} is not supported (this build reads 1 to {max})")]
    UnsupportedVersion {
        /// The event name.
        event_type: String,
        /// The stored version.
        version: u32,
        /// The newest version this build knows.
        max: u32,
    },
    /// The payload does not match the schema.
    #[error("malformed {event_type} payload: {reason}")]
    Malformed {
        /// The event name.
        event_type: String,
        /// What is wrong.
        reason: String,
    },
}

/// A payload type's schema version and upcasting from older versions.
pub trait Upcast {
    /// The version this build writes.
    const VERSION: u32 = 1;

    /// Turns a payload of `version` (older than [`Upcast::VERSION`]) into the current shape.
    fn upcast(version: u32, value: Value) -> Result<Value, String> {
        let _ = version;
        Ok(value)
    }
}

/// An aggregate's event type with a stable wire form.
pub trait DomainEvent: Sized {
    /// The stable event name (e.g. `OrderPlaced`).
    fn event_type(&self) -> &'static str;
    /// The schema version of [`DomainEvent::to_payload`].
    fn schema_version(&self) -> u32;
    /// The JSON payload.
    fn to_payload(&self) -> Vec<u8>;
    /// Decodes a stored event, upcasting older schema versions.
    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError>;
}

/// Decodes one payload of type `T` stored at `version`.
pub fn decode_payload<T: Upcast + serde::de::DeserializeOwned>(
    event_type: &str,
    version: u32,
    payload: &[u8],
) -> Result<T, DecodeError> {
    if version == 0 || version > T::VERSION {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_owned(),
            version,
            max: T::VERSION,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed { event_type: event_type.to_owned(), reason };
    if version == T::VERSION {
        // The current shape: straight into the type, without a JSON value in between. (A payload
        // with a repeated key, which this build never writes, is now refused as malformed where
        // the JSON value kept the last one.)
        return serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()));
    }
    let mut value: Value = serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
    if version < T::VERSION {
        value = T::upcast(version, value).map_err(malformed)?;
    }
    serde_json::from_value(value).map_err(|e| malformed(e.to_string()))
}

/// Declares an aggregate's event enum (one variant per event type, each holding one payload
/// struct) and implements [`DomainEvent`] for it: the variant name is the stable event name.
#[macro_export]
macro_rules! domain_events {
    ($(#[$meta:meta])* $vis:vis enum $enum:ident { $($variant:ident($ty:ty)),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis enum $enum {
            $(
                #[doc = concat!("`", stringify!($variant), "`.")]
                $variant($ty),
            )*
        }

        impl $crate::codec::DomainEvent for $enum {
            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => stringify!($variant)),* }
            }
            fn schema_version(&self) -> u32 {
                match self { $(Self::$variant(_) => <$ty as $crate::codec::Upcast>::VERSION),* }
            }
            fn to_payload(&self) -> Vec<u8> {
                let json = match self { $(Self::$variant(e) => serde_json::to_vec(e)),* };
                // Payload structs have string keys and no custom serializers: this cannot fail.
                json.unwrap_or_default()
            }
            fn decode(event_type: &str, version: u32, payload: &[u8]) -> Result<Self, $crate::codec::DecodeError> {
                match event_type {
                    $(stringify!($variant) => $crate::codec::decode_payload::<$ty>(event_type, version, payload).map(Self::$variant),)*
                    other => Err($crate::codec::DecodeError::UnknownType(other.to_owned())),
                }
            }
        }
    };
}
