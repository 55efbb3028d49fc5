"""Stream handler: received -> validated. Thin; the work is in checks/domain."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from invoicing.v1 import events_pb2
from opentelemetry.trace import Status, StatusCode

from invoicing_common import topics
from invoicing_common.archive import ORIGIN_EMBEDDED, ORIGIN_INVOICE, file_ref
from invoicing_common.archive.model import sniff_media_type
from invoicing_common.archive.postgres import CoalescingArchive, PostgresArchive
from invoicing_common.kafka import Record, StreamApp, decode_event, register_lag_gauge, send
from invoicing_common.telemetry import (
    FINDINGS,
    RULES_SHADOW_DISAGREEMENTS,
    VALIDATION_DURATION,
    record_invoice,
    tracer,
)
from invoicing_validate.checks import run_checks_many
from invoicing_validate.dispatch import ChunkingDispatcher
from invoicing_validate.domain import (
    CRASH_RULE,
    TIME_LIMIT_RULE,
    shadow_diff,
    technical_failure,
    unique_name,
    validated_event,
)
from invoicing_validate.validation import ValidationReport
from invoicing_validate.workers import WorkerPool, WorkerTimedOut

log = logging.getLogger(__name__)


Submit = Callable[[tuple[bytes, str], bool], Awaitable[ValidationReport]]


async def with_attempts(
    submit: Submit, document: tuple[bytes, str], attempts: int, time_limit: float
) -> ValidationReport:
    """``submit(document, alone)`` until it gives a report, ``attempts``
    times at most, alone after the first (a document that kills its worker
    must not take a chunk of others down twice). When every attempt failed,
    the report of a technical failure: the document ends 501 INADMISSIBLE
    (IRR_SYNTAX), and the partition moves on."""
    failure: ValidationReport | None = None
    for attempt in range(1, attempts + 1):
        try:
            return await submit(document, attempt > 1)
        except WorkerTimedOut as exc:
            message = f"validation did not finish within {time_limit:g}s (tried {attempt} time(s))"
            failure = technical_failure(TIME_LIMIT_RULE, message)
            log.warning("validation attempt %d of %d timed out: %s", attempt, attempts, exc)
        except Exception as exc:  # noqa: BLE001 - its worker died (or the validator broke): try again, then give up
            message = f"the validator failed on this document (tried {attempt} time(s)): {type(exc).__name__}"
            failure = technical_failure(CRASH_RULE, message)
            log.warning("validation attempt %d of %d failed: %s", attempt, attempts, exc)
    assert failure is not None  # attempts >= 1
    return failure


async def fetch_document(archive: CoalescingArchive, event: events_pb2.InvoiceReceived) -> tuple[bytes, Any]:
    """The document a received record refers to, and its reference. A
    record from before the archive carries the bytes: they are archived now,
    so that its invoice can be downloaded like any other."""
    if not event.document:
        return await archive.read(event.original.sha256), event.original
    ref = file_ref(event.document, sniff_media_type(event.document[:64]), event.invoice.filename, ORIGIN_INVOICE)
    await archive.store([(ref, event.document)])
    return event.document, ref.to_proto()


async def archive_embedded(
    archive: CoalescingArchive, event: events_pb2.InvoiceReceived, report: ValidationReport
) -> list[Any]:
    """Archive the files carried inside the invoice; their references, named
    apart from the attachments sent beside it."""
    embedded = getattr(report, "attachments", None) or []
    if not embedded:
        return []
    taken = {a.filename for a in event.attachments}
    refs = []
    for item in embedded:
        name = unique_name(item.name, taken)
        taken.add(name)
        refs.append((file_ref(item.data, item.media_type, name, ORIGIN_EMBEDDED), item.data))
    await archive.store(refs)
    return [ref.to_proto() for ref, _ in refs]


def register(
    app: StreamApp, pool: WorkerPool, archive: PostgresArchive, concurrency: int, time_limit: float, attempts: int
) -> None:
    """``time_limit``: seconds one document may take (a chunk of N gets N
    times that). ``attempts``: how often a document whose worker died or ran
    out of time is tried, alone after the first, before it ends 501."""

    async def run_many(documents: list[tuple[bytes, str]]) -> Sequence[ValidationReport]:
        reports: Sequence[ValidationReport] = await pool.run(run_checks_many, (documents,), time_limit * len(documents))
        return reports

    dispatcher: ChunkingDispatcher[tuple[bytes, str], ValidationReport] = ChunkingDispatcher(pool.size, run_many)
    validated = app.topic(topics.VALIDATED)
    shadow_diffs = app.topic(topics.RULES_SHADOW)
    # The records in flight read their documents, and store the files
    # extracted from them, together.
    files = CoalescingArchive(archive)

    async def validate(document: bytes, filename: str) -> ValidationReport:
        return await with_attempts(dispatcher.submit, (document, filename), attempts, time_limit)

    async def handle(record: Record) -> None:
        event = decode_event(record, events_pb2.InvoiceReceived)
        invoice_id = event.invoice.invoice_id
        with tracer().start_as_current_span("validate invoice") as span:
            record_invoice(span, invoice_id)
            # The claim check: the record names the document; the archive
            # has it (checked against its hash as it is read).
            document, original = await fetch_document(files, event)
            started = time.perf_counter()
            # CPU-bound: run in the worker processes so the loop keeps consuming.
            report = await validate(document, event.invoice.filename)
            VALIDATION_DURATION.record(time.perf_counter() - started, {"format": report.format, "valid": report.valid})
            fatal = sum(1 for f in report.findings if f.severity != "warning")
            span.set_attributes(
                {
                    "invoicing.format": report.format,
                    "invoicing.profile": report.profile,
                    "invoicing.valid": report.valid,
                    "invoicing.findings.fatal": fatal,
                    "invoicing.findings.warning": len(report.findings) - fatal,
                }
            )
            for f in report.findings:
                FINDINGS.add(1, {"rule": f.rule, "severity": f.severity})
            embedded = await archive_embedded(files, event, report)
            out = validated_event(event, report, original, [*event.attachments, *embedded])
            diff = shadow_diff(out, report)
            if diff is not None:
                kind = "verdict" if diff.active_valid != diff.shadow_valid else "rules"
                pair = f"{diff.active_release}->{diff.shadow_release}"
                RULES_SHADOW_DISAGREEMENTS.add(1, {"releases": pair, "kind": kind})
                span.set_attribute("invoicing.rules_shadow.disagrees", kind)
                # Before the validated event: a redelivery may repeat it
                # (same event id, `invoicectl rules diff` shows it once),
                # but never lose it.
                await send(shadow_diffs, invoice_id, diff.SerializeToString(), diff.event_id)
            if not report.valid:
                span.set_attribute("invoicing.reason_code", out.reason.code)
                span.set_attribute("invoicing.reason", out.reason.text)
                span.set_status(Status(StatusCode.ERROR, f"{out.reason.code}: {out.reason.text}"[:500]))
            log.info("validated: %s, %d fatal finding(s)", report.format, fatal, extra={"invoice_id": invoice_id})
        await send(validated, invoice_id, out.SerializeToString(), out.event_id)

    register_lag_gauge(app)
    # Up to `concurrency` documents in flight, so the dispatcher can hand
    # the workers chunks.
    app.consume(topics.RECEIVED, handler=handle, concurrency=concurrency)
