-- Invoices shared with another platform (docs/reform.md): the one
-- that delivered it here (origin_platform: this platform is its receiving
-- side) or the one it was delivered to (destination_platform: this platform
-- is its sending side), by their ids in PLATFORMS_FILE. NULL: not shared.
-- CDAR lifecycle messages about an invoice go to that platform only, and
-- only that platform's are applied to it (invoicing_status.sharing).
ALTER TABLE invoices
    ADD COLUMN origin_platform      text,
    ADD COLUMN destination_platform text;

-- A peer's message names its invoice by seller SIREN, BT-1 and BT-2: the
-- number finds the few candidates among the shared invoices.
CREATE INDEX invoices_shared_number ON invoices (btrim(invoice_number))
    WHERE origin_platform IS NOT NULL OR destination_platform IS NOT NULL;

-- The CDAR messages other platforms sent about shared invoices, as received,
-- once each (by the sender's message id): those that were applied, written
-- with the status they set. What came over the wire stays inspectable.
CREATE TABLE received_lifecycle_messages (
    platform     text NOT NULL,
    message_id   text NOT NULL,
    invoice_id   uuid NOT NULL REFERENCES invoices (invoice_id),
    status_code  smallint NOT NULL,
    body         bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, message_id)
);
CREATE INDEX received_lifecycle_messages_invoice ON received_lifecycle_messages (invoice_id, received_at);
