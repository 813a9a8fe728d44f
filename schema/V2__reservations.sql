-- Each reservation's fate, decided exactly once: 'confirmed' (it became an order) or
-- 'released' (its units went back on sale). The primary key makes a second decision
-- impossible; orders reference ('confirmed') fates only, so a released reservation can
-- never hold an order and an order can never be released.
-- sale_id has no foreign key on purpose: a reservation for a sale PostgreSQL does not
-- know (it must refuse its order) still needs its 'released' fate recorded.
CREATE TABLE reservation_fates (
    reservation_id uuid        PRIMARY KEY,
    sale_id        text        NOT NULL,
    user_id        text        NOT NULL CHECK (user_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    quantity       bigint      NOT NULL CHECK (quantity > 0),
    fate           text        NOT NULL CHECK (fate IN ('confirmed', 'released')),
    reason         text,        -- why a reservation was released
    stream_id      text,        -- the sale stream entry it came from
    reserved_at    timestamptz NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reservation_id, fate),
    CHECK ((fate = 'released') = (reason IS NOT NULL))
);
CREATE INDEX reservation_fates_sale ON reservation_fates (sale_id, fate);

-- One order per confirmed reservation (UNIQUE reservation_id: redelivery is harmless).
CREATE TABLE orders (
    order_id       uuid        PRIMARY KEY,
    reservation_id uuid        NOT NULL UNIQUE,
    fate           text        NOT NULL DEFAULT 'confirmed' CHECK (fate = 'confirmed'),
    sale_id        text        NOT NULL REFERENCES sales (sale_id),
    user_id        text        NOT NULL,
    quantity       bigint      NOT NULL CHECK (quantity > 0),
    reserved_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (reservation_id, fate) REFERENCES reservation_fates (reservation_id, fate)
);
CREATE INDEX orders_sale ON orders (sale_id);
