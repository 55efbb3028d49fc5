"""Reconciles the status history with the public status stream.

For each invoice: the history rows in PostgreSQL and the StatusEvent records
on invoicing.invoice.status.v1 must be the same transitions, each exactly
once, in the same order, each allowed by the lifecycle table, starting at 200
and reaching a pipeline outcome (201, 203, 213 or 501).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

import asyncpg  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError
from invoicing.v1 import events_pb2

from invoicing_common import topics
from invoicing_common.kafka import assign_all, read_to_end
from invoicing_common.settings import KafkaClientSettings
from invoicing_status.lifecycle import PIPELINE_OUTCOMES, Status, is_allowed

_OUTCOME_CODES = frozenset(s.value for s in PIPELINE_OUTCOMES)


@dataclass
class Reconciliation:
    invoices: int = 0
    history_rows: int = 0
    status_events: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "invoices": self.invoices,
            "history_rows": self.history_rows,
            "status_events": self.status_events,
            "problems": self.problems,
        }


async def _history(database_url: str, invoice_ids: list[str]) -> dict[str, list[tuple[int, int]]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT invoice_id::text AS invoice_id, seq, status_code FROM status.status_history"
            " WHERE invoice_id = ANY($1::uuid[]) ORDER BY seq",
            invoice_ids,
        )
    finally:
        await conn.close()
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        out[r["invoice_id"]].append((int(r["seq"]), int(r["status_code"])))
    return out


async def _events(kafka: KafkaClientSettings, wanted: set[str]) -> dict[str, list[tuple[int, int]]]:
    """(sequence, status) per invoice, read from every partition up to its
    end offset at call time."""
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    try:
        tps = await assign_all(consumer, topics.STATUS)
        async for batch in read_to_end(consumer, tps, max_records=5000):
            for records in batch.values():
                for record in records:
                    if record.key is None or record.key.decode(errors="replace") not in wanted:
                        continue
                    try:
                        event = events_pb2.StatusEvent.FromString(record.value)
                    except DecodeError:
                        continue
                    out[event.invoice_id].append((event.sequence, event.status_code))
    finally:
        await consumer.stop()
    return out


async def reconcile(database_url: str, kafka: KafkaClientSettings, invoice_ids: list[str]) -> Reconciliation:
    history = await _history(database_url, invoice_ids)
    events = await _events(kafka, set(invoice_ids))
    result = Reconciliation(invoices=len(invoice_ids))
    for invoice_id in invoice_ids:
        rows, published = history.get(invoice_id, []), events.get(invoice_id, [])
        result.history_rows += len(rows)
        result.status_events += len(published)
        problems: list[str] = []
        codes = [code for _, code in rows]
        if not rows:
            problems.append("no history")
        elif codes[0] != 200:
            problems.append(f"history starts at {codes[0]}, not 200")
        if len(set(codes)) != len(codes):
            problems.append(f"history repeats a status: {codes}")
        for before, after in pairwise(codes):
            if not is_allowed(Status(before), Status(after)):
                problems.append(f"history has an illegal step {before} -> {after}")
        if codes and not _OUTCOME_CODES & set(codes):
            problems.append(f"no pipeline outcome ({'/'.join(map(str, sorted(_OUTCOME_CODES)))}) yet: {codes}")
        if published != rows:
            problems.append(f"status events {published} differ from history {rows}")
        if problems:
            result.problems[invoice_id] = problems
    return result
