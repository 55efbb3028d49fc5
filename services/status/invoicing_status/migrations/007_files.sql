-- The invoice's archived files (references only: status never holds the
-- bytes). Kept per event because topics are read independently: the
-- validated record's list (which adds the attachments extracted from the
-- invoice) wins over the received record's, whichever arrives first.
ALTER TABLE invoices ADD COLUMN received_files jsonb;
ALTER TABLE invoices ADD COLUMN validated_files jsonb;
