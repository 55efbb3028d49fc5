-- The SIRENs an invoice names as seller and buyer (invoicing_common.parties),
-- which decide who may see and move it. Kept apart from seller_ids and
-- buyer_ids, the filters' free identifier values, where a 9-digit value of
-- another scheme could pass for a SIREN.
ALTER TABLE invoices
    ADD COLUMN seller_sirens text[] NOT NULL DEFAULT '{}',
    ADD COLUMN buyer_sirens  text[] NOT NULL DEFAULT '{}';

-- Invoices stored before: their summaries' SIRENs and French VAT numbers'
-- SIRENs (the filters' values). SIREN and SIRET values there were taken
-- from schemes 0002 and 0009 only, the VAT numbers are FR + key + SIREN.
UPDATE invoices SET
    seller_sirens = ARRAY(
        SELECT DISTINCT CASE WHEN v ~ '^[0-9]{9}$' THEN v ELSE substr(v, 5) END FROM unnest(seller_ids) AS v
        WHERE v ~ '^[0-9]{9}$' OR v ~ '^FR[0-9A-Z]{2}[0-9]{9}$'),
    buyer_sirens = ARRAY(
        SELECT DISTINCT CASE WHEN v ~ '^[0-9]{9}$' THEN v ELSE substr(v, 5) END FROM unnest(buyer_ids) AS v
        WHERE v ~ '^[0-9]{9}$' OR v ~ '^FR[0-9A-Z]{2}[0-9]{9}$');

CREATE INDEX invoices_seller_sirens ON invoices USING gin (seller_sirens);
CREATE INDEX invoices_buyer_sirens ON invoices USING gin (buyer_sirens);
CREATE INDEX invoices_submitter ON invoices (submitter);
