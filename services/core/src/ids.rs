//! Identifiers of sales, users and reservations, parsed once at the edge.
//!
//! Parse, don't validate: a `SaleId` or `UserId` that exists is already known to be
//! 1-64 characters of `[A-Za-z0-9_.:-]`, so it is safe inside a Redis key, a hash tag,
//! a stream field and the `|`-separated records of the Lua scripts. Nothing here may
//! accept `{`, `}` or `|`: they would break the hash tag or the script records.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest accepted sale or user id.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("may contain only A-Z a-z 0-9 _ . : -")]
    BadCharacter,
    #[error("must be a UUID")]
    NotUuid,
}

fn check_token(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1-64 characters of `[A-Za-z0-9_.:-]`.
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                check_token(raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// A flash sale's id, as chosen by the admin who created it.
    SaleId
);
token_id!(
    /// A buyer's id, as sent by the client.
    UserId
);

/// A reservation's id: a UUID v7, made by the API before the reserve script runs so
/// that a call whose reply was lost can be retried without taking stock twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(Uuid);

impl ReservationId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        Uuid::try_parse(raw).map(Self).map_err(|_| IdError::NotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for ReservationId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for ReservationId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_of_the_allowed_alphabet() {
        for ok in ["a", "sale-1", "A.b:c_d-9", &"x".repeat(64)] {
            assert!(SaleId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_empty_long_and_foreign_characters() {
        assert_eq!(SaleId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse(&"x".repeat(65)), Err(IdError::TooLong));
        for bad in ["a b", "{sale}", "a|b", "é", "a/b", "a\n"] {
            assert_eq!(UserId::parse(bad), Err(IdError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn reservation_ids_are_version_7_and_round_trip() {
        let id = ReservationId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(ReservationId::parse(&id.to_string()), Ok(id));
        assert_eq!(ReservationId::parse("nope"), Err(IdError::NotUuid));
    }

    #[test]
    fn ids_honour_width_in_tables() {
        let id = SaleId::parse("s1").expect("valid id");
        assert_eq!(format!("{id:<4}|"), "s1  |");
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<SaleId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<SaleId>("\"not ok\"").is_err());
    }
}
