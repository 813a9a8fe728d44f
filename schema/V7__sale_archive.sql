-- Ending and archiving a sale (issue 15): Redis holds what is in flight, PostgreSQL
-- holds history.
--
-- `yoink sale end` closes a sale now by moving `ends_at` to now (a sale that had not
-- started yet gets `starts_at` one millisecond before that, so the CHECK
-- ends_at > starts_at holds and no instant of the future is open). `ended_early_at`
-- records that an operator did it, and when (NULL: the sale ended on its schedule,
-- or has not ended).
--
-- `yoink sale archive` records `archived_at` here first, then removes every Redis key
-- of the sale. From then on PostgreSQL alone answers for the sale: its figures, its
-- reservations, its reconcile. A sale is archived only once it has ended, so
-- archived_at needs an ends_at at or before it; nothing ever clears archived_at.
ALTER TABLE sales
    ADD COLUMN ended_early_at timestamptz,
    ADD COLUMN archived_at timestamptz,
    ADD CONSTRAINT archived_after_its_end CHECK (archived_at IS NULL OR (ends_at IS NOT NULL AND ends_at <= archived_at));

-- API instances read the archives since their last look, every second.
CREATE INDEX sales_archived_at ON sales (archived_at) WHERE archived_at IS NOT NULL;
