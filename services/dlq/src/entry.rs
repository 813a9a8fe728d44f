//! A dead letter as `yoink dlq` shows it: the entry name an operator types
//! (`SALE/ID`), one reservation's copies in `{sale:ID}:dead` grouped by `original_id`
//! (a crash mid dead-letter writes the copy twice; an unreleasable one gets a second
//! copy saying so), and the reason, reduced to a class for the counts.
//!
//! Reading only: nothing here touches a store. The original event is read with the
//! very conversion the projector uses (`yoink_core::stream::fields`), so what the
//! projector could not read is what this reads too, unless a caller passes a newer
//! reader to `replay`.

use std::collections::HashMap;

use redis::Value;
use redis::streams::StreamId;
use serde::Serialize;
use yoink_core::events::{EventError, SaleEvent, field};
use yoink_core::{ReservationId, SaleId, stream};

use crate::error::DlqError;

/// Fields the projector puts before the original ones on a dead-letter copy.
pub mod dead_field {
    pub const REASON: &str = "dead_reason";
    pub const ORIGINAL_ID: &str = "original_id";
    pub const CONSUMER: &str = "consumer";
    /// How often the entry was delivered before it was given up on (on copies written
    /// by projectors that record it; read when present).
    pub const DELIVERIES: &str = "deliveries";
}

/// How the event of a dead letter is read: `SaleEvent::from_fields` (what this version
/// of Yoink reads), or a newer reader once its cause is fixed.
pub type EventReader = fn(&HashMap<String, String>) -> Result<SaleEvent, EventError>;

/// One dead-letter entry, as named on the command line: `SALE/ID`, where `ID` is its id
/// in `{sale:SALE}:dead` (what `list` prints), or `ID` with `--sale SALE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub sale: SaleId,
    pub id: String,
}

impl EntryRef {
    /// Reads `SALE/ID`, or `ID` with `sale` (`--sale`); both must agree when both given.
    pub fn parse(raw: &str, sale: Option<&str>) -> Result<Self, DlqError> {
        let bad = |why| DlqError::BadEntry {
            raw: raw.to_owned(),
            why,
        };
        // Sale ids never contain '/', so the last one splits.
        let (named_sale, id) = match raw.rsplit_once('/') {
            Some((s, id)) => (Some(s), id),
            None => (None, raw),
        };
        let sale = match (named_sale, sale) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad("its sale differs from --sale"));
            }
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return Err(bad("name it SALE/ID, or give --sale")),
        };
        let sale = SaleId::parse(sale).map_err(|source| DlqError::BadSaleId {
            raw: sale.to_owned(),
            source,
        })?;
        if !is_stream_id(id) {
            return Err(bad("ID must be a stream id like 1712345678901-0"));
        }
        Ok(Self {
            sale,
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.sale, self.id)
    }
}

/// `MS-SEQ` (or `MS`): the ids Redis gives stream entries.
fn is_stream_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(id),
    }
}

/// One dead-lettered stream entry: every copy of it in the sale's dead stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub sale_id: SaleId,
    /// `SALE/ID` of its first copy: what `show`, `replay` and `purge` take.
    pub entry: String,
    /// Its first copy's id in `{sale:ID}:dead`.
    pub id: String,
    /// The entry's id in `{sale:ID}:events`.
    pub original_id: String,
    /// Every copy's id in the dead stream (the first included), oldest first.
    pub copies: Vec<String>,
    /// Why the projector gave up (the newest copy's: a second copy says more).
    pub reason: String,
    /// The reason's class, what `list` counts: `malformed`, `refused:<SQLSTATE>`,
    /// `unreleasable` or `other`.
    pub reason_class: String,
    /// The projector that gave up.
    pub consumer: String,
    /// When it was dead-lettered (the first copy's id), epoch ms.
    pub dead_lettered_at_ms: i64,
    /// Its age at the time of the listing, in ms.
    pub age_ms: i64,
    /// The original `type` field, if any.
    pub event_type: Option<String>,
    /// The original `reservation_id` field, when it reads as one.
    pub reservation_id: Option<ReservationId>,
    /// The deliveries it had when given up on, on copies that record it.
    pub deliveries: Option<u64>,
    /// The original entry's fields, as Redis holds them.
    #[serde(skip)]
    pub fields: HashMap<String, Value>,
}

impl DeadLetter {
    /// The first copy of an entry (`copy` read from `sale`'s dead stream).
    pub fn from_copy(sale: &SaleId, copy: StreamId, now_ms: i64) -> Self {
        let text = |name: &str| copy.map.get(name).map(text_of).unwrap_or_default();
        let reason = text(dead_field::REASON);
        let original_id = text(dead_field::ORIGINAL_ID);
        let consumer = text(dead_field::CONSUMER);
        let deliveries = copy
            .map
            .get(dead_field::DELIVERIES)
            .and_then(|v| text_of(v).parse().ok());
        let fields: HashMap<String, Value> = copy
            .map
            .into_iter()
            .filter(|(name, _)| {
                !matches!(
                    name.as_str(),
                    dead_field::REASON
                        | dead_field::ORIGINAL_ID
                        | dead_field::CONSUMER
                        | dead_field::DELIVERIES
                )
            })
            .collect();
        let dead_lettered_at_ms = stream::parse_id(&copy.id).0 as i64;
        let mut letter = Self {
            sale_id: sale.clone(),
            entry: format!("{sale}/{}", copy.id),
            id: copy.id.clone(),
            original_id,
            copies: vec![copy.id],
            reason_class: String::new(),
            reason: String::new(),
            consumer,
            dead_lettered_at_ms,
            age_ms: (now_ms - dead_lettered_at_ms).max(0),
            event_type: None,
            reservation_id: None,
            deliveries,
            fields,
        };
        letter.set_reason(reason);
        let text = letter.text_fields();
        letter.event_type = text.get(field::TYPE).cloned();
        letter.reservation_id = text
            .get(field::RESERVATION_ID)
            .and_then(|raw| ReservationId::parse(raw).ok());
        letter
    }

    /// Adds a later copy of the same entry.
    pub fn add_copy(&mut self, copy: &StreamId) {
        self.copies.push(copy.id.clone());
        if let Some(reason) = copy.map.get(dead_field::REASON) {
            self.set_reason(text_of(reason));
        }
        if self.deliveries.is_none() {
            self.deliveries = copy
                .map
                .get(dead_field::DELIVERIES)
                .and_then(|v| text_of(v).parse().ok());
        }
    }

    fn set_reason(&mut self, reason: String) {
        self.reason_class = reason_class(&reason);
        self.reason = reason;
    }

    /// The original fields as text, exactly as a projector reads an entry.
    pub fn text_fields(&self) -> HashMap<String, String> {
        stream::fields(&StreamId {
            id: self.original_id.clone(),
            map: self.fields.clone(),
            ..StreamId::default()
        })
    }

    /// The original fields for display: text, or `0x…` for bytes that are not.
    pub fn shown_fields(&self) -> std::collections::BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(name, value)| (name.clone(), shown(value)))
            .collect()
    }

    /// The event, read with `read`.
    pub fn event(&self, read: EventReader) -> Result<SaleEvent, EventError> {
        read(&self.text_fields())
    }

    /// True when `filter` (`--reason`) names its class, or is part of its reason.
    pub fn matches_reason(&self, filter: &str) -> bool {
        self.reason_class == filter || self.reason.contains(filter)
    }
}

/// The class of a dead letter's reason, from the texts the projector writes
/// (`ProjectError`'s): what `list` counts by, so a reason carrying details (a
/// constraint's message) still counts under one name.
pub fn reason_class(reason: &str) -> String {
    if reason.contains("record in Redis is unreadable") {
        return "unreleasable".into();
    }
    if reason.starts_with("malformed event") {
        return "malformed".into();
    }
    if let Some(rest) = reason.strip_prefix("PostgreSQL refused: ") {
        // The SQLSTATE, when the reason starts with one (`23514: new row violates ...`).
        let code = rest.split(':').next().unwrap_or_default();
        if code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return format!("refused:{code}");
        }
        return "refused".into();
    }
    "other".into()
}

/// A stream value as text ("" when it is not text), as `stream::fields` reads it.
fn text_of(value: &Value) -> String {
    redis::from_redis_value_ref::<String>(value).unwrap_or_default()
}

/// A stream value for display: its text, or its bytes in hex when they are not text.
fn shown(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("0x{hex}")
            }
        },
        other => {
            redis::from_redis_value_ref::<String>(other).unwrap_or_else(|_| format!("{other:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_named_sale_slash_id_or_id_with_its_sale() {
        let named = EntryRef::parse("s1/1712345678901-0", None).expect("SALE/ID");
        assert_eq!(named.sale.as_str(), "s1");
        assert_eq!(named.id, "1712345678901-0");
        assert_eq!(named.to_string(), "s1/1712345678901-0");
        assert_eq!(
            EntryRef::parse("1712345678901-0", Some("s1")).expect("ID --sale"),
            named
        );
        assert_eq!(
            EntryRef::parse("s1/1712345678901-0", Some("s1")).expect("both agree"),
            named
        );
        for (raw, sale) in [
            ("1712345678901-0", None),
            ("s1/1712345678901-0", Some("s2")),
            ("s1/abc", None),
            ("s1/1-2-3", None),
            ("s1/", None),
            ("bad sale/1-0", None),
        ] {
            let err = EntryRef::parse(raw, sale).expect_err(raw);
            assert_eq!(err.exit_code(), crate::error::exit::USAGE, "{raw}");
        }
    }

    #[test]
    fn reasons_are_counted_by_class() {
        assert_eq!(
            reason_class("malformed event: missing field `quantity`"),
            "malformed"
        );
        assert_eq!(
            reason_class("PostgreSQL refused: 23514: new row violates check constraint"),
            "refused:23514"
        );
        assert_eq!(
            reason_class("PostgreSQL refused: 23503: insert or update violates foreign key"),
            "refused:23503"
        );
        assert_eq!(
            reason_class("PostgreSQL refused: 22003: out of range"),
            "refused:22003"
        );
        assert_eq!(reason_class("PostgreSQL refused: db error"), "refused");
        assert_eq!(
            reason_class(
                "malformed event: x; the reservation's record in Redis is unreadable, so nothing was given back"
            ),
            "unreleasable"
        );
        assert_eq!(reason_class("something new"), "other");
    }

    #[test]
    fn a_copy_reads_back_the_original_fields_only() {
        let copy = StreamId {
            id: "1700000000000-3".into(),
            map: HashMap::from([
                (
                    "dead_reason".to_owned(),
                    Value::BulkString(b"malformed event: unknown event type `bought`".to_vec()),
                ),
                (
                    "original_id".to_owned(),
                    Value::BulkString(b"1699999999999-0".to_vec()),
                ),
                ("consumer".to_owned(), Value::BulkString(b"p1".to_vec())),
                ("type".to_owned(), Value::BulkString(b"bought".to_vec())),
                ("blob".to_owned(), Value::BulkString(vec![0xff, 0x00])),
            ]),
            ..StreamId::default()
        };
        let sale = SaleId::parse("s1").expect("valid id");
        let letter = DeadLetter::from_copy(&sale, copy, 1_700_000_001_000);
        assert_eq!(letter.entry, "s1/1700000000000-3");
        assert_eq!(letter.original_id, "1699999999999-0");
        assert_eq!(letter.age_ms, 1_000);
        assert_eq!(letter.reason_class, "malformed");
        assert_eq!(letter.event_type.as_deref(), Some("bought"));
        let shown = letter.shown_fields();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert_eq!(shown["blob"], "0xff00");
        assert!(letter.event(SaleEvent::from_fields).is_err());
        assert!(letter.matches_reason("malformed") && letter.matches_reason("bought"));
        assert!(!letter.matches_reason("refused"));
    }
}
