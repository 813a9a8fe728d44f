//! What PostgreSQL decided about a dead letter's reservation: nothing yet, a hold
//! waiting, an order, or a release (final: a released reservation never becomes an
//! order, the schema forbids it).
//!
//! Read-only. PostgreSQL is the one that decides a fate; this only reports it, in one
//! statement so the parts agree.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;
use yoink_core::ReservationId;

/// A reservation's fate in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fate", rename_all = "snake_case")]
pub enum Fate {
    /// PostgreSQL has no record of it: no order, no release, no hold. Its units are
    /// still taken in Redis (the projector gives units back only with a release).
    None,
    /// Recorded as a hold that waits for the checkout side's confirm (or its expiry).
    Held { expires_at_ms: i64 },
    /// It is an order.
    Confirmed { order_id: Option<Uuid> },
    /// Released, for good: its units went back on sale and it cannot become an order.
    Released { reason: String },
}

impl Fate {
    /// True when PostgreSQL already holds what projecting would write (an order, or a
    /// hold waiting for its decision).
    pub fn is_projected(&self) -> bool {
        matches!(self, Fate::Held { .. } | Fate::Confirmed { .. })
    }

    /// One word, for the human output.
    pub fn name(&self) -> &'static str {
        match self {
            Fate::None => "none",
            Fate::Held { .. } => "held",
            Fate::Confirmed { .. } => "confirmed",
            Fate::Released { .. } => "released",
        }
    }
}

/// The fate of `id` as PostgreSQL records it now.
pub async fn of(
    client: &impl GenericClient,
    id: ReservationId,
) -> Result<Fate, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT f.fate, f.reason, o.order_id, h.state,
                    (extract(epoch FROM h.expires_at) * 1000)::bigint
             FROM (SELECT $1::uuid AS id) r
             LEFT JOIN reservation_fates f ON f.reservation_id = r.id
             LEFT JOIN orders o ON o.reservation_id = r.id
             LEFT JOIN holds h ON h.reservation_id = r.id",
            &[&id.as_uuid()],
        )
        .await?;
    let fate: Option<&str> = row.get(0);
    let hold_state: Option<&str> = row.get(3);
    Ok(match (fate, hold_state) {
        (Some("confirmed"), _) => Fate::Confirmed {
            order_id: row.get(2),
        },
        (Some(_), _) => Fate::Released {
            reason: row.get::<_, Option<String>>(1).unwrap_or_default(),
        },
        // A hold decided has a fate row (written in the same transaction); one
        // without is still waiting.
        (None, Some(_)) => Fate::Held {
            expires_at_ms: row.get::<_, Option<i64>>(4).unwrap_or_default(),
        },
        (None, None) => Fate::None,
    })
}
