from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from invoicing_status.domain import Outcome, Submitted, TransitionError, check_update, plan
from invoicing_status.lifecycle import (
    FINAL,
    REASON_CODES,
    REASON_REQUIRED,
    TRANSITIONS,
    Reason,
    Status,
    allowed_reasons,
    is_allowed,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SUBMITTED = Submitted(received_event_id="rcv-1", received_at=T0)


def outcome(status: Status | None, event_id: str = "evt-1", reason: Reason | None = None) -> Outcome:
    return Outcome(status, "validate", T0 + timedelta(seconds=1), event_id, reason)


def test_received_event_records_submitted_once() -> None:
    changes = plan(None, SUBMITTED, outcome(None, "rcv-1"))
    assert [(c.status, c.source_event_id, c.occurred_at) for c in changes] == [(Status.SUBMITTED, "rcv-1", T0)]
    assert plan(Status.SUBMITTED, SUBMITTED, outcome(None, "rcv-1")) == []


def test_a_stage_event_arriving_first_records_submitted_before_its_outcome() -> None:
    rejection = Reason("REJ_SEMAN", "1 fatal finding")
    changes = plan(None, SUBMITTED, outcome(Status.REJECTED, reason=rejection))
    assert [c.status for c in changes] == [Status.SUBMITTED, Status.REJECTED]
    assert changes[0].source_event_id == "rcv-1"  # the received event's id: recorded once
    assert changes[1].reason == rejection


@pytest.mark.parametrize("current", [Status.REJECTED, Status.MADE_AVAILABLE, Status.APPROVED, Status.CASHED])
def test_late_or_duplicate_outcomes_never_move_an_invoice_backwards(current: Status) -> None:
    for late in (Status.SUBMITTED, Status.REJECTED, Status.MADE_AVAILABLE, Status.ISSUED, None):
        assert plan(current, SUBMITTED, outcome(late)) == []


def test_every_status_is_in_the_table_or_final() -> None:
    for status in Status:
        assert status in TRANSITIONS or status in FINAL, status
    for status in FINAL:
        assert status not in TRANSITIONS


@pytest.mark.parametrize(("current", "new"), [(c, n) for c in Status for n in Status])
def test_every_transition_allowed_or_refused_per_the_table(current: Status, new: Status) -> None:
    reason = Reason(min(allowed_reasons(new)), "because") if new in REASON_REQUIRED else None
    if new in TRANSITIONS.get(current, frozenset()):
        assert is_allowed(current, new)
        assert check_update(current, new.value, reason) is new
    else:
        assert not is_allowed(current, new)
        with pytest.raises(TransitionError) as refused:
            check_update(current, new.value, reason)
        assert refused.value.precondition
        assert str(current.value) in refused.value.message and "allowed" in refused.value.message


def test_suspended_then_completed_goes_back_to_the_buyer() -> None:
    assert is_allowed(Status.SUSPENDED, Status.COMPLETED)
    assert is_allowed(Status.COMPLETED, Status.APPROVED)
    assert is_allowed(Status.PAYMENT_SENT, Status.CASHED)


def test_skipping_the_lifecycle_is_a_failed_precondition_naming_the_allowed_steps() -> None:
    with pytest.raises(TransitionError) as refused:
        check_update(Status.MADE_AVAILABLE, 212, None)
    assert refused.value.precondition
    assert "203 MADE_AVAILABLE" in refused.value.message and "204 IN_HAND" in refused.value.message


@pytest.mark.parametrize("status", sorted(REASON_REQUIRED))
def test_reason_is_required(status: Status) -> None:
    current = Status.SUBMITTED if status in (Status.REJECTED, Status.INADMISSIBLE) else Status.IN_HAND
    with pytest.raises(TransitionError) as missing:
        check_update(current, status.value, None)
    assert not missing.value.precondition and missing.value.field == "reason"


def test_unknown_code_is_invalid_argument() -> None:
    with pytest.raises(TransitionError) as unknown:
        check_update(Status.IN_HAND, 299, None)
    assert not unknown.value.precondition and unknown.value.field == "status_code"


def test_a_reason_code_the_official_rules_do_not_allow_for_the_status_is_invalid_argument() -> None:
    with pytest.raises(TransitionError) as refused:
        check_update(Status.IN_HAND, Status.SUSPENDED.value, Reason("MISSING_PO", "no purchase order"))
    assert not refused.value.precondition and refused.value.field == "reason.code"
    assert "208 SUSPENDED" in refused.value.message and "CMD_ERR" in refused.value.message
    # A code of the official list, but not one of 208's.
    with pytest.raises(TransitionError):
        check_update(Status.IN_HAND, Status.SUSPENDED.value, Reason("TX_TVA_ERR", "wrong VAT rate"))
    assert check_update(Status.IN_HAND, Status.SUSPENDED.value, Reason("CMD_ERR", "no purchase order"))


def test_a_status_without_its_own_list_takes_any_official_code_or_none() -> None:
    assert allowed_reasons(Status.APPROVED) == REASON_CODES
    assert check_update(Status.IN_HAND, Status.APPROVED.value, None) is Status.APPROVED
    assert check_update(Status.IN_HAND, Status.APPROVED.value, Reason("AUTRE", "noted")) is Status.APPROVED
    with pytest.raises(TransitionError) as refused:
        check_update(Status.IN_HAND, Status.APPROVED.value, Reason("OK", "fine"))
    assert refused.value.field == "reason.code" and "official list" in refused.value.message


def test_a_routing_error_takes_its_one_reason_when_given_one() -> None:
    assert check_update(Status.MADE_AVAILABLE, 221, None) is Status.ROUTING_ERROR
    assert check_update(Status.MADE_AVAILABLE, 221, Reason("ROUTAGE_ERR", "not our buyer")) is Status.ROUTING_ERROR
    with pytest.raises(TransitionError):
        check_update(Status.MADE_AVAILABLE, 221, Reason("ADR_ERR", "not our buyer"))


def test_an_inadmissible_document_ends_501_from_200_only() -> None:
    reason = Reason("IRR_SYNTAX", "PARSE: document is not well-formed XML")
    changes = plan(None, SUBMITTED, outcome(Status.INADMISSIBLE, reason=reason))
    assert [c.status for c in changes] == [Status.SUBMITTED, Status.INADMISSIBLE]
    assert Status.INADMISSIBLE in FINAL
    for current in Status:
        assert is_allowed(current, Status.INADMISSIBLE) is (current is Status.SUBMITTED), current
    # Once inadmissible, nothing moves it, a late routing outcome included.
    for late in (Status.MADE_AVAILABLE, Status.ISSUED, Status.REJECTED, None):
        assert plan(Status.INADMISSIBLE, SUBMITTED, outcome(late)) == []


def test_an_unknown_code_names_the_lifecycle_codes() -> None:
    with pytest.raises(TransitionError) as unknown:
        check_update(Status.IN_HAND, 250, None)
    assert "200-214, 220-221, 224-228, 501" in unknown.value.message


def test_unpaid_is_made_available_and_not_at_an_end() -> None:
    from invoicing_status.queries import UNPAID

    assert set(UNPAID) == {203, 204, 205, 206, 207, 208, 209, 211, 214, 224, 225, 226, 227, 228}
