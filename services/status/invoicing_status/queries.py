"""Status store, read side: list, watch, positions, and what the exchange
with other platforms reads (shared invoices, a status to send)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from invoicing.v1 import common_pb2

from invoicing_common.db import Database
from invoicing_status.access import Parties, Viewer
from invoicing_status.lifecycle import OWED, Status
from invoicing_status.sharing import Candidate, Shared


@dataclass(frozen=True)
class Filter:
    seller_id: str = ""
    buyer_id: str = ""
    status_codes: tuple[int, ...] = ()
    received_from: datetime | None = None
    received_to: datetime | None = None
    due_before: date | None = None
    # Made available (203) or a later status, and not at an end (lifecycle.OWED).
    unpaid: bool = False


# Statuses of an invoice still owed (Filter.unpaid).
UNPAID = tuple(sorted(s.value for s in OWED))


@dataclass(frozen=True)
class ListItem:
    invoice_id: str
    status: Status
    received_at: datetime
    updated_at: datetime
    invoice_number: str
    seller_ids: list[str]
    buyer_ids: list[str]
    filename: str
    reason_code: str
    reason_text: str
    due_date: date | None = None


@dataclass(frozen=True)
class SharedStatus:
    """One row of a shared invoice's history, as a CDAR message needs it."""

    invoice_id: str
    shared: Shared
    summary: common_pb2.InvoiceSummary
    change: common_pb2.StatusChange
    # Its rank in the invoice's history, from 0 (the message id derives from it).
    position: int


# Candidates a message's invoice number may name: more is not one invoice.
_MAX_CANDIDATES = 20


@dataclass(frozen=True)
class Cursor:
    """Position in the ListInvoices order (received_at DESC, invoice_id DESC)."""

    received_at: datetime
    invoice_id: str


def _filter_sql(f: Filter, viewer: Viewer, args: list[Any], status_column: str, events: bool = False) -> str:
    clauses = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if not viewer.everything:
        # The rule of access.can_see, as SQL (GIN indexes on both arrays).
        sirens = arg(list(viewer.sirens))
        parties = f"(i.seller_sirens && {sirens}::text[] OR i.buyer_sirens && {sirens}::text[])"
        if events:
            # A watch skips the positions it may not see, so an event's
            # visibility must not change once written. The parties are
            # learnt from the validated document, after the 200 SUBMITTED
            # row and in the same transaction as every later row: 200 is
            # the submitter's event only (GetInvoice still shows it to the
            # parties), so that what a watcher skipped stays skipped.
            parties = f"({status_column} <> {int(Status.SUBMITTED.value)} AND {parties})"
        clauses.append(f"(i.submitter = {arg(viewer.subject)} OR {parties})")

    if f.seller_id:
        clauses.append(f"{arg(f.seller_id)} = ANY(i.seller_ids)")
    if f.buyer_id:
        clauses.append(f"{arg(f.buyer_id)} = ANY(i.buyer_ids)")
    if f.status_codes:
        clauses.append(f"{status_column} = ANY({arg(list(f.status_codes))}::smallint[])")
    if f.received_from is not None:
        clauses.append(f"i.received_at >= {arg(f.received_from)}")
    if f.received_to is not None:
        clauses.append(f"i.received_at < {arg(f.received_to)}")
    if f.due_before is not None:
        clauses.append(f"i.due_date < {arg(f.due_before)}")
    if f.unpaid:
        clauses.append(f"i.status_code = ANY({arg(list(UNPAID))}::smallint[])")
    return " AND ".join(clauses) if clauses else "true"


class StatusQueries:
    """Read side: list, watch, positions."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def list_invoices(self, f: Filter, viewer: Viewer, limit: int, after: Cursor | None) -> list[ListItem]:
        args: list[Any] = []
        where = _filter_sql(f, viewer, args, "i.status_code")
        if after is not None:
            args += [after.received_at, after.invoice_id]
            where += f" AND (i.received_at, i.invoice_id) < (${len(args) - 1}, ${len(args)}::uuid)"
        args.append(limit)
        rows = await self._database.pool.fetch(
            "SELECT i.invoice_id, i.status_code, i.received_at, i.updated_at, i.invoice_number, i.seller_ids,"
            " i.buyer_ids, i.filename, i.reason_code, i.reason_text, i.due_date FROM invoices i"
            f" WHERE i.received_at IS NOT NULL AND {where}"
            f" ORDER BY i.received_at DESC, i.invoice_id DESC LIMIT ${len(args)}",
            *args,
        )
        return [
            ListItem(
                invoice_id=str(r["invoice_id"]),
                status=Status(r["status_code"]),
                received_at=r["received_at"],
                updated_at=r["updated_at"],
                invoice_number=r["invoice_number"],
                seller_ids=list(r["seller_ids"]),
                buyer_ids=list(r["buyer_ids"]),
                filename=r["filename"],
                reason_code=r["reason_code"] or "",
                reason_text=r["reason_text"] or "",
                due_date=r["due_date"],
            )
            for r in rows
        ]

    async def pruned_through(self) -> int:
        """The highest position whose event was pruned (0: none was)."""
        value = await self._database.pool.fetchval("SELECT through FROM pruned_positions")
        return int(value or 0)

    async def head_position(self) -> int:
        value = await self._database.pool.fetchval("SELECT COALESCE(max(seq), 0) FROM status_history")
        return int(value)

    async def events_after(self, f: Filter, viewer: Viewer, position: int, limit: int) -> list[tuple[int, bytes]]:
        """(position, StatusEvent bytes) of the history rows after ``position``
        that ``viewer`` may see."""
        args: list[Any] = [position]
        where = _filter_sql(f, viewer, args, "h.status_code", events=True)
        args.append(limit)
        rows = await self._database.pool.fetch(
            "SELECT h.seq, o.payload FROM status_history h JOIN outbox o ON o.seq = h.seq"
            " JOIN invoices i ON i.invoice_id = h.invoice_id"
            f" WHERE h.seq > $1 AND {where} ORDER BY h.seq LIMIT ${len(args)}",
            *args,
        )
        return [(int(r["seq"]), bytes(r["payload"])) for r in rows]

    async def currency(self, invoice_id: str) -> str:
        """The invoice's currency (BT-5), "" when not known yet."""
        raw = await self._database.pool.fetchval("SELECT summary FROM invoices WHERE invoice_id = $1", invoice_id)
        return common_pb2.InvoiceSummary.FromString(raw).currency if raw else ""

    async def current(self, invoice_id: str) -> tuple[Status, int] | None:
        row = await self._database.pool.fetchrow(
            "SELECT i.status_code, (SELECT max(seq) FROM status_history h WHERE h.invoice_id = i.invoice_id) AS seq"
            " FROM invoices i WHERE i.invoice_id = $1",
            invoice_id,
        )
        return None if row is None else (Status(row["status_code"]), int(row["seq"] or 0))

    async def parties(self, invoice_id: str) -> Parties | None:
        row = await self._database.pool.fetchrow(
            "SELECT submitter, seller_sirens, buyer_sirens FROM invoices WHERE invoice_id = $1", invoice_id
        )
        if row is None:
            return None
        # NULL: not known (yet), or not to be trusted (failed validation).
        return Parties(row["submitter"], frozenset(row["seller_sirens"] or ()), frozenset(row["buyer_sirens"] or ()))

    async def shared(self, invoice_id: str) -> Shared:
        """The platform the invoice is shared with, if any."""
        row = await self._database.pool.fetchrow(
            "SELECT origin_platform, destination_platform FROM invoices WHERE invoice_id = $1", invoice_id
        )
        if row is None:
            return Shared()
        return Shared(row["origin_platform"] or "", row["destination_platform"] or "")

    async def shared_candidates(self, peer_id: str, seller_siren: str, number: str) -> list[Candidate]:
        """Invoices shared with ``peer_id`` whose number is ``number`` and
        whose seller is ``seller_siren`` (sharing.match picks the one)."""
        rows = await self._database.pool.fetch(
            "SELECT invoice_id, status_code, seller_sirens, summary, origin_platform, destination_platform"
            " FROM invoices WHERE (origin_platform IS NOT NULL OR destination_platform IS NOT NULL)"
            " AND (origin_platform = $1 OR destination_platform = $1)"
            " AND btrim(invoice_number) = $2 AND $3 = ANY(seller_sirens) AND summary IS NOT NULL"
            " ORDER BY invoice_id LIMIT $4",
            peer_id,
            number.strip(),
            seller_siren,
            _MAX_CANDIDATES,
        )
        return [
            Candidate(
                invoice_id=str(r["invoice_id"]),
                status=Status(r["status_code"]),
                seller_sirens=frozenset(r["seller_sirens"] or ()),
                summary=common_pb2.InvoiceSummary.FromString(r["summary"]),
                shared=Shared(r["origin_platform"] or "", r["destination_platform"] or ""),
            )
            for r in rows
        ]

    async def shared_status(self, position: int) -> SharedStatus | None:
        """The history row at ``position`` (StatusEvent.sequence) with its
        invoice's sharing and summary; None when there is no such row."""
        r = await self._database.pool.fetchrow(
            "SELECT h.invoice_id, h.status_code, h.actor, h.occurred_at, h.reason_code, h.reason_text,"
            " h.source_event_id, h.trace_id, h.payment, i.summary, i.origin_platform, i.destination_platform,"
            " (SELECT count(*) FROM status_history p WHERE p.invoice_id = h.invoice_id AND p.seq < h.seq)"
            " AS position FROM status_history h JOIN invoices i ON i.invoice_id = h.invoice_id WHERE h.seq = $1",
            position,
        )
        if r is None:
            return None
        status = Status(r["status_code"])
        change = common_pb2.StatusChange(
            status_code=status.value,
            status=status.name,
            actor=r["actor"],
            source_event_id=r["source_event_id"],
            trace_id=r["trace_id"],
        )
        change.at.FromDatetime(r["occurred_at"])
        if r["reason_code"] or r["reason_text"]:
            change.reason.code, change.reason.text = r["reason_code"] or "", r["reason_text"] or ""
        if r["payment"]:
            payment = json.loads(r["payment"])
            change.payment.amount, change.payment.currency = payment["amount"], payment["currency"]
            change.payment.paid_on = payment["paid_on"]
        return SharedStatus(
            invoice_id=str(r["invoice_id"]),
            shared=Shared(r["origin_platform"] or "", r["destination_platform"] or ""),
            summary=common_pb2.InvoiceSummary.FromString(r["summary"]) if r["summary"] else common_pb2.InvoiceSummary(),
            change=change,
            position=int(r["position"]),
        )
