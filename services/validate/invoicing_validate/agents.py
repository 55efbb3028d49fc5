"""Stream handler: received -> validated. Thin; the work is in checks/domain."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor

from invoicing.v1 import events_pb2
from opentelemetry.trace import Status, StatusCode

from invoicing_common import topics
from invoicing_common.streams import Record, StreamApp, decode_event, register_lag_gauge, send
from invoicing_common.telemetry import FINDINGS, VALIDATION_DURATION, record_invoice, tracer
from invoicing_validate.checks import run_checks_many
from invoicing_validate.dispatch import ChunkingDispatcher
from invoicing_validate.domain import validated_event
from invoicing_validate.validation import ValidationReport

log = logging.getLogger(__name__)


def register(app: StreamApp, executor: Executor, workers: int, concurrency: int) -> None:
    dispatcher: ChunkingDispatcher[tuple[bytes, str], ValidationReport] = ChunkingDispatcher(
        executor, workers, run_checks_many
    )
    validated = app.topic(topics.VALIDATED)

    async def handle(record: Record) -> None:
        event = decode_event(record, events_pb2.InvoiceReceived)
        invoice_id = event.invoice.invoice_id
        with tracer().start_as_current_span("validate invoice") as span:
            record_invoice(span, invoice_id)
            started = time.perf_counter()
            # CPU-bound: run in the process pool so the loop keeps consuming.
            report = await dispatcher.submit((event.document, event.invoice.filename))
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
            out = validated_event(event, report)
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
