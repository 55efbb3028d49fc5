"""Holds: an invoice's processing waits on the dead-letter topic.

A stage that cannot process an invoice's event dead-letters it, and the
invoice stays where it was (200 SUBMITTED, say) with nothing to say why.
The status service also reads the DLQ: each dead letter of a pipeline
event holds its invoice, and GetInvoice says so (stage, since when, the
dead letter's position for `invoicectl dlq show`), without the error text,
which is for operators. The hold goes when the invoice's processing moves
past the stage (after a replay, say).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka import PermanentError, Record

# Pipeline topics in the order an invoice goes through them (delivered:
# only for an invoice routed to another platform).
RANK = {topics.RECEIVED: 0, topics.VALIDATED: 1, topics.ROUTED: 2, topics.DELIVERED: 3}
_STAGE_EVENTS = ("received", "validated", "routed", "delivered")
HELD_TECH = "HELD_TECH"


@dataclass(frozen=True)
class Hold:
    invoice_id: str
    stage: str
    dead_letter: str
    source_topic: str
    error_type: str
    clears_from_rank: int
    held_at: datetime

    def clearing_event_ids(self) -> list[str]:
        """The events whose application ends this hold: if one is already
        applied, the letter is old news (the invoice moved on)."""
        return [stage_event_id(self.invoice_id, stage) for stage in _STAGE_EVENTS[self.clears_from_rank :]]

    @property
    def message(self) -> str:
        return (
            f"processing held: the {self.stage} stage could not process this invoice (a technical fault, not a"
            f" finding about the document); the platform's operators are alerted (dead letter {self.dead_letter})"
        )


def hold_of(record: Record) -> Hold | None:
    """The hold a dead letter puts on its invoice; None for a letter that
    is not about a pipeline event of an invoice."""
    if record.value is None:
        raise PermanentError("dead letter without a value")
    letter = events_pb2.DeadLetter.FromString(record.value)
    rank = RANK.get(letter.source_topic)
    invoice_id = letter.key.decode("utf-8", errors="replace")
    if rank is None or not _is_uuid(invoice_id):
        return None
    # A platform's groups carry its topic prefix (peer.invoicing-route-delivery).
    stage = letter.consumer_group.removeprefix(topics.PREFIX).removeprefix("invoicing-") or "unknown"
    # Another stage's fault clears once that stage has produced its event
    # (a later rank); status's own, once it applies an event of that topic.
    clears_from = rank if stage == "status" else rank + 1
    failed_at = letter.failed_at.ToDatetime(tzinfo=UTC) if letter.HasField("failed_at") else datetime.now(UTC)
    return Hold(
        invoice_id=invoice_id,
        stage=stage,
        dead_letter=f"{record.partition}:{record.offset}",
        source_topic=letter.source_topic,
        error_type=letter.error_type,
        clears_from_rank=min(clears_from, len(_STAGE_EVENTS)),
        held_at=failed_at,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
