"""Applying a batch of pipeline events with set-based statements."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
from invoicing.v1 import common_pb2

from invoicing_common.kafka.outbox import WOKEN_IN_PROCESS
from invoicing_status.domain import Change
from invoicing_status.lifecycle import FINAL, RELEASES_BUSINESS_KEY, Status
from invoicing_status.records import (
    HISTORY_LOCK,
    INSERT_OUTBOX_ROWS,
    OUTBOX_CHANNEL,
    RECORD_FACTS,
    InvoiceFacts,
    Planner,
    facts_args,
    status_event,
)


class NeedsSequential(Exception):
    """This batch must be applied one event at a time (see StatusRepository.apply_many)."""


@dataclass
class _Current:
    """An invoice's state as the batch goes, as the one-by-one path would read it."""

    status: Status | None
    # The stored summary is decoded only if an event without one needs it.
    summary: common_pb2.InvoiceSummary | bytes | None
    trace_id: str

    def decoded_summary(self) -> common_pb2.InvoiceSummary | None:
        if isinstance(self.summary, bytes):
            self.summary = common_pb2.InvoiceSummary.FromString(self.summary)
        return self.summary


@dataclass(frozen=True)
class _Planned:
    invoice_id: str  # canonical form, as the database returns it
    facts: InvoiceFacts
    change: Change
    previous: Status | None
    summary: common_pb2.InvoiceSummary | None
    trace_id: str


class BatchApply:
    """One batch of events, applied with set-based statements.

    Reads what the batch needs at once (processed events, invoice rows under
    lock, business key holders), plans every event in Python in order with
    an in-memory view of each invoice, then writes history with statuses,
    facts (one pipelined executemany) and outbox rows: a statement each.
    """

    def __init__(
        self,
        conn: asyncpg.Connection,
        items: Sequence[tuple[str, InvoiceFacts, Planner]],
        releases: Sequence[tuple[str, int]] = (),
        *,
        wakes_relay: bool = False,
    ) -> None:
        """``releases``: as for ``StatusRepository.apply_many``.
        ``wakes_relay``: the caller wakes this process's outbox relay once
        the batch commits (``outbox.insert``'s argument of that name)."""
        self._conn = conn
        self._items = items
        self._releases = releases
        self._notice = WOKEN_IN_PROCESS if wakes_relay else ""

    async def run(self) -> list[list[Change]]:
        conn, items = self._conn, self._items
        results: list[list[Change]] = [[] for _ in items]
        # The holds the batch's events move past end in the same round trip
        # (no hold is made inside a batch, so first or last is the same).
        fresh_ids = {
            r["event_id"]
            for r in await conn.fetch(
                "WITH released AS (DELETE FROM holds h USING unnest($2::uuid[], $3::int[]) AS r (invoice_id, rank)"
                " WHERE h.invoice_id = r.invoice_id AND h.clears_from_rank <= r.rank)"
                " INSERT INTO processed_events (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
                " RETURNING event_id",
                [event_id for event_id, _, _ in items],
                [invoice_id for invoice_id, _ in self._releases],
                [rank for _, rank in self._releases],
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
            raise NeedsSequential("an invoice id is not a UUID") from None
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
        releasing: set[str] = set()
        released: set[str] = set()
        for index in fresh:
            _, facts, planner = items[index]
            invoice_id = ids[index]
            current = state[invoice_id]
            duplicate_of = None
            key = facts.business_key
            if key is not None and current.status not in FINAL:
                if key in released:
                    raise NeedsSequential(f"business key {key!r} released and claimed again")
                holder = holders[key]
                duplicate_of = None if holder == invoice_id else holder
            elif key is not None and claimant.get(key) == index:
                raise NeedsSequential(f"business key {key!r} claimed for a final invoice")
            changes = planner(current.status, duplicate_of)
            summary = facts.summary if facts.summary is not None else current.decoded_summary()
            trace_id = facts.trace_id or current.trace_id
            previous = current.status
            for change in changes:
                planned.append(_Planned(invoice_id, facts, change, previous, summary, trace_id))
                previous = change.status
                if change.status in RELEASES_BUSINESS_KEY:
                    releasing.add(invoice_id)
                    released.update(k for k, h in holders.items() if h == invoice_id)
            current.status = previous
            if facts.summary is not None:
                current.summary = facts.summary
            if not current.trace_id:
                current.trace_id = facts.trace_id
            results[index] = changes
        await self._write(fresh, ids, planned, releasing)
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

    async def _write(self, fresh: list[int], ids: dict[int, str], planned: list[_Planned], releasing: set[str]) -> None:
        conn = self._conn
        now = datetime.now(UTC)
        seqs: list[int] = []
        if planned:
            # The outbox's notification (delivered at commit) rides on the
            # lock's round trip: this batch writes outbox rows.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1), pg_notify($2, $3)", HISTORY_LOCK, OUTBOX_CHANNEL, self._notice
            )
            # Each invoice's row takes its last status in the same statement.
            last = {p.invoice_id: p for p in planned}
            rows = await conn.fetch(
                "WITH statuses AS (UPDATE invoices SET status_code = u.s, reason_code = u.rc, reason_text = u.rt,"
                " updated_at = $11 FROM unnest($12::uuid[], $13::smallint[], $14::text[], $15::text[])"
                " AS u (i, s, rc, rt) WHERE invoices.invoice_id = u.i)"
                " INSERT INTO status_history (invoice_id, status_code, previous_code, reason_code, reason_text,"
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
                now,
                list(last),
                [p.change.status.value for p in last.values()],
                [p.change.reason.code if p.change.reason else None for p in last.values()],
                [p.change.reason.text if p.change.reason else None for p in last.values()],
            )
            by_key = {(str(r["invoice_id"]), r["status_code"], r["source_event_id"]): r["seq"] for r in rows}
            for p in planned:
                seq = by_key.get((p.invoice_id, p.change.status.value, p.change.source_event_id))
                if seq is None or (seqs and seq <= seqs[-1]):
                    # A transition already recorded: the one-by-one path
                    # skips it and plans what follows from there.
                    raise NeedsSequential("a planned transition is already in the history")
                seqs.append(seq)
        # Executed in order, so later facts win as they would one by one.
        await conn.executemany(RECORD_FACTS, [facts_args(self._items[index][1]) for index in fresh])
        if planned:
            await conn.execute(
                INSERT_OUTBOX_ROWS,
                seqs,
                [p.facts.invoice_id for p in planned],
                [
                    status_event(
                        seq, p.facts.invoice_id, p.change, p.previous, p.summary, p.trace_id
                    ).SerializeToString()
                    for seq, p in zip(seqs, planned, strict=True)
                ],
                [json.dumps(p.facts.headers) for p in planned],
            )
        if releasing:
            await conn.execute("DELETE FROM business_keys WHERE invoice_id = ANY($1::uuid[])", sorted(releasing))
