-- Detecting that Redis went back in time (a restart from an older snapshot, a restore,
-- a failover to a replica that lagged, a FLUSHALL), so a sale fails closed instead of
-- selling units PostgreSQL already sold.
--
-- Redis stamps every reservation with a position (epoch, seq): `seq` counts the
-- sale's reservations, `epoch` changes each time Redis is rebuilt from this ledger.
-- Redis's position only ever grows, so a Redis whose position is below one PostgreSQL
-- has seen has forgotten something: the sale is suspended and rebuilt from here.

-- The position each decided reservation was taken at (NULL for reservations taken
-- before positions existed), and its Idempotency-Key, so a rebuilt Redis still
-- answers a retry with the original reservation.
ALTER TABLE reservation_fates
    ADD COLUMN epoch bigint CHECK (epoch >= 1),
    ADD COLUMN seq bigint CHECK (seq >= 1),
    ADD COLUMN idempotency_key text;
-- The high-water mark (newest position applied) is one backward step on this index,
-- and the count of distinct positions per epoch tells reservations Redis lost.
CREATE INDEX reservation_fates_position ON reservation_fates (sale_id, epoch, seq);

-- One row per epoch of a sale's Redis state: epoch 1 when the sale is created, one
-- more each time Redis is rebuilt from PostgreSQL. `issued_seq` is the highest seq API
-- instances saw Redis hand out in that epoch (flushed every second), so reservations
-- answered 202 and lost with Redis before reaching PostgreSQL are counted, not silent.
CREATE TABLE sale_epochs (
    sale_id             text        NOT NULL REFERENCES sales (sale_id),
    epoch               bigint      NOT NULL CHECK (epoch >= 1),
    issued_seq          bigint      NOT NULL DEFAULT 0 CHECK (issued_seq >= 0),
    reason              text        NOT NULL,
    opened_at           timestamptz NOT NULL DEFAULT now(),
    -- For a rebuild: when the sale was suspended, and what the rebuild decided for the
    -- reservations Redis held that PostgreSQL had not decided yet.
    suspended_at        timestamptz,
    recovered_confirmed bigint      NOT NULL DEFAULT 0,
    recovered_released  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (sale_id, epoch)
);

-- Sales that existed before this migration live in Redis in epoch 1.
INSERT INTO sale_epochs (sale_id, epoch, reason)
SELECT sale_id, 1, 'existed before positions' FROM sales;
