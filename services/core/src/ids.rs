//! Identifiers of sales, users and reservations, parsed once at the edge.
//!
//! Parse, don't validate: a `SaleId` or `UserId` that exists is already known to be
//! 1-64 characters of `[A-Za-z0-9_.:-]`, so it is safe inside a Redis key, a hash tag,
//! a stream field and the `|`-separated records of the Lua scripts. Nothing here may
//! accept `{`, `}` or `|`: they would break the hash tag or the script records.
//!
//! A reservation id made by `/buy` carries its sale's `SaleTag` (16 bits of a stable
//! hash of the sale id), so `GET /reservations/{id}` asks Redis about the one or two
//! sales it can belong to instead of every sale ever registered. The hash must never
//! change: ids already handed out carry it.

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

/// 16 bits of a stable hash of a sale id (FNV-1a, 32 bits, folded), carried in the
/// reservation ids of that sale. Many sales share a tag; a tag names the few sales a
/// reservation id can belong to, never one for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaleTag(u16);

impl SaleTag {
    pub fn of(sale: &SaleId) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in sale.as_str().bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Self(((hash >> 16) ^ (hash & 0xffff)) as u16)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// A reservation's id, made by the API before the reserve script runs so that a call
/// whose reply was lost can be retried without taking stock twice.
///
/// `/buy` makes a UUID v8 laid out like a v7 (`for_sale`): 48-bit Unix milliseconds
/// first (PostgreSQL's index stays time-ordered), the v7 counter and random bits of
/// `Uuid::now_v7` (ordered within the process), and the sale's `SaleTag` in the last
/// 16 bits in place of random ones. Any UUID parses: ids made before tags (v7) have no
/// tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(Uuid);

impl ReservationId {
    /// A new, time-ordered id (v7) that names no sale.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// A new, time-ordered id of a reservation in `sale` (v8, carrying its tag).
    pub fn for_sale(sale: &SaleId) -> Self {
        let mut bytes = Uuid::now_v7().into_bytes();
        // The last 32 bits of a v7 are random (its 42-bit counter sits before them),
        // so ids stay unique and ordered within this process; across processes the
        // counter's random seed (41 bits) and 16 random bits per millisecond remain.
        bytes[14..].copy_from_slice(&SaleTag::of(sale).get().to_be_bytes());
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// The tag of the sale this id was made for, if it carries one (v8 ids).
    pub fn sale_tag(&self) -> Option<SaleTag> {
        (self.0.get_version_num() == 8).then(|| {
            let bytes = self.0.as_bytes();
            SaleTag(u16::from_be_bytes([bytes[14], bytes[15]]))
        })
    }

    pub fn parse(raw: &str) -> Result<Self, IdError> {
        Uuid::try_parse(raw).map(Self).map_err(|_| IdError::NotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The id PostgreSQL stored (a `uuid` column).
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl Default for ReservationId {
    fn default() -> Self {
        Self::new()
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
    fn a_reservation_id_made_for_a_sale_carries_its_tag_and_its_time_first() {
        let sale = SaleId::parse("black-friday.2026").expect("valid id");
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        let id = ReservationId::for_sale(&sale);
        let bytes = id.as_uuid().into_bytes();
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&bytes[..6]);
        assert!(u64::from_be_bytes(millis).abs_diff(before) < 5_000);
        assert_eq!(id.as_uuid().get_version_num(), 8);
        assert_eq!(id.as_uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.sale_tag(), Some(SaleTag::of(&sale)));
        assert_eq!(ReservationId::parse(&id.to_string()), Ok(id));
        assert_eq!(ReservationId::new().sale_tag(), None, "v7 ids carry no tag");
    }

    #[test]
    fn ids_made_for_one_sale_are_distinct_and_ordered() {
        let sale = SaleId::parse("s1").expect("valid id");
        let ids: Vec<ReservationId> = (0..10_000)
            .map(|_| ReservationId::for_sale(&sale))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_sale_tag_hash_never_changes() {
        // Ids already handed out carry these values: changing the hash would hide
        // their reservations from GET /reservations/{id} until PostgreSQL decides them.
        let tag = |s: &str| SaleTag::of(&SaleId::parse(s).expect("valid id")).get();
        assert_eq!(tag("s1"), 0xb098);
        assert_eq!(tag("black-friday.2026"), tag("black-friday.2026"));
        assert_ne!(tag("s1"), tag("s2"));
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
