//! Newtype ids, so an order id cannot be passed where a SKU is expected.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An order (and its saga, payment and shipment streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderId(pub Uuid);

impl std::fmt::Display for OrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerId(pub String);

/// A stock-keeping unit: 1-64 characters of `A-Z a-z 0-9 - _ .`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sku(pub String);

impl Sku {
    /// Whether the SKU has a valid shape (it is also part of a stream id).
    pub fn is_valid(&self) -> bool {
        (1..=64).contains(&self.0.len())
            && self.0.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Sku {
    fn from(s: &str) -> Self {
        Sku(s.to_owned())
    }
}
