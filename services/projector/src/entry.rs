//! A sale stream entry as the projector holds it: its id, its fields exactly as Redis
//! holds them (kept for the dead-letter copy) and the event they parse to, or why they
//! do not.
//!
//! Parsing reads the fields as text with `yoink_core::stream::fields`, the one
//! conversion every process uses; the dead-letter copy must never lose what could not
//! be read as text, so it is written from the raw values, byte for byte.

use std::collections::HashMap;

use redis::Value;
use redis::streams::StreamId;
use yoink_core::events::{EventError, SaleEvent};
use yoink_core::stream;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    /// The entry's fields as Redis returned them.
    pub fields: HashMap<String, Value>,
    pub event: Result<SaleEvent, EventError>,
}

impl Entry {
    pub fn from_stream(raw: StreamId) -> Self {
        let event = SaleEvent::from_fields(&stream::fields(&raw));
        Self {
            id: raw.id,
            fields: raw.map,
            event,
        }
    }

    /// The fields as bytes, sorted by name: what the dead-letter copy carries.
    pub fn raw_fields(&self) -> Vec<(&str, Vec<u8>)> {
        let mut fields: Vec<(&str, Vec<u8>)> = self
            .fields
            .iter()
            .map(|(name, value)| (name.as_str(), bytes(value)))
            .collect();
        fields.sort();
        fields
    }
}

/// A stream value's bytes. Stream values are bulk strings; anything else is written as
/// its text, or described, rather than dropped.
fn bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes.clone(),
        other => redis::from_redis_value_ref::<String>(other)
            .unwrap_or_else(|_| format!("{other:?}"))
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_that_is_not_text_fails_to_parse_and_keeps_its_bytes_for_the_dead_letter() {
        let raw = StreamId {
            id: "1-0".into(),
            map: HashMap::from([
                ("type".to_owned(), Value::BulkString(b"reserved".to_vec())),
                ("blob".to_owned(), Value::BulkString(vec![0xff, 0x00, 0xfe])),
            ]),
            ..StreamId::default()
        };
        let entry = Entry::from_stream(raw);
        assert!(entry.event.is_err());
        assert_eq!(
            entry.raw_fields(),
            vec![
                ("blob", vec![0xff, 0x00, 0xfe]),
                ("type", b"reserved".to_vec()),
            ]
        );
    }
}
