-- What housekeeping prunes by age (invoicing_status.housekeeping): processed
-- event ids, and outbox rows once published. Both grew for ever before.
CREATE INDEX processed_events_age ON processed_events (processed_at);
CREATE INDEX outbox_published_age ON outbox (published_at) WHERE published_at IS NOT NULL;

-- The highest position whose event was pruned from the outbox: a watch that
-- asks to resume before it is told so (OUT_OF_RANGE) rather than skip events.
CREATE TABLE pruned_positions (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    through   bigint NOT NULL
);
