//! A sale stream entry as the projector holds it: its id, its raw fields (kept for the
//! dead-letter copy) and the event they parse to, or why they do not.

use std::collections::HashMap;

use redis::streams::StreamId;
use yoink_core::events::{EventError, SaleEvent};

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: HashMap<String, String>,
    pub event: Result<SaleEvent, EventError>,
}

impl Entry {
    pub fn from_stream(raw: StreamId) -> Self {
        let fields: HashMap<String, String> = raw
            .map
            .into_iter()
            .map(|(k, v)| {
                let text = redis::from_redis_value::<String>(v)
                    .unwrap_or_else(|_| "<non-text value>".to_owned());
                (k, text)
            })
            .collect();
        let event = SaleEvent::from_fields(&fields);
        Self {
            id: raw.id,
            fields,
            event,
        }
    }
}
