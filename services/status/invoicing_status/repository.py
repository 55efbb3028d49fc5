"""Status store in PostgreSQL (schema ``status``): the write side."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
from invoicing.v1 import common_pb2

from invoicing_common.db import Database
from invoicing_status.batch import BatchApply, NeedsSequential
from invoicing_status.domain import Change, Payment
from invoicing_status.holds import Hold
from invoicing_status.lifecycle import FINAL, RELEASES_BUSINESS_KEY, Status
from invoicing_status.records import (
    HISTORY_LOCK,
    INSERT_OUTBOX,
    INSERT_RECEIVED_MESSAGE,
    OUTBOX_CHANNEL,
    RECORD_FACTS,
    SET_STATUS,
    HistoryRow,
    InvoiceFacts,
    InvoiceView,
    Planner,
    ReceivedMessage,
    facts_args,
    status_event,
)

log = logging.getLogger(__name__)


class StatusRepository:
    def __init__(self, database: Database, on_commit: Callable[[], None] | None = None) -> None:
        """``on_commit``: called once a batch that wrote outbox rows has
        committed (this process's outbox relay's wake)."""
        self._database = database
        self._on_commit = on_commit

    async def apply(
        self, event_id: str, facts: InvoiceFacts, planner: Planner, received: ReceivedMessage | None = None
    ) -> list[Change]:
        """Apply one consumed event or request exactly once; returns the
        changes made ([] when ``event_id`` was already applied).
        ``received``: the other platform's message that asks for them, kept
        with them."""
        async with self._database.pool.acquire() as conn, conn.transaction():
            changes = await self._apply_in(conn, event_id, facts, planner)
            if changes:
                if received is not None:
                    await conn.execute(
                        INSERT_RECEIVED_MESSAGE, received.platform, received.message_id, facts.invoice_id,
                        received.status_code, received.body,
                    )  # fmt: skip
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            return changes

    async def apply_many(
        self, items: Sequence[tuple[str, InvoiceFacts, Planner]], releases: Sequence[tuple[str, int]] = ()
    ) -> list[list[Change]]:
        """Apply several events in one transaction, in order, with the effect
        of applying them one by one: all or nothing, one commit per batch.

        The statements are set-based (six or seven round trips per batch,
        BEGIN and COMMIT included, whatever its size, against seven or more
        per event one by one). The few orderings the set-based form cannot
        reproduce exactly (a business key released and claimed again inside
        the batch, an unexpected history conflict) roll it back and apply
        the batch one event at a time instead.

        ``releases``: (invoice id, rank of the event's topic) for each event,
        ending the holds the events move past (holds.py), in the same
        transaction.
        """
        try:
            async with self._database.pool.acquire() as conn, conn.transaction():
                # Ends the holds too, and notifies the outbox's listeners
                # itself when it writes rows.
                results = await BatchApply(conn, items, releases, wakes_relay=self._on_commit is not None).run()
            if self._on_commit is not None and any(results):
                self._on_commit()
            return results
        except NeedsSequential as why:
            log.info("status batch of %d event(s) applied one by one: %s", len(items), why)
        async with self._database.pool.acquire() as conn, conn.transaction():
            results = [await self._apply_in(conn, event_id, facts, planner) for event_id, facts, planner in items]
            await self._release(conn, releases)
            if any(results):
                await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
            return results

    async def _release(self, conn: asyncpg.Connection, releases: Sequence[tuple[str, int]]) -> None:
        if releases:
            await conn.execute(
                "DELETE FROM holds h USING unnest($1::uuid[], $2::int[]) AS r (invoice_id, rank)"
                " WHERE h.invoice_id = r.invoice_id AND h.clears_from_rank <= r.rank",
                [i for i, _ in releases],
                [r for _, r in releases],
            )

    async def hold_many(self, holds: Sequence[Hold]) -> list[Hold]:
        """Record the holds of dead letters; a letter the invoice has moved
        past (an event that would end its hold is applied) holds nothing.
        Returns the holds recorded."""
        if not holds:
            return []
        async with self._database.pool.acquire() as conn, conn.transaction():
            done = {
                r["event_id"]
                for r in await conn.fetch(
                    "SELECT event_id FROM processed_events WHERE event_id = ANY($1::text[])",
                    [e for h in holds for e in h.clearing_event_ids()],
                )
            }
            live = [h for h in holds if not done.intersection(h.clearing_event_ids())]
            if live:
                await conn.execute(
                    "INSERT INTO holds (invoice_id, stage, dead_letter, source_topic, error_type, clears_from_rank,"
                    " held_at) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],"
                    " $6::smallint[], $7::timestamptz[])"
                    " ON CONFLICT (invoice_id) DO UPDATE SET stage = EXCLUDED.stage,"
                    " dead_letter = EXCLUDED.dead_letter,"
                    " source_topic = EXCLUDED.source_topic, error_type = EXCLUDED.error_type,"
                    " clears_from_rank = EXCLUDED.clears_from_rank, held_at = EXCLUDED.held_at"
                    " WHERE holds.held_at <= EXCLUDED.held_at",
                    [h.invoice_id for h in live],
                    [h.stage for h in live],
                    [h.dead_letter for h in live],
                    [h.source_topic for h in live],
                    [h.error_type for h in live],
                    [h.clears_from_rank for h in live],
                    [h.held_at for h in live],
                )
            return live

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
            await conn.execute("SELECT pg_advisory_xact_lock($1)", HISTORY_LOCK)
        for change in changes:
            await self._append(conn, facts, change, previous, summary, trace_id, now)
            previous = change.status
            if change.status in RELEASES_BUSINESS_KEY:
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
        await conn.execute(RECORD_FACTS, *facts_args(facts))

    async def _append(
        self, conn: asyncpg.Connection, facts: InvoiceFacts, change: Change, previous: Status | None,
        summary: common_pb2.InvoiceSummary | None, trace_id: str, now: datetime,
    ) -> None:  # fmt: skip
        reason_code = change.reason.code if change.reason else None
        reason_text = change.reason.text if change.reason else None
        seq = await conn.fetchval(
            "INSERT INTO status_history (invoice_id, status_code, previous_code, reason_code, reason_text, actor,"
            " occurred_at, source_event_id, trace_id, payment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)"
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
            json.dumps(change.payment.as_json()) if change.payment is not None else None,
        )
        if seq is None:
            return  # this exact transition is already recorded
        await conn.execute(SET_STATUS, facts.invoice_id, change.status.value, reason_code, reason_text, now)
        event = status_event(seq, facts.invoice_id, change, previous, summary, trace_id)
        await conn.execute(INSERT_OUTBOX, seq, facts.invoice_id, event.SerializeToString(), json.dumps(facts.headers))

    async def get_invoice(self, invoice_id: str) -> InvoiceView | None:
        async with self._database.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM invoices WHERE invoice_id = $1", invoice_id)
            if row is None:
                return None
            history = await conn.fetch("SELECT * FROM status_history WHERE invoice_id = $1 ORDER BY seq", invoice_id)
            hold = await conn.fetchrow("SELECT * FROM holds WHERE invoice_id = $1", invoice_id)
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
            files=json.loads(row["validated_files"] or row["received_files"] or "null"),
            hold=None
            if hold is None
            else Hold(
                invoice_id=str(hold["invoice_id"]),
                stage=hold["stage"],
                dead_letter=hold["dead_letter"],
                source_topic=hold["source_topic"],
                error_type=hold["error_type"],
                clears_from_rank=hold["clears_from_rank"],
                held_at=hold["held_at"],
            ),
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
                    payment=Payment.from_json(json.loads(h["payment"])) if h["payment"] else None,
                )
                for h in history
            ],
        )
