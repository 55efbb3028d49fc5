-- The transactional outbox (invoicing_common.kafka.outbox): each receipt's
-- `received` record is written with the receipt, in one transaction, and
-- the relay publishes it. A committed receipt always has its record on the
-- way; a receipt that was not committed has none.
CREATE TABLE outbox (
    seq                 bigserial PRIMARY KEY,
    topic               text NOT NULL,
    key                 bytea NOT NULL,
    value               bytea,
    headers             jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    published_at        timestamptz,
    published_partition integer,
    published_offset    bigint
);
-- Documents are already compressed or small: compressing them again costs
-- CPU on every write for little space, and the rows are short-lived.
ALTER TABLE outbox ALTER COLUMN value SET STORAGE EXTERNAL;
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;
