"""Status store in PostgreSQL (schema ``status``)."""

from __future__ import annotations

import json
import logging
import uuid
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
from invoicing_status.lifecycle import CHORUS_PRO, FINAL, FRENCH_NAMES, UNCL4343, Status

log = logging.getLogger(__name__)

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
    # Set for valid invoices: claimed in the same transaction (REJ_UNI rule).
    business_key: str | None = None


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
    received_at: datetime | None = None


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    invoice_id: str
    payload: bytes
    headers: dict[str, str]


# (current status, id of the invoice already holding the business key) -> changes
Planner = Callable[[Status | None, str | None], list[Change]]
# Serialises history appends across writers and instances, so positions
# (history seq) become visible in increasing order: a watcher that resumes
# after position N never misses a later-committed N-1.
_HISTORY_LOCK = 0x1A7E5EC0


_RECORD_FACTS = (
    "UPDATE invoices SET"
    " filename = CASE WHEN $2 <> '' THEN $2 ELSE filename END,"
    " submitter = CASE WHEN $3 <> '' THEN $3 ELSE submitter END,"
    " received_at = COALESCE(received_at, $4),"
    " trace_id = CASE WHEN trace_id = '' THEN $5 ELSE trace_id END,"
    " summary = COALESCE($6, summary),"
    " findings = COALESCE($7::jsonb, findings),"
    " routing = COALESCE($8::jsonb, routing),"
    " invoice_number = CASE WHEN $9 <> '' THEN $9 ELSE invoice_number END,"
    " seller_ids = CASE WHEN cardinality($10::text[]) > 0 THEN $10 ELSE seller_ids END,"
    " buyer_ids = CASE WHEN cardinality($11::text[]) > 0 THEN $11 ELSE buyer_ids END"
    " WHERE invoice_id = $1"
)
_SET_STATUS = (
    "UPDATE invoices SET status_code = $2, reason_code = $3, reason_text = $4, updated_at = $5 WHERE invoice_id = $1"
)
_INSERT_OUTBOX = "INSERT INTO outbox (seq, invoice_id, payload, headers) VALUES ($1, $2, $3, $4::jsonb)"


def _facts_args(facts: InvoiceFacts) -> tuple[Any, ...]:
    summary = facts.summary
    return (
        facts.invoice_id,
        facts.filename,
        facts.submitter,
        facts.received_at,
        facts.trace_id,
        summary.SerializeToString() if summary is not None else None,
        json.dumps(facts.findings) if facts.findings is not None else None,
        json.dumps(facts.routing) if facts.routing is not None else None,
        summary.invoice_number if summary is not None else "",
        _id_values(summary.seller_ids, summary.seller_vat_id) if summary is not None else [],
        _id_values(summary.buyer_ids, summary.buyer_vat_id) if summary is not None else [],
    )


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _first_id(ids: Sequence[common_pb2.PartyIdentifier]) -> str:
    return f"{ids[0].scheme}:{ids[0].value}" if ids else ""


def _id_values(ids: Sequence[common_pb2.PartyIdentifier], vat_id: str) -> list[str]:
    """Identifier values a filter can match (SIREN, SIRET, VAT id, ...). A
    SIRET also answers to its SIREN."""
    values = {i.value for i in ids if i.value}
    values |= {i.value[:9] for i in ids if i.scheme == "0009" and len(i.value) == 14}
    if vat_id:
        values.add(vat_id)
    return sorted(values)


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
        chorus_pro_status=CHORUS_PRO.get(change.status) or "",
        uncl4343_code=UNCL4343.get(change.status) or "",
        status_label_fr=FRENCH_NAMES[change.status],
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
        """Apply one consumed event or request exactly once; returns the
        changes made ([] when ``event_id`` was already applied)."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            changes = await self._apply_in(conn, event_id, facts, planner)
            if changes:
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            return changes

    async def apply_many(self, items: Sequence[tuple[str, InvoiceFacts, Planner]]) -> list[list[Change]]:
        """Apply several events in one transaction, in order, with the effect
        of applying them one by one: all or nothing, one commit per batch.

        The statements are set-based (about ten per batch whatever its size,
        against seven or more per event one by one). The few orderings the
        set-based form cannot reproduce exactly (a business key released and
        claimed again inside the batch, an unexpected history conflict) roll
        it back and apply the batch one event at a time instead.
        """
        try:
            async with self._database.pool.acquire() as conn, conn.transaction():
                results = await _BatchApply(conn, items).run()
                if any(results):
                    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
                return results
        except _NeedsSequential as why:
            log.info("status batch of %d event(s) applied one by one: %s", len(items), why)
        async with self._database.pool.acquire() as conn, conn.transaction():
            results = [await self._apply_in(conn, event_id, facts, planner) for event_id, facts, planner in items]
            if any(results):
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            return results

    async def _apply_in(
        self, conn: asyncpg.Connection, event_id: str, facts: InvoiceFacts, planner: Planner
    ) -> list[Change]:
        fresh = await conn.fetchval(
            "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", event_id
        )
        if not fresh:
            return []
        row = await conn.fetchrow(
            "SELECT status_code, summary, trace_id FROM invoices WHERE invoice_id = $1 FOR UPDATE", facts.invoice_id
        )
        current = Status(row["status_code"]) if row is not None else None
        duplicate_of = None
        if facts.business_key is not None and current not in FINAL:
            duplicate_of = await self._claim(conn, facts, create=row is None)
        changes = planner(current, duplicate_of)
        now = datetime.now(UTC)
        if row is None:
            if not changes:
                return []
            await conn.execute(
                "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
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
        if changes:
            # Re-entrant within the transaction: a batch takes it once.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _HISTORY_LOCK)
        for change in changes:
            await self._append(conn, facts, change, previous, summary, trace_id, now)
            previous = change.status
            if change.status is Status.REJECTED:
                await conn.execute("DELETE FROM business_keys WHERE invoice_id = $1", facts.invoice_id)
        return changes

    async def _claim(self, conn: asyncpg.Connection, facts: InvoiceFacts, create: bool) -> str | None:
        """Claim the business key; returns the other holder, if any."""
        if create:
            # The key references the invoice row, which must exist first.
            await conn.execute(
                "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, $2, now())"
                " ON CONFLICT DO NOTHING",
                facts.invoice_id,
                Status.SUBMITTED.value,
            )
        holder = await conn.fetchval(
            "INSERT INTO business_keys (business_key, invoice_id) VALUES ($1, $2)"
            " ON CONFLICT (business_key) DO UPDATE SET business_key = EXCLUDED.business_key RETURNING invoice_id",
            facts.business_key,
            facts.invoice_id,
        )
        return None if str(holder) == facts.invoice_id else str(holder)

    async def _record_facts(self, conn: asyncpg.Connection, facts: InvoiceFacts) -> None:
        await conn.execute(_RECORD_FACTS, *_facts_args(facts))

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
        await conn.execute(_SET_STATUS, facts.invoice_id, change.status.value, reason_code, reason_text, now)
        event = status_event(seq, facts.invoice_id, change, previous, summary, trace_id)
        await conn.execute(_INSERT_OUTBOX, seq, facts.invoice_id, event.SerializeToString(), json.dumps(facts.headers))

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
            received_at=row["received_at"],
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


class _NeedsSequential(Exception):
    """This batch must be applied one event at a time (see apply_many)."""


@dataclass
class _Current:
    """An invoice's state as the batch goes, as the one-by-one path would read it."""

    status: Status | None
    summary: bytes | None
    trace_id: str


@dataclass(frozen=True)
class _Planned:
    invoice_id: str  # canonical form, as the database returns it
    facts: InvoiceFacts
    change: Change
    previous: Status | None
    summary: common_pb2.InvoiceSummary | None
    trace_id: str


class _BatchApply:
    """One batch of events, applied with set-based statements.

    Reads what the batch needs at once (processed events, invoice rows under
    lock, business key holders), plans every event in Python in order with
    an in-memory view of each invoice, then writes history, facts, statuses
    and outbox rows with one statement (or one pipelined executemany) each.
    """

    def __init__(self, conn: asyncpg.Connection, items: Sequence[tuple[str, InvoiceFacts, Planner]]) -> None:
        self._conn = conn
        self._items = items

    async def run(self) -> list[list[Change]]:
        conn, items = self._conn, self._items
        results: list[list[Change]] = [[] for _ in items]
        fresh_ids = {
            r["event_id"]
            for r in await conn.fetch(
                "INSERT INTO processed_events (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
                " RETURNING event_id",
                [event_id for event_id, _, _ in items],
            )
        }
        fresh: list[int] = []
        for index, (event_id, _, _) in enumerate(items):
            if event_id in fresh_ids:  # a repeated id counts once, first
                fresh_ids.discard(event_id)
                fresh.append(index)
        if not fresh:
            return results
        try:
            ids = {index: str(uuid.UUID(items[index][1].invoice_id)) for index in fresh}
        except ValueError:
            raise _NeedsSequential("an invoice id is not a UUID") from None
        invoice_ids = sorted(set(ids.values()))
        # Every invoice of the batch gets a row first (as a claim would need
        # it); the one-by-one path creates one for any unknown invoice too.
        created = {
            str(r["invoice_id"])
            for r in await conn.fetch(
                "INSERT INTO invoices (invoice_id, status_code, updated_at)"
                " SELECT unnest($1::uuid[]), $2, now() ON CONFLICT DO NOTHING RETURNING invoice_id",
                invoice_ids,
                Status.SUBMITTED.value,
            )
        }
        state: dict[str, _Current] = {}
        for r in await conn.fetch(
            "SELECT invoice_id, status_code, summary, trace_id FROM invoices"
            " WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id FOR UPDATE",
            invoice_ids,
        ):
            invoice_id = str(r["invoice_id"])
            created_now = invoice_id in created
            state[invoice_id] = _Current(
                status=None if created_now else Status(r["status_code"]),
                summary=None if created_now else r["summary"],
                trace_id="" if created_now else r["trace_id"],
            )
        holders, claimant = await self._claim_keys(fresh, ids, state)

        planned: list[_Planned] = []
        rejected: set[str] = set()
        released: set[str] = set()
        for index in fresh:
            _, facts, planner = items[index]
            invoice_id = ids[index]
            current = state[invoice_id]
            duplicate_of = None
            key = facts.business_key
            if key is not None and current.status not in FINAL:
                if key in released:
                    raise _NeedsSequential(f"business key {key!r} released and claimed again")
                holder = holders[key]
                duplicate_of = None if holder == invoice_id else holder
            elif key is not None and claimant.get(key) == index:
                raise _NeedsSequential(f"business key {key!r} claimed for a final invoice")
            changes = planner(current.status, duplicate_of)
            summary = facts.summary
            if summary is None and current.summary is not None:
                summary = common_pb2.InvoiceSummary.FromString(current.summary)
            trace_id = facts.trace_id or current.trace_id
            previous = current.status
            for change in changes:
                planned.append(_Planned(invoice_id, facts, change, previous, summary, trace_id))
                previous = change.status
                if change.status is Status.REJECTED:
                    rejected.add(invoice_id)
                    released.update(k for k, h in holders.items() if h == invoice_id)
            current.status = previous
            if facts.summary is not None:
                current.summary = facts.summary.SerializeToString()
            if not current.trace_id:
                current.trace_id = facts.trace_id
            results[index] = changes
        await self._write(fresh, ids, planned, rejected)
        return results

    async def _claim_keys(
        self, fresh: list[int], ids: dict[int, str], state: dict[str, _Current]
    ) -> tuple[dict[str, str], dict[str, int]]:
        """Claim each business key of the batch for its first event whose
        invoice is not final: {key: holder}, {key: index of that event}."""
        claimant: dict[str, int] = {}
        for index in fresh:
            key = self._items[index][1].business_key
            if key is not None and key not in claimant and state[ids[index]].status not in FINAL:
                claimant[key] = index
        if not claimant:
            return {}, claimant
        rows = await self._conn.fetch(
            "INSERT INTO business_keys (business_key, invoice_id)"
            " SELECT k, i FROM unnest($1::text[], $2::uuid[]) AS t(k, i) ORDER BY k"
            " ON CONFLICT (business_key) DO UPDATE SET business_key = EXCLUDED.business_key"
            " RETURNING business_key, invoice_id",
            list(claimant),
            [ids[index] for index in claimant.values()],
        )
        return {r["business_key"]: str(r["invoice_id"]) for r in rows}, claimant

    async def _write(self, fresh: list[int], ids: dict[int, str], planned: list[_Planned], rejected: set[str]) -> None:
        conn = self._conn
        now = datetime.now(UTC)
        seqs: list[int] = []
        if planned:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _HISTORY_LOCK)
            rows = await conn.fetch(
                "INSERT INTO status_history (invoice_id, status_code, previous_code, reason_code, reason_text,"
                " actor, occurred_at, source_event_id, trace_id)"
                " SELECT i, s, p, rc, rt, a, o, e, t FROM unnest($1::uuid[], $2::smallint[], $3::smallint[],"
                " $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[], $10::int[])"
                " AS u(i, s, p, rc, rt, a, o, e, t, n) ORDER BY n"
                " ON CONFLICT DO NOTHING RETURNING seq, invoice_id, status_code, source_event_id",
                [p.invoice_id for p in planned],
                [p.change.status.value for p in planned],
                [p.previous.value if p.previous is not None else None for p in planned],
                [p.change.reason.code if p.change.reason else None for p in planned],
                [p.change.reason.text if p.change.reason else None for p in planned],
                [p.change.actor for p in planned],
                [p.change.occurred_at for p in planned],
                [p.change.source_event_id for p in planned],
                [p.trace_id for p in planned],
                list(range(len(planned))),
            )
            by_key = {(str(r["invoice_id"]), r["status_code"], r["source_event_id"]): r["seq"] for r in rows}
            for p in planned:
                seq = by_key.get((p.invoice_id, p.change.status.value, p.change.source_event_id))
                if seq is None or (seqs and seq <= seqs[-1]):
                    # A transition already recorded: the one-by-one path
                    # skips it and plans what follows from there.
                    raise _NeedsSequential("a planned transition is already in the history")
                seqs.append(seq)
        # Executed in order, so later facts win as they would one by one.
        await conn.executemany(_RECORD_FACTS, [_facts_args(self._items[index][1]) for index in fresh])
        if planned:
            last = {p.invoice_id: p for p in planned}
            await conn.executemany(
                _SET_STATUS,
                [
                    (
                        invoice_id,
                        p.change.status.value,
                        p.change.reason.code if p.change.reason else None,
                        p.change.reason.text if p.change.reason else None,
                        now,
                    )
                    for invoice_id, p in last.items()
                ],
            )
            await conn.executemany(
                _INSERT_OUTBOX,
                [
                    (
                        seq,
                        p.facts.invoice_id,
                        status_event(
                            seq, p.facts.invoice_id, p.change, p.previous, p.summary, p.trace_id
                        ).SerializeToString(),
                        json.dumps(p.facts.headers),
                    )
                    for seq, p in zip(seqs, planned, strict=True)
                ],
            )
        if rejected:
            await conn.execute("DELETE FROM business_keys WHERE invoice_id = ANY($1::uuid[])", sorted(rejected))


@dataclass(frozen=True)
class Filter:
    seller_id: str = ""
    buyer_id: str = ""
    status_codes: tuple[int, ...] = ()
    received_from: datetime | None = None
    received_to: datetime | None = None


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


@dataclass(frozen=True)
class Cursor:
    """Position in the ListInvoices order (received_at DESC, invoice_id DESC)."""

    received_at: datetime
    invoice_id: str


def _filter_sql(f: Filter, args: list[Any], status_column: str) -> str:
    clauses = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

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
    return " AND ".join(clauses) if clauses else "true"


class StatusQueries:
    """Read side: list, watch, positions."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def list_invoices(self, f: Filter, limit: int, after: Cursor | None) -> list[ListItem]:
        args: list[Any] = []
        where = _filter_sql(f, args, "i.status_code")
        if after is not None:
            args += [after.received_at, after.invoice_id]
            where += f" AND (i.received_at, i.invoice_id) < (${len(args) - 1}, ${len(args)}::uuid)"
        args.append(limit)
        rows = await self._database.pool.fetch(
            "SELECT i.invoice_id, i.status_code, i.received_at, i.updated_at, i.invoice_number, i.seller_ids,"
            " i.buyer_ids, i.filename, i.reason_code, i.reason_text FROM invoices i"
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
            )
            for r in rows
        ]

    async def head_position(self) -> int:
        value = await self._database.pool.fetchval("SELECT COALESCE(max(seq), 0) FROM status_history")
        return int(value)

    async def events_after(self, f: Filter, position: int, limit: int) -> list[tuple[int, bytes]]:
        """(position, StatusEvent bytes) of history rows after ``position``."""
        args: list[Any] = [position]
        where = _filter_sql(f, args, "h.status_code")
        args.append(limit)
        rows = await self._database.pool.fetch(
            "SELECT h.seq, o.payload FROM status_history h JOIN outbox o ON o.seq = h.seq"
            " JOIN invoices i ON i.invoice_id = h.invoice_id"
            f" WHERE h.seq > $1 AND {where} ORDER BY h.seq LIMIT ${len(args)}",
            *args,
        )
        return [(int(r["seq"]), bytes(r["payload"])) for r in rows]

    async def current(self, invoice_id: str) -> tuple[Status, int] | None:
        row = await self._database.pool.fetchrow(
            "SELECT i.status_code, (SELECT max(seq) FROM status_history h WHERE h.invoice_id = i.invoice_id) AS seq"
            " FROM invoices i WHERE i.invoice_id = $1",
            invoice_id,
        )
        return None if row is None else (Status(row["status_code"]), int(row["seq"] or 0))
