-- Payment follow-up: each invoice's payment due date (BT-9, from its
-- validated summary), and the payment reported with 211 PAYMENT_SENT or
-- 212 CASHED ({"amount", "currency", "paid_on"}) on its history row.
ALTER TABLE invoices ADD COLUMN due_date date;
ALTER TABLE status_history ADD COLUMN payment jsonb;
CREATE INDEX invoices_due_date ON invoices (due_date) WHERE due_date IS NOT NULL;
