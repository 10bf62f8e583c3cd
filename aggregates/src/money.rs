//! Money in integer minor units (cents), never floating point.

use serde::{Deserialize, Serialize};

/// An amount in minor units of some currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money(pub u64);

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// `self * n`, or `None` on overflow.
    pub fn checked_mul(self, n: u64) -> Option<Money> {
        self.0.checked_mul(n).map(Money)
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// Minor units.
    pub fn minor(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// An ISO 4217 currency code: three ASCII capital letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Currency(pub String);

impl Currency {
    /// Whether the code has the ISO 4217 shape.
    pub fn is_valid(&self) -> bool {
        self.0.len() == 3 && self.0.bytes().all(|b| b.is_ascii_uppercase())
    }
}

impl From<&str> for Currency {
    fn from(s: &str) -> Self {
        Currency(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Money(1999).checked_mul(2), Some(Money(3998)));
        assert_eq!(Money(u64::MAX).checked_mul(2), None);
        assert_eq!(Money(u64::MAX).checked_add(Money(1)), None);
        assert_eq!(Money(3998).to_string(), "39.98");
    }

    #[test]
    fn currency_codes() {
        assert!(Currency::from("EUR").is_valid());
        assert!(!Currency::from("eur").is_valid());
        assert!(!Currency::from("EURO").is_valid());
    }
}
