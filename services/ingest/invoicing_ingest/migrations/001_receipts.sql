-- One row per accepted invoice. The same bytes from the same submitter are
-- the same invoice: a retry finds the first receipt instead of starting a
-- second journey.
CREATE TABLE receipts (
    invoice_id      uuid PRIMARY KEY,
    submitter       text NOT NULL,
    sha256          text NOT NULL,
    filename        text NOT NULL,
    size_bytes      integer NOT NULL,
    received_at     timestamptz NOT NULL,
    event_id        text NOT NULL,
    UNIQUE (submitter, sha256)
);

-- Every idempotency key a submitter used, and the invoice it answers.
CREATE TABLE idempotency_keys (
    submitter       text NOT NULL,
    idempotency_key text NOT NULL,
    invoice_id      uuid NOT NULL REFERENCES receipts (invoice_id),
    PRIMARY KEY (submitter, idempotency_key)
);
