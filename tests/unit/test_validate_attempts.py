"""A document whose validation worker dies or times out is tried again,
alone, then ends inadmissible (501): never the DLQ, never a stuck
partition."""

from __future__ import annotations

from invoicing.v1 import events_pb2

from invoicing_validate.admissibility import SYNTAX
from invoicing_validate.agents import with_attempts
from invoicing_validate.domain import CRASH_RULE, TIME_LIMIT_RULE, validated_event
from invoicing_validate.validation import Summary, ValidationReport
from invoicing_validate.workers import WorkerCrashed, WorkerTimedOut

DOC = (b"<Invoice/>", "a.xml")
GOOD = ValidationReport(valid=True, format="ubl-invoice", profile="", findings=[], summary=Summary())


class Script:
    """A submit that fails as scripted, then succeeds; records each call."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls: list[bool] = []

    async def __call__(self, document: tuple[bytes, str], alone: bool) -> ValidationReport:
        self.calls.append(alone)
        if self.failures:
            raise self.failures.pop(0)
        return GOOD


async def test_a_crashed_worker_costs_one_more_attempt_alone() -> None:
    submit = Script(WorkerCrashed("died"))
    assert await with_attempts(submit, DOC, attempts=2, time_limit=30) is GOOD
    assert submit.calls == [False, True]


async def test_a_document_that_always_times_out_ends_inadmissible() -> None:
    submit = Script(WorkerTimedOut("slow"), WorkerTimedOut("slow"))
    report = await with_attempts(submit, DOC, attempts=2, time_limit=7.5)
    assert submit.calls == [False, True]
    assert not report.valid and report.findings[0].rule == TIME_LIMIT_RULE
    assert "7.5s" in report.findings[0].message
    received = events_pb2.InvoiceReceived(event_id="e", invoice=events_pb2.InvoiceRef(invoice_id="i"))
    event = validated_event(received, report)
    assert not event.valid and event.inadmissible and event.reason.code == SYNTAX
    assert "7.5s" in event.reason.text and TIME_LIMIT_RULE in event.reason.text


async def test_a_crash_every_time_ends_inadmissible_after_the_last_attempt() -> None:
    submit = Script(*(WorkerCrashed("died") for _ in range(3)))
    report = await with_attempts(submit, DOC, attempts=3, time_limit=30)
    assert submit.calls == [False, True, True]
    assert not report.valid and "tried 3 time(s)" in report.findings[0].message
    received = events_pb2.InvoiceReceived(event_id="e", invoice=events_pb2.InvoiceRef(invoice_id="i"))
    event = validated_event(received, report)
    assert event.inadmissible and event.reason.code == SYNTAX and CRASH_RULE in event.reason.text
