-- Submitters recorded before authentication were a free request header
-- (x-submitter). Receipts and idempotency keys are now scoped to the
-- authenticated account: no account's subject may ever match an old value,
-- or it would be handed another caller's receipts as its own retries.
UPDATE receipts SET submitter = 'legacy:' || submitter;
UPDATE idempotency_keys SET submitter = 'legacy:' || submitter;
