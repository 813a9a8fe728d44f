//! The events of a sale's stream and of the order-events outbox, and their field names.
//!
//! The reserve and release scripts write these fields; the projector reads them back
//! here. A stream entry that does not parse is a permanent error for that entry (it is
//! dead-lettered), never a panic, and never a reason to skip the entries after it.

use std::collections::HashMap;

use serde::Serialize;

use crate::ids::{IdError, ReservationId, SaleId, UserId};
use crate::position::Position;

/// Field names of the sale stream entries, as written by the Lua scripts.
pub mod field {
    pub const TYPE: &str = "type";
    pub const RESERVATION_ID: &str = "reservation_id";
    pub const SALE_ID: &str = "sale_id";
    pub const USER_ID: &str = "user_id";
    pub const QUANTITY: &str = "quantity";
    /// When the units were taken (Redis time, epoch ms).
    pub const RESERVED_AT_MS: &str = "reserved_at_ms";
    /// The same, as events written before the name was unified call it.
    pub const OLD_AT_MS: &str = "at_ms";
    pub const REASON: &str = "reason";
    /// The reservation's position (absent on events written before positions existed).
    pub const EPOCH: &str = "epoch";
    pub const SEQ: &str = "seq";
    /// Present when the buyer sent an `Idempotency-Key`.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// A hold's deadline (epoch ms): on `reserved` events of sales with holds, and on
    /// `extended` events.
    pub const EXPIRES_AT_MS: &str = "expires_at_ms";
    /// The order a confirmed hold became (`confirmed` events).
    pub const ORDER_ID: &str = "order_id";
}

/// `type` of the entry `reserve.lua` appends when units are taken.
pub const RESERVED: &str = "reserved";
/// `type` of the entry `release.lua` appends when units go back on sale.
pub const RELEASED: &str = "released";
/// `type` of the entry `hold.lua` appends when a hold became an order.
pub const CONFIRMED: &str = "confirmed";
/// `type` of the entry `hold.lua` appends when a hold's deadline moved.
pub const EXTENDED: &str = "extended";

/// Units were taken from a sale for a buyer (written by `reserve.lua`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reserved {
    pub reservation_id: ReservationId,
    pub sale_id: SaleId,
    pub user_id: UserId,
    pub quantity: i64,
    /// Redis server time when the units were taken, in epoch milliseconds.
    pub reserved_at_ms: i64,
    /// Where Redis stood when it took the units (`None` on events from before positions).
    pub position: Option<Position>,
    /// The buyer's `Idempotency-Key`, kept so a rebuilt Redis still answers a retry.
    pub idempotency_key: Option<String>,
    /// A hold's deadline (epoch ms, Redis time): the reservation waits for a confirm.
    /// `None` on sales without holds: it becomes an order at once.
    pub expires_at_ms: Option<i64>,
}

/// A sale stream entry, as read back by a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaleEvent {
    Reserved(Reserved),
    /// Units of a reservation went back on sale; projectors only acknowledge these.
    Released {
        reservation_id: ReservationId,
    },
    /// A hold became an order (PostgreSQL decided it first); only acknowledged.
    Confirmed {
        reservation_id: ReservationId,
    },
    /// A hold's deadline moved (PostgreSQL decided it first); only acknowledged.
    Extended {
        reservation_id: ReservationId,
    },
}

/// Why a stream entry could not be read as an event: a permanent error for the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}`: {source}")]
    BadId {
        field: &'static str,
        source: IdError,
    },
    #[error("field `{0}` is not a positive integer")]
    BadNumber(&'static str),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
}

fn get<'a>(fields: &'a HashMap<String, String>, name: &'static str) -> Result<&'a str, EventError> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or(EventError::Missing(name))
}

fn positive(fields: &HashMap<String, String>, name: &'static str) -> Result<i64, EventError> {
    get(fields, name)?
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(EventError::BadNumber(name))
}

fn reservation_id(fields: &HashMap<String, String>) -> Result<ReservationId, EventError> {
    ReservationId::parse(get(fields, field::RESERVATION_ID)?).map_err(|source| EventError::BadId {
        field: field::RESERVATION_ID,
        source,
    })
}

/// `reserved_at_ms`, or `at_ms` on events written before the name was unified.
fn reserved_at_ms(fields: &HashMap<String, String>) -> Result<i64, EventError> {
    if fields.contains_key(field::RESERVED_AT_MS) {
        positive(fields, field::RESERVED_AT_MS)
    } else {
        positive(fields, field::OLD_AT_MS)
    }
}

fn position(fields: &HashMap<String, String>) -> Result<Option<Position>, EventError> {
    if !fields.contains_key(field::EPOCH) && !fields.contains_key(field::SEQ) {
        return Ok(None);
    }
    Ok(Some(Position::new(
        positive(fields, field::EPOCH)?,
        positive(fields, field::SEQ)?,
    )))
}

impl SaleEvent {
    /// Reads one stream entry's fields.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, EventError> {
        match get(fields, field::TYPE)? {
            RESERVED => Ok(SaleEvent::Reserved(Reserved {
                reservation_id: reservation_id(fields)?,
                sale_id: SaleId::parse(get(fields, field::SALE_ID)?).map_err(|source| {
                    EventError::BadId {
                        field: field::SALE_ID,
                        source,
                    }
                })?,
                user_id: UserId::parse(get(fields, field::USER_ID)?).map_err(|source| {
                    EventError::BadId {
                        field: field::USER_ID,
                        source,
                    }
                })?,
                quantity: positive(fields, field::QUANTITY)?,
                reserved_at_ms: reserved_at_ms(fields)?,
                position: position(fields)?,
                idempotency_key: fields.get(field::IDEMPOTENCY_KEY).cloned(),
                expires_at_ms: fields
                    .contains_key(field::EXPIRES_AT_MS)
                    .then(|| positive(fields, field::EXPIRES_AT_MS))
                    .transpose()?,
            })),
            RELEASED => Ok(SaleEvent::Released {
                reservation_id: reservation_id(fields)?,
            }),
            CONFIRMED => Ok(SaleEvent::Confirmed {
                reservation_id: reservation_id(fields)?,
            }),
            EXTENDED => Ok(SaleEvent::Extended {
                reservation_id: reservation_id(fields)?,
            }),
            other => Err(EventError::UnknownType(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_a_reserved_entry() {
        let rid = ReservationId::new();
        let rid_text = rid.to_string();
        let event = SaleEvent::from_fields(&fields(&[
            ("type", "reserved"),
            ("reservation_id", &rid_text),
            ("sale_id", "s1"),
            ("user_id", "u1"),
            ("quantity", "2"),
            ("reserved_at_ms", "1700000000000"),
            ("epoch", "3"),
            ("seq", "41"),
            ("idempotency_key", "k-1"),
        ]))
        .expect("well-formed entry");
        let SaleEvent::Reserved(r) = event else {
            panic!("expected a reserved event, got {event:?}");
        };
        assert_eq!(r.reservation_id, rid);
        assert_eq!(r.quantity, 2);
        assert_eq!(r.position, Some(Position::new(3, 41)));
        assert_eq!(r.idempotency_key.as_deref(), Some("k-1"));
        assert_eq!(r.expires_at_ms, None, "no deadline: not a hold");
    }

    #[test]
    fn reads_a_hold_and_its_transitions() {
        let rid = ReservationId::new().to_string();
        let hold = fields(&[
            ("type", "reserved"),
            ("reservation_id", &rid),
            ("sale_id", "s1"),
            ("user_id", "u1"),
            ("quantity", "1"),
            ("reserved_at_ms", "1700000000000"),
            ("expires_at_ms", "1700000600000"),
        ]);
        let Ok(SaleEvent::Reserved(r)) = SaleEvent::from_fields(&hold) else {
            panic!("a hold is a reservation");
        };
        assert_eq!(r.expires_at_ms, Some(1_700_000_600_000));
        for kind in ["confirmed", "extended", "released"] {
            let event =
                SaleEvent::from_fields(&fields(&[("type", kind), ("reservation_id", &rid)]));
            assert!(event.is_ok(), "{kind}: {event:?}");
        }
        let mut bad = hold.clone();
        bad.insert("expires_at_ms".into(), "soon".into());
        assert_eq!(
            SaleEvent::from_fields(&bad),
            Err(EventError::BadNumber("expires_at_ms"))
        );
    }

    #[test]
    fn events_from_before_positions_still_read() {
        let rid = ReservationId::new().to_string();
        let mut old = fields(&[
            ("type", "reserved"),
            ("reservation_id", &rid),
            ("sale_id", "s1"),
            ("user_id", "u1"),
            ("quantity", "1"),
            ("at_ms", "1"),
        ]);
        let Ok(SaleEvent::Reserved(r)) = SaleEvent::from_fields(&old) else {
            panic!("an event without a position is still a reservation");
        };
        assert_eq!((r.position, r.idempotency_key), (None, None));
        assert_eq!(r.reserved_at_ms, 1, "read from the old `at_ms` field");
        // Half a position is garbage, not an old event.
        old.insert("epoch".into(), "1".into());
        assert_eq!(
            SaleEvent::from_fields(&old),
            Err(EventError::Missing("seq"))
        );
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        assert_eq!(
            SaleEvent::from_fields(&fields(&[("hello", "world")])),
            Err(EventError::Missing("type"))
        );
        assert_eq!(
            SaleEvent::from_fields(&fields(&[("type", "bought")])),
            Err(EventError::UnknownType("bought".into()))
        );
        let rid = ReservationId::new().to_string();
        let bad_qty = fields(&[
            ("type", "reserved"),
            ("reservation_id", &rid),
            ("sale_id", "s1"),
            ("user_id", "u1"),
            ("quantity", "-3"),
            ("at_ms", "1"),
        ]);
        assert_eq!(
            SaleEvent::from_fields(&bad_qty),
            Err(EventError::BadNumber("quantity"))
        );
    }
}
