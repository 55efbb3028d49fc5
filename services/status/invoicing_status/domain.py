"""Pure status logic: which transitions a pipeline event causes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from invoicing_status.lifecycle import FINAL, REASON_REQUIRED, Reason, Status, allowed_next, is_allowed


@dataclass(frozen=True)
class Change:
    status: Status
    actor: str
    occurred_at: datetime
    source_event_id: str
    reason: Reason | None = None


@dataclass(frozen=True)
class Submitted:
    """How an invoice entered: every pipeline event carries it."""

    received_event_id: str
    received_at: datetime


@dataclass(frozen=True)
class Outcome:
    """The status a pipeline stage asks for (None: no status change)."""

    status: Status | None
    actor: str
    occurred_at: datetime
    source_event_id: str
    reason: Reason | None = None
    extra: dict[str, object] = field(default_factory=dict)


def plan(current: Status | None, submitted: Submitted, outcome: Outcome) -> list[Change]:
    """Transitions to apply, in order.

    Topics are consumed independently, so a stage's event may arrive before
    the received event: SUBMITTED is then recorded first from the facts every
    event carries (same source event id, so it is recorded once). An outcome
    that is not a legal next step (late, duplicate or out of order) changes
    nothing: an invoice never moves backwards.
    """
    changes: list[Change] = []
    state = current
    if state is None:
        changes.append(Change(Status.SUBMITTED, "ingest", submitted.received_at, submitted.received_event_id))
        state = Status.SUBMITTED
    if outcome.status is not None and is_allowed(state, outcome.status):
        changes.append(
            Change(outcome.status, outcome.actor, outcome.occurred_at, outcome.source_event_id, outcome.reason)
        )
    return changes


class TransitionError(Exception):
    """An UpdateStatus request the lifecycle does not allow."""

    def __init__(self, field_name: str, message: str, precondition: bool) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message
        # True: FAILED_PRECONDITION (state-dependent); False: INVALID_ARGUMENT.
        self.precondition = precondition


def _allowed_text(current: Status) -> str:
    nxt = sorted(allowed_next(current))
    return ", ".join(f"{s.value} {s.name}" for s in nxt) if nxt else "none (final status)"


def check_update(current: Status, new_code: int, reason: Reason | None) -> Status:
    """Validate a party's status update against the lifecycle."""
    try:
        new = Status(new_code)
    except ValueError:
        raise TransitionError(
            "status_code", f"status_code {new_code} is not a lifecycle status (200-213)", False
        ) from None
    if new in REASON_REQUIRED and (reason is None or not reason.code or not reason.text):
        raise TransitionError("reason", f"status {new.value} {new.name} requires a reason code and text", False)
    if current in FINAL or new not in allowed_next(current):
        raise TransitionError(
            "status_code",
            f"invoice is {current.value} {current.name}; {new.value} {new.name} is not allowed next; "
            f"allowed: {_allowed_text(current)}",
            True,
        )
    return new
