-- Filters of ListInvoices / WatchInvoices, copied from the business summary.
ALTER TABLE invoices
    ADD COLUMN invoice_number text NOT NULL DEFAULT '',
    ADD COLUMN seller_ids     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN buyer_ids      text[] NOT NULL DEFAULT '{}';
CREATE INDEX invoices_received ON invoices (received_at DESC, invoice_id DESC);
CREATE INDEX invoices_seller_ids ON invoices USING gin (seller_ids);
CREATE INDEX invoices_buyer_ids ON invoices USING gin (buyer_ids);

-- Bounds the scan that recognises events already on the status topic after
-- a publisher crash.
ALTER TABLE outbox ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();

-- Seller + invoice number + issue year + type, held by the first valid
-- invoice; a second one carrying the same key is rejected (REJ_UNI). Released
-- when the holder is rejected, so a corrected invoice can be sent again.
CREATE TABLE business_keys (
    business_key text PRIMARY KEY,
    invoice_id   uuid NOT NULL REFERENCES invoices (invoice_id)
);
CREATE INDEX business_keys_invoice ON business_keys (invoice_id);
