-- Current state of each invoice, with what the pipeline learnt about it.
CREATE TABLE invoices (
    invoice_id   uuid PRIMARY KEY,
    status_code  smallint NOT NULL,
    reason_code  text,
    reason_text  text,
    filename     text NOT NULL DEFAULT '',
    submitter    text NOT NULL DEFAULT '',
    received_at  timestamptz,
    trace_id     text NOT NULL DEFAULT '',
    summary      bytea,            -- invoicing.v1.InvoiceSummary
    findings     jsonb NOT NULL DEFAULT '[]',
    routing      jsonb,
    updated_at   timestamptz NOT NULL
);

-- Append-only: one row per transition, never updated.
CREATE TABLE status_history (
    seq              bigserial PRIMARY KEY,
    invoice_id       uuid NOT NULL REFERENCES invoices (invoice_id),
    status_code      smallint NOT NULL,
    previous_code    smallint,
    reason_code      text,
    reason_text      text,
    actor            text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    source_event_id  text NOT NULL,
    trace_id         text NOT NULL DEFAULT '',
    UNIQUE (invoice_id, status_code, source_event_id)
);
CREATE INDEX status_history_invoice ON status_history (invoice_id, seq);

-- Every consumed event id, written in the same transaction as its effect:
-- a redelivered event finds its id and changes nothing.
CREATE TABLE processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Status events waiting for publication on invoicing.invoice.status.v1,
-- written with the history row so none is lost or invented.
CREATE TABLE outbox (
    seq           bigint PRIMARY KEY REFERENCES status_history (seq),
    invoice_id    uuid NOT NULL,
    payload       bytea NOT NULL,  -- invoicing.v1.StatusEvent
    headers       jsonb NOT NULL DEFAULT '{}',
    published_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;
