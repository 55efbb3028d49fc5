-- The SIRENs an invoice names as seller and buyer (invoicing_common.parties),
-- which decide who may see and move it. Written only once validation has
-- passed (the seller checked against the submitting account); NULL until
-- then, or for good when it failed: such an invoice is its submitter's only.
-- Kept apart from seller_ids and buyer_ids, the filters' free identifier
-- values, where a 9-digit value of another scheme could pass for a SIREN.
-- Invoices routed before this migration get theirs from their stored summary
-- when the service starts (invoicing_status.backfill).
ALTER TABLE invoices
    ADD COLUMN seller_sirens text[],
    ADD COLUMN buyer_sirens  text[];

-- Submitters recorded before authentication were a free request header: no
-- account's subject may ever match one of them.
UPDATE invoices SET submitter = 'legacy:' || submitter WHERE submitter <> '';

CREATE INDEX invoices_seller_sirens ON invoices USING gin (seller_sirens);
CREATE INDEX invoices_buyer_sirens ON invoices USING gin (buyer_sirens);
CREATE INDEX invoices_submitter ON invoices (submitter);
