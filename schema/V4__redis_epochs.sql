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
-- answers a retry with the original reservation. No index: the high-water mark is
-- kept on `sales`, and only a rebuild counts positions per epoch.
ALTER TABLE reservation_fates
    ADD COLUMN epoch bigint CHECK (epoch >= 1),
    ADD COLUMN seq bigint CHECK (seq >= 1),
    ADD COLUMN idempotency_key text;

-- The high-water mark: the newest position of a reservation decided, raised in the same
-- statement that counts its units (0, 0 until one is).
ALTER TABLE sales
    ADD COLUMN hwm_epoch bigint NOT NULL DEFAULT 0 CHECK (hwm_epoch >= 0),
    ADD COLUMN hwm_seq bigint NOT NULL DEFAULT 0 CHECK (hwm_seq >= 0);

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
    -- Set when a rebuild ends the epoch (nothing of it can be decided after that): the
    -- distinct seqs PostgreSQL decided in it and the highest. Reservations lost with
    -- Redis = greatest(issued_seq, max_decided_seq) - decided_seqs.
    decided_seqs        bigint,
    max_decided_seq     bigint,
    PRIMARY KEY (sale_id, epoch)
);

-- Sales that existed before this migration live in Redis in epoch 1.
INSERT INTO sale_epochs (sale_id, epoch, reason)
SELECT sale_id, 1, 'existed before positions' FROM sales;
