-- Transactional outbox: order events are written in the same transaction as the order
-- or release they describe, and a relay publishes them (at least once) afterwards.
-- event_id is unique per event, so downstream consumers drop duplicates by it.
CREATE TABLE outbox (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL CHECK (event_type IN ('order.confirmed', 'reservation.released')),
    sale_id      text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
-- The relay only ever scans what is still unpublished.
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
