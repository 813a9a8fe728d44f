-- Sales: the definition of each flash sale. PostgreSQL is the ledger of record; Redis
-- holds the live stock. Counters here are kept by the projector in the same
-- transaction as the rows they count, and the CHECKs make oversell impossible to commit.
CREATE TABLE sales (
    sale_id         text        PRIMARY KEY CHECK (sale_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    initial_stock   bigint      NOT NULL CHECK (initial_stock >= 0),
    limit_per_user  bigint      NOT NULL DEFAULT 0 CHECK (limit_per_user >= 0), -- 0 = no limit
    starts_at       timestamptz,
    ends_at         timestamptz,
    confirmed_units bigint      NOT NULL DEFAULT 0 CHECK (confirmed_units >= 0),
    released_units  bigint      NOT NULL DEFAULT 0 CHECK (released_units >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at),
    -- Invariant 1, enforced where it is decided: never more confirmed than stocked.
    CONSTRAINT no_oversell CHECK (confirmed_units <= initial_stock)
);
