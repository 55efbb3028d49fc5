"""Which dead letters hold an invoice, and what ends the hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka import Record
from invoicing_status.holds import RANK, hold_of

INVOICE = "5c004160-aa7e-471d-bb39-4f708d608902"


def _letter(source_topic: str, group: str, key: bytes = INVOICE.encode()) -> Record:
    failed_at = Timestamp()
    failed_at.FromDatetime(datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    letter = events_pb2.DeadLetter(
        event_id="e", source_topic=source_topic, source_partition=2, source_offset=40, key=key,
        value=b"\xff", error_type="MessageSizeTooLargeError", error="internal detail", consumer_group=group,
        failed_at=failed_at,
    )  # fmt: skip
    return Record(topics.DLQ, 3, 17, key, letter.SerializeToString(), [])


def test_another_stage_s_letter_holds_until_that_stage_produces_its_event() -> None:
    hold = hold_of(_letter(topics.RECEIVED, "invoicing-validate"))
    assert hold is not None
    assert (hold.invoice_id, hold.stage, hold.dead_letter) == (INVOICE, "validate", "3:17")
    assert hold.held_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    # Status applying the received event again does not end it; validated does.
    assert hold.clears_from_rank == 1
    assert hold.clearing_event_ids() == [
        stage_event_id(INVOICE, "validated"),
        stage_event_id(INVOICE, "routed"),
        stage_event_id(INVOICE, "delivered"),
    ]
    # What the tenant reads names the stage and the letter, not the error.
    assert "validate" in hold.message and "3:17" in hold.message and "internal detail" not in hold.message


def test_status_s_own_letter_holds_until_status_applies_that_topic() -> None:
    hold = hold_of(_letter(topics.VALIDATED, "invoicing-status"))
    assert hold is not None and hold.stage == "status" and hold.clears_from_rank == 1


def test_the_delivery_stage_s_letter_holds_until_the_destination_acknowledges() -> None:
    hold = hold_of(_letter(topics.ROUTED, "invoicing-route-delivery"))
    assert hold is not None and hold.stage == "route-delivery"
    assert hold.clears_from_rank == RANK[topics.DELIVERED]
    assert hold.clearing_event_ids() == [stage_event_id(INVOICE, "delivered")]


def test_a_platform_s_prefixed_groups_name_the_same_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "PREFIX", "peer.")
    hold = hold_of(_letter(topics.VALIDATED, "peer.invoicing-status"))
    assert hold is not None and hold.stage == "status" and hold.clears_from_rank == 1


def test_letters_that_are_not_about_an_invoice_hold_nothing() -> None:
    assert hold_of(_letter(topics.RECEIVED, "invoicing-validate", key=b"not-an-invoice-id")) is None
    assert hold_of(_letter("test.streams.in", "test-group")) is None
