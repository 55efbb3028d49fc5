-- The transactional outbox (invoicing_common.kafka.outbox): each directory
-- change's record on invoicing.directory.entries.v1 is written with the
-- change, in one transaction, and the relay publishes it. Published rows
-- keep their position for an hour: a writer waits for its change to reach
-- its instance's index (read-your-writes) by that position.
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
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_age ON outbox (published_at) WHERE published_at IS NOT NULL;
