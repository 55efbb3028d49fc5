"""Applying a batch of pipeline events with set-based statements."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from invoicing.v1 import common_pb2

from invoicing_common.kafka.outbox import WOKEN_IN_PROCESS
from invoicing_status.domain import Change
from invoicing_status.lifecycle import FINAL, RELEASES_BUSINESS_KEY, Status
from invoicing_status.records import (
    HISTORY_LOCK,
    INSERT_OUTBOX_ROWS,
    OUTBOX_CHANNEL,
    RECORD_FACTS_AND_STATUS,
    InvoiceFacts,
    Planner,
    facts_args,
    fold_facts,
    status_event,
)

# The batch's first round trip: end the holds its events move past (no hold
# is made inside a batch, so first or last is the same), record its event
# ids, give each fresh event's invoice a row (the one-by-one path creates
# one for any unknown invoice too) and lock the rows that existed. Rows
# (kind, event_id, invoice_id, status_code, summary, trace_id): "e" a fresh
# event, "c" a row created now, "l" a row that existed, locked. Each count
# makes one step wait for the one before (a statement's steps otherwise run
# in no set order), so locks are taken in the order of the one-by-one path:
# the rows created, then the others in invoice order.
_READ_STEPS = (
    "WITH released AS (DELETE FROM holds h USING unnest($3::uuid[], $4::int[]) AS r (invoice_id, rank)"
    " WHERE h.invoice_id = r.invoice_id AND h.clears_from_rank <= r.rank),"
    " fresh AS (INSERT INTO processed_events (event_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
    " RETURNING event_id),"
    " touched AS (SELECT DISTINCT e.invoice_id FROM unnest($1::text[], $2::uuid[]) AS e (event_id, invoice_id)"
    " JOIN fresh USING (event_id)),"
    " created AS (INSERT INTO invoices (invoice_id, status_code, updated_at)"
    " SELECT invoice_id, $5::smallint, now() FROM touched ORDER BY invoice_id ON CONFLICT DO NOTHING"
    " RETURNING invoice_id),"
    " locked AS (SELECT i.invoice_id, i.status_code, i.summary, i.trace_id FROM invoices i"
    " WHERE i.invoice_id IN (SELECT invoice_id FROM touched) AND (SELECT count(*) FROM created) >= 0"
    " ORDER BY i.invoice_id FOR UPDATE OF i)"
)
_READ_ROWS = (
    " SELECT 'e' AS kind, event_id, NULL::uuid AS invoice_id, NULL::smallint AS status_code,"
    " NULL::bytea AS summary, NULL::text AS trace_id FROM fresh"
    " UNION ALL SELECT 'c', NULL, invoice_id, NULL, NULL, NULL FROM created"
    " UNION ALL SELECT 'l', NULL, invoice_id, status_code, summary, trace_id FROM locked"
)
_READ_SQL = _READ_STEPS + _READ_ROWS
# The same, taking the history lock last (after the rows'), when no event
# of the batch has a business key to claim first. The outbox's notification
# (delivered at commit) rides on it.
_READ_AND_LOCK_SQL = (
    _READ_STEPS
    + ", history_lock AS (SELECT pg_advisory_xact_lock($6), pg_notify($7, $8) FROM (SELECT count(*) FROM locked) AS n)"
    + _READ_ROWS
    + " UNION ALL SELECT 'h', NULL, NULL, NULL, NULL, NULL FROM history_lock"
)
_LOCK_ROWS_SQL = (
    "SELECT invoice_id, status_code, summary, trace_id FROM invoices"
    " WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id FOR UPDATE"
)
# Claims business keys, then takes the history lock (the count waits for
# every claim), as the one-by-one path orders them.
_CLAIM_AND_LOCK_SQL = (
    "WITH claimed AS (INSERT INTO business_keys (business_key, invoice_id)"
    " SELECT k, i FROM unnest($1::text[], $2::uuid[]) AS t(k, i) ORDER BY k"
    " ON CONFLICT (business_key) DO UPDATE SET business_key = EXCLUDED.business_key"
    " RETURNING business_key, invoice_id),"
    " history_lock AS (SELECT pg_advisory_xact_lock($3), pg_notify($4, $5) FROM (SELECT count(*) FROM claimed) AS n)"
    " SELECT c.business_key, c.invoice_id FROM history_lock LEFT JOIN claimed AS c ON true"
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

    Reads what the batch needs in one round trip (processed events, invoice
    rows under lock), claims its business keys and takes the history lock in
    a second (in the first when it has no keys), plans every event in
    Python in order with an in-memory view of each invoice, then writes
    history, each invoice's row once with its facts and last status (one
    pipelined executemany) and outbox rows with the keys released: a round
    trip each. Four or five in all between BEGIN and COMMIT (eight or nine
    before they were merged), whatever the batch's size: each one is a
    wake-up of this process and of its PostgreSQL backend, which is what a
    batch's latency is made of at moderate load.
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
        # Whether this transaction holds the history lock yet (taken with the
        # first statement or with the claims, else before the history rows).
        self._locked = False

    async def run(self) -> list[list[Change]]:
        conn, items = self._conn, self._items
        results: list[list[Change]] = [[] for _ in items]
        try:
            item_ids = [str(uuid.UUID(facts.invoice_id)) for _, facts, _ in items]
        except ValueError:
            raise NeedsSequential("an invoice id is not a UUID") from None
        keyed = any(facts.business_key is not None for _, facts, _ in items)
        # Without keys to claim, the first round trip takes the history lock.
        self._locked = not keyed
        rows = await conn.fetch(
            _READ_SQL if keyed else _READ_AND_LOCK_SQL,
            [event_id for event_id, _, _ in items],
            item_ids,
            [invoice_id for invoice_id, _ in self._releases],
            [rank for _, rank in self._releases],
            Status.SUBMITTED.value,
            *(() if keyed else (HISTORY_LOCK, OUTBOX_CHANNEL, self._notice)),
        )
        fresh_ids = {r["event_id"] for r in rows if r["kind"] == "e"}
        created = {str(r["invoice_id"]) for r in rows if r["kind"] == "c"}
        found = {str(r["invoice_id"]): r for r in rows if r["kind"] == "l"}
        fresh: list[int] = []
        for index, (event_id, _, _) in enumerate(items):
            if event_id in fresh_ids:  # a repeated id counts once, first
                fresh_ids.discard(event_id)
                fresh.append(index)
        if not fresh:
            return results
        ids = {index: item_ids[index] for index in fresh}
        invoice_ids = sorted(set(ids.values()))
        missing = [i for i in invoice_ids if i not in created and i not in found]
        if missing:
            # Rows another transaction inserted and committed while the
            # statement ran: its snapshot did not show them. (Rare enough
            # that taking their locks after the history lock, when the first
            # statement took it, is acceptable: a deadlock with a writer
            # holding such a row is detected by PostgreSQL and retried as a
            # transient fault.)
            for r in await conn.fetch(_LOCK_ROWS_SQL, missing):
                found[str(r["invoice_id"])] = r
            if any(i not in created and i not in found for i in invoice_ids):
                raise NeedsSequential("an invoice row went missing under the batch")
        state: dict[str, _Current] = {}
        for invoice_id in invoice_ids:
            if invoice_id in created:
                state[invoice_id] = _Current(status=None, summary=None, trace_id="")
            else:
                r = found[invoice_id]
                state[invoice_id] = _Current(Status(r["status_code"]), r["summary"], r["trace_id"])
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
            elif key is not None and claimant.get(key) == index and holders[key] == invoice_id and key not in released:
                # Claimed for this event before planning, and the invoice
                # turned final earlier in the batch: one by one it would
                # claim nothing. That end holds when the claim found another
                # holder (nothing written) or when the final status that
                # came first releases this invoice's keys in this
                # transaction (a routing refusal read before the validated
                # event); not otherwise.
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
            _CLAIM_AND_LOCK_SQL,
            list(claimant),
            [ids[index] for index in claimant.values()],
            HISTORY_LOCK,
            OUTBOX_CHANNEL,
            self._notice,
        )
        self._locked = True
        return {r["business_key"]: str(r["invoice_id"]) for r in rows if r["business_key"] is not None}, claimant

    async def _write(self, fresh: list[int], ids: dict[int, str], planned: list[_Planned], releasing: set[str]) -> None:
        conn = self._conn
        now = datetime.now(UTC)
        seqs: list[int] = []
        if planned:
            if not self._locked:
                # The outbox's notification (delivered at commit) rides on
                # the lock's round trip: this batch writes outbox rows.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1), pg_notify($2, $3)", HISTORY_LOCK, OUTBOX_CHANNEL, self._notice
                )
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
                    raise NeedsSequential("a planned transition is already in the history")
                seqs.append(seq)
        # One new version of each invoice's row: its events' facts folded in
        # their order, and its last status. (A version per event and one
        # more for the status, before: most of them could not be HOT, the
        # facts touching indexed columns.)
        events: dict[str, list[tuple[Any, ...]]] = {}
        for index in fresh:
            events.setdefault(ids[index], []).append(facts_args(self._items[index][1]))
        last = {p.invoice_id: p.change for p in planned}
        await conn.executemany(
            RECORD_FACTS_AND_STATUS,
            [(*fold_facts(args), *_status_args(last.get(invoice_id), now)) for invoice_id, args in events.items()],
        )
        if planned:
            # The keys the batch's final statuses release go in the same
            # round trip (a step of their own, on another table).
            release = (
                "WITH released AS (DELETE FROM business_keys WHERE invoice_id = ANY($5::uuid[])) " if releasing else ""
            )
            await conn.execute(
                release + INSERT_OUTBOX_ROWS,
                seqs,
                [p.facts.invoice_id for p in planned],
                [
                    status_event(
                        seq, p.facts.invoice_id, p.change, p.previous, p.summary, p.trace_id
                    ).SerializeToString()
                    for seq, p in zip(seqs, planned, strict=True)
                ],
                [json.dumps(p.facts.headers) for p in planned],
                *([sorted(releasing)] if releasing else []),
            )


def _status_args(change: Change | None, now: datetime) -> tuple[Any, ...]:
    """RECORD_FACTS_AND_STATUS's last four values: the batch's last change
    of the invoice, or none."""
    if change is None:
        return None, None, None, now
    reason = change.reason
    return change.status.value, reason.code if reason else None, reason.text if reason else None, now
