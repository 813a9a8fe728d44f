-- An order is a reservation whose fate is 'confirmed': one row, not two.
--
-- Until now each order wrote three rows (its fate, its order, its outbox row), eight
-- index entries and two foreign-key checks, and the projector drained at 0.11x a COPY
-- of the same rows (issue 13). Now:
--   * the confirmed fate carries the order's id (orders is a view of those fates), so
--     the primary key on reservation_id alone makes "one order per reservation, and
--     never both an order and a release" structural: no second table, no composite
--     foreign key, no UNIQUE (reservation_id, fate) to back it;
--   * an outbox row for an order names its reservation instead of copying it into a
--     JSON payload: fates are never updated, so the relay builds the same payload from
--     the fate when it publishes (rows written before this migration keep theirs);
--   * user_id is checked for length only: its character set was a regular expression
--     per row (a fifth of the insert's cost), and every writer parses it with
--     ids::UserId first, the one place the alphabet is defined.

ALTER TABLE reservation_fates ADD COLUMN order_id uuid UNIQUE;

UPDATE reservation_fates f SET order_id = o.order_id
FROM orders o WHERE o.reservation_id = f.reservation_id;
-- A confirmed fate whose order row was lost (the reconciler's "re-project" case) is an
-- order again.
UPDATE reservation_fates SET order_id = gen_random_uuid()
WHERE fate = 'confirmed' AND order_id IS NULL;

ALTER TABLE reservation_fates
    ADD CONSTRAINT a_confirmed_fate_is_an_order CHECK ((fate = 'confirmed') = (order_id IS NOT NULL));

DROP TABLE orders;
ALTER TABLE reservation_fates DROP CONSTRAINT reservation_fates_reservation_id_fate_key;

ALTER TABLE reservation_fates DROP CONSTRAINT reservation_fates_user_id_check;
ALTER TABLE reservation_fates
    ADD CONSTRAINT user_id_length CHECK (octet_length(user_id) BETWEEN 1 AND 64);

-- The orders table's foreign key to sales refused an order for a sale PostgreSQL does
-- not know (a projector dead-letters it and gives its units back). Fates have no such
-- key on purpose (that reservation's release must still be recorded), so the ledger
-- refuses with the same SQLSTATE, once per statement rather than once per row.
CREATE FUNCTION refuse_unknown_sale(sale text) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'no sale % in PostgreSQL: its reservations cannot become orders', sale
        USING ERRCODE = 'foreign_key_violation';
END
$$;

-- Read-only in the code: every order is written as a confirmed fate (core's ledger).
-- A simple view, so PostgreSQL can delete through it (a test losing an order row
-- loses its fate with it, and the reconciler re-projects the reservation).
CREATE VIEW orders AS
SELECT order_id, reservation_id, fate, sale_id, user_id, quantity, reserved_at,
       decided_at AS created_at
FROM reservation_fates
WHERE fate = 'confirmed';

ALTER TABLE outbox
    ADD COLUMN reservation_id uuid,
    ALTER COLUMN payload DROP NOT NULL,
    ADD CONSTRAINT payload_or_reservation CHECK (payload IS NOT NULL OR reservation_id IS NOT NULL);
