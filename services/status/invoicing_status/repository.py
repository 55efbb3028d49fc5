"""Status store in PostgreSQL (schema ``status``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2

from invoicing_common.db import Database
from invoicing_common.ids import stage_event_id
from invoicing_status.domain import Change
from invoicing_status.lifecycle import Status

OUTBOX_CHANNEL = "status_outbox"


@dataclass
class InvoiceFacts:
    """What an event teaches about an invoice besides its status."""

    invoice_id: str
    filename: str = ""
    submitter: str = ""
    received_at: datetime | None = None
    trace_id: str = ""
    summary: common_pb2.InvoiceSummary | None = None
    findings: list[dict[str, str]] | None = None
    routing: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryRow:
    seq: int
    status: Status
    previous: Status | None
    reason_code: str
    reason_text: str
    actor: str
    occurred_at: datetime
    source_event_id: str
    trace_id: str


@dataclass(frozen=True)
class InvoiceView:
    invoice_id: str
    status: Status
    reason_code: str
    reason_text: str
    filename: str
    trace_id: str
    summary: common_pb2.InvoiceSummary
    findings: list[dict[str, str]]
    routing: dict[str, Any] | None
    history: list[HistoryRow]


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    invoice_id: str
    payload: bytes
    headers: dict[str, str]


Planner = Callable[[Status | None], list[Change]]


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _first_id(ids: Sequence[common_pb2.PartyIdentifier]) -> str:
    return f"{ids[0].scheme}:{ids[0].value}" if ids else ""


def status_event(
    seq: int, invoice_id: str, change: Change, previous: Status | None, summary: common_pb2.InvoiceSummary | None,
    trace_id: str,
) -> events_pb2.StatusEvent:  # fmt: skip
    event = events_pb2.StatusEvent(
        event_id=stage_event_id(invoice_id, f"status:{change.status.value}:{change.source_event_id}"),
        invoice_id=invoice_id,
        status_code=change.status.value,
        status=change.status.name,
        previous_status_code=previous.value if previous is not None else 0,
        occurred_at=_ts(change.occurred_at),
        trace_id=trace_id,
        sequence=seq,
        actor=change.actor,
    )
    if change.reason is not None:
        event.reason.code, event.reason.text = change.reason.code, change.reason.text
    if summary is not None:
        event.seller_id = _first_id(summary.seller_ids)
        event.buyer_id = _first_id(summary.buyer_ids)
        event.invoice_number = summary.invoice_number
    return event


class StatusRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def apply(self, event_id: str, facts: InvoiceFacts, planner: Planner) -> list[Change]:
        """Apply one consumed event exactly once; returns the changes made."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", event_id
            )
            if not fresh:
                return []
            row = await conn.fetchrow(
                "SELECT status_code, summary, trace_id FROM invoices WHERE invoice_id = $1 FOR UPDATE", facts.invoice_id
            )
            current = Status(row["status_code"]) if row is not None else None
            changes = planner(current)
            now = datetime.now(UTC)
            if row is None:
                if not changes:
                    return []
                await conn.execute(
                    "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, $2, $3)",
                    facts.invoice_id,
                    changes[0].status.value,
                    now,
                )
            await self._record_facts(conn, facts)
            summary = facts.summary
            if summary is None and row is not None and row["summary"] is not None:
                summary = common_pb2.InvoiceSummary.FromString(row["summary"])
            trace_id = facts.trace_id or (row["trace_id"] if row is not None else "")
            previous = current
            for change in changes:
                await self._append(conn, facts, change, previous, summary, trace_id, now)
                previous = change.status
            if changes:
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            return changes

    async def _record_facts(self, conn: asyncpg.Connection, facts: InvoiceFacts) -> None:
        await conn.execute(
            "UPDATE invoices SET"
            " filename = CASE WHEN $2 <> '' THEN $2 ELSE filename END,"
            " submitter = CASE WHEN $3 <> '' THEN $3 ELSE submitter END,"
            " received_at = COALESCE(received_at, $4),"
            " trace_id = CASE WHEN trace_id = '' THEN $5 ELSE trace_id END,"
            " summary = COALESCE($6, summary),"
            " findings = COALESCE($7::jsonb, findings),"
            " routing = COALESCE($8::jsonb, routing)"
            " WHERE invoice_id = $1",
            facts.invoice_id,
            facts.filename,
            facts.submitter,
            facts.received_at,
            facts.trace_id,
            facts.summary.SerializeToString() if facts.summary is not None else None,
            json.dumps(facts.findings) if facts.findings is not None else None,
            json.dumps(facts.routing) if facts.routing is not None else None,
        )

    async def _append(
        self, conn: asyncpg.Connection, facts: InvoiceFacts, change: Change, previous: Status | None,
        summary: common_pb2.InvoiceSummary | None, trace_id: str, now: datetime,
    ) -> None:  # fmt: skip
        reason_code = change.reason.code if change.reason else None
        reason_text = change.reason.text if change.reason else None
        seq = await conn.fetchval(
            "INSERT INTO status_history (invoice_id, status_code, previous_code, reason_code, reason_text, actor,"
            " occurred_at, source_event_id, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT DO NOTHING RETURNING seq",
            facts.invoice_id,
            change.status.value,
            previous.value if previous is not None else None,
            reason_code,
            reason_text,
            change.actor,
            change.occurred_at,
            change.source_event_id,
            trace_id,
        )
        if seq is None:
            return  # this exact transition is already recorded
        await conn.execute(
            "UPDATE invoices SET status_code = $2, reason_code = $3, reason_text = $4, updated_at = $5"
            " WHERE invoice_id = $1",
            facts.invoice_id,
            change.status.value,
            reason_code,
            reason_text,
            now,
        )
        event = status_event(seq, facts.invoice_id, change, previous, summary, trace_id)
        await conn.execute(
            "INSERT INTO outbox (seq, invoice_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
            seq,
            facts.invoice_id,
            event.SerializeToString(),
            json.dumps(facts.headers),
        )

    async def get_invoice(self, invoice_id: str) -> InvoiceView | None:
        async with self._database.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM invoices WHERE invoice_id = $1", invoice_id)
            if row is None:
                return None
            history = await conn.fetch("SELECT * FROM status_history WHERE invoice_id = $1 ORDER BY seq", invoice_id)
        return InvoiceView(
            invoice_id=str(row["invoice_id"]),
            status=Status(row["status_code"]),
            reason_code=row["reason_code"] or "",
            reason_text=row["reason_text"] or "",
            filename=row["filename"],
            trace_id=row["trace_id"],
            summary=common_pb2.InvoiceSummary.FromString(row["summary"])
            if row["summary"]
            else common_pb2.InvoiceSummary(),
            findings=json.loads(row["findings"]) if row["findings"] else [],
            routing=json.loads(row["routing"]) if row["routing"] else None,
            history=[
                HistoryRow(
                    seq=h["seq"],
                    status=Status(h["status_code"]),
                    previous=Status(h["previous_code"]) if h["previous_code"] is not None else None,
                    reason_code=h["reason_code"] or "",
                    reason_text=h["reason_text"] or "",
                    actor=h["actor"],
                    occurred_at=h["occurred_at"],
                    source_event_id=h["source_event_id"],
                    trace_id=h["trace_id"],
                )
                for h in history
            ],
        )

    async def pending_events(self, conn: asyncpg.Connection, limit: int) -> list[PendingEvent]:
        rows = await conn.fetch(
            "SELECT seq, invoice_id, payload, headers FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
            limit,
        )
        return [
            PendingEvent(r["seq"], str(r["invoice_id"]), bytes(r["payload"]), json.loads(r["headers"])) for r in rows
        ]

    async def mark_published(self, conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
        await conn.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])", list(seqs))
