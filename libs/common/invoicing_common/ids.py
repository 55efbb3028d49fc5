"""Identifiers for invoices and events.

Event ids are derived from the invoice id and the stage, so a stage that
re-processes a redelivered record emits the same event id and downstream
deduplication makes the effect happen once.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6f1c3c1e-58f4-4c55-9b1e-2f5b0a1f7c11")


def new_invoice_id() -> str:
    return str(uuid.uuid4())


def stage_event_id(invoice_id: str, stage: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{invoice_id}:{stage}"))
