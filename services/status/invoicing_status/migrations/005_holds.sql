-- An invoice whose processing is held: a stage dead-lettered one of its
-- events (invoicing.invoice.dlq.v1). GetInvoice shows it; it goes when the
-- invoice's processing moves past the stage (an event of rank
-- clears_from_rank or later is applied: received 0, validated 1, routed 2).
CREATE TABLE holds (
    invoice_id       uuid PRIMARY KEY,
    stage            text NOT NULL,
    dead_letter      text NOT NULL,
    source_topic     text NOT NULL,
    error_type       text NOT NULL,
    clears_from_rank smallint NOT NULL,
    held_at          timestamptz NOT NULL
);
