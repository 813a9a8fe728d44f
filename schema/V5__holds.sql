-- Holds: reservations that wait for payment. A sale with hold_seconds > 0 turns each
-- 202 into a hold that the checkout side confirms (an order) or cancels, and that
-- expires by itself when neither happens in time (its units go back on sale).
--
-- PostgreSQL decides which of confirm, cancel and expiry wins: each decision locks the
-- hold's row, moves it out of 'held' once, and records the reservation's fate in the
-- same transaction ('confirmed' with its order, or 'released' with reason 'cancelled'
-- or 'expired'). Redis follows: the stock comes back through release.lua, once.

-- 0 = no holds: every reservation becomes an order at once, as before.
-- max_hold_seconds bounds extensions, counted from the reservation.
ALTER TABLE sales
    ADD COLUMN hold_seconds bigint NOT NULL DEFAULT 0 CHECK (hold_seconds >= 0),
    ADD COLUMN max_hold_seconds bigint NOT NULL DEFAULT 0 CHECK (max_hold_seconds >= 0),
    ADD CONSTRAINT max_hold_covers_hold CHECK (max_hold_seconds >= hold_seconds);

-- One row per hold, written when the projector first sees the reservation (or by the
-- first decision about it, if that comes first), never deleted: the row is what a
-- decision locks, so a hold can never be recorded again after it was decided.
CREATE TABLE holds (
    reservation_id  uuid        PRIMARY KEY,
    sale_id         text        NOT NULL REFERENCES sales (sale_id),
    user_id         text        NOT NULL,
    quantity        bigint      NOT NULL CHECK (quantity > 0),
    stream_id       text        NOT NULL,
    reserved_at     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    -- The latest expires_at an extension may reach.
    max_expires_at  timestamptz NOT NULL,
    epoch           bigint,
    seq             bigint,
    idempotency_key text,
    state           text        NOT NULL DEFAULT 'held'
                                CHECK (state IN ('held', 'confirmed', 'cancelled', 'expired')),
    extensions      integer     NOT NULL DEFAULT 0,
    decided_at      timestamptz,
    CHECK (expires_at <= max_expires_at),
    CHECK ((state = 'held') = (decided_at IS NULL))
);
-- Holds still waiting, per sale, by deadline: the expiry sweep, the reconciler's held
-- units and its overdue check read only these.
CREATE INDEX holds_waiting ON holds (sale_id, expires_at) WHERE state = 'held';
