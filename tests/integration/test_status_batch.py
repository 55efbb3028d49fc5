"""The status store applies a batch of events set-based (apply_many) with
exactly the effect of applying them one by one (apply): same changes, same
rows, same status events. Each path writes into its own fresh schema of the
stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from invoicing.v1 import common_pb2

from invoicing_common.db import Database
from invoicing_status.domain import Change, Outcome, Submitted, plan
from invoicing_status.lifecycle import Reason, Status
from invoicing_status.records import RECORD_FACTS, InvoiceFacts, Planner, fold_facts
from invoicing_status.repository import StatusRepository
from tests.support import Stack, scratch_database

pytestmark = pytest.mark.stack

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
Item = tuple[str, InvoiceFacts, Planner]


class Invoice:
    """Builds the events the pipeline would emit for one invoice."""

    def __init__(self, name: str, key: str | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.name = name
        self.key = key
        self.submitted = Submitted(received_event_id=f"{name}-received", received_at=T0)
        self.summary = common_pb2.InvoiceSummary(
            invoice_number=f"F-{name}", seller_name=f"seller {name}", due_date="2026-12-31",
            seller_ids=[common_pb2.PartyIdentifier(value="842109373", scheme="0002")],
            buyer_ids=[common_pb2.PartyIdentifier(value="73282932000074", scheme="0009")],
        )  # fmt: skip

    def _item(self, stage: str, status: Status | None, actor: str, **facts: Any) -> Item:
        event_id = f"{self.name}-{stage}" if stage != "received" else self.submitted.received_event_id
        outcome = Outcome(status, actor, T0 + timedelta(seconds=len(stage)), event_id, facts.pop("reason", None))
        # Each stage names its own trace and receipt time: the first to
        # reach the invoice's row must keep them, as one by one.
        f = InvoiceFacts(
            invoice_id=self.id, filename=f"{self.name}.xml", submitter="erp",
            received_at=T0 + timedelta(seconds=len(stage)), trace_id=f"trace-{self.name}-{stage}",
            headers={"traceparent": f"tp-{self.name}-{stage}"}, **facts,
        )  # fmt: skip
        submitted = self.submitted

        def planner(current: Status | None, duplicate_of: str | None) -> list[Change]:
            return plan(current, submitted, outcome, duplicate_of)

        return event_id, f, planner

    def received(self) -> Item:
        return self._item(
            "received", None, "ingest", received_files=f'{{"original": "{self.name}"}}', origin_platform="peer"
        )

    def validated(self, valid: bool = True) -> Item:
        findings = [] if valid else [{"rule": "BR-01", "severity": "fatal", "location": "/", "message": "x"}]
        if valid:
            return self._item(
                "validated", None, "validate", summary=self.summary, findings=findings, business_key=self.key,
                parties_checked=True, validated_files=f'{{"validated": "{self.name}"}}',
            )  # fmt: skip
        return self._item(
            "validated", Status.REJECTED, "validate", summary=self.summary, findings=findings,
            reason=Reason("REJ_SEMAN", "BR-01"),
        )  # fmt: skip

    def routed(self, ok: bool = True) -> Item:
        routing = {"outcome": "ROUTED" if ok else "REJECTED"}
        if ok:
            return self._item(
                "routed", Status.MADE_AVAILABLE, "route", summary=self.summary, routing=routing, business_key=self.key,
                parties_checked=True, destination_platform="local",
            )  # fmt: skip
        return self._item(
            "routed", Status.REJECTED, "route", summary=self.summary, routing=routing,
            reason=Reason("REJ_ADR", "unknown buyer"),
        )  # fmt: skip


@pytest.fixture
async def stores(stack: Stack) -> AsyncIterator[tuple[StatusRepository, StatusRepository, Database, Database]]:
    async with (
        scratch_database(stack.database_url, "status_eq_batch", "invoicing_status") as batch,
        scratch_database(stack.database_url, "status_eq_single", "invoicing_status") as single,
    ):
        yield StatusRepository(batch), StatusRepository(single), batch, single


async def _dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    async with db.pool.acquire() as conn:
        return {
            "invoices": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT invoice_id, status_code, reason_code, reason_text, filename, submitter, received_at,"
                    " trace_id, summary, findings, routing, invoice_number, seller_ids, buyer_ids,"
                    " seller_sirens, buyer_sirens, due_date, received_files, validated_files, origin_platform,"
                    " destination_platform FROM invoices ORDER BY invoice_id"
                )
            ],
            "history": [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT seq, invoice_id, status_code, previous_code, reason_code, reason_text, actor,"
                    " occurred_at, source_event_id, trace_id FROM status_history ORDER BY seq"
                )
            ],
            "outbox": [
                tuple(r) for r in await conn.fetch("SELECT seq, invoice_id, payload, headers FROM outbox ORDER BY seq")
            ],
            "keys": [tuple(r) for r in await conn.fetch("SELECT * FROM business_keys ORDER BY business_key")],
            "processed": [tuple(r) for r in await conn.fetch("SELECT event_id FROM processed_events ORDER BY 1")],
        }


async def _compare(
    stores: tuple[StatusRepository, StatusRepository, Database, Database], batches: list[list[Item]]
) -> dict[str, list[tuple[Any, ...]]]:
    batch_repo, single_repo, batch_db, single_db = stores
    for batch in batches:
        got = await batch_repo.apply_many(batch)
        expected = [await single_repo.apply(event_id, facts, planner) for event_id, facts, planner in batch]
        assert got == expected
    batch_rows, single_rows = await _dump(batch_db), await _dump(single_db)
    assert batch_rows == single_rows
    return batch_rows


async def test_a_mixed_batch_has_the_effect_of_one_by_one(stores: Any, caplog: pytest.LogCaptureFixture) -> None:
    a, b, c, d, e = Invoice("a", "k-a"), Invoice("b", "k-b"), Invoice("c", "k-cd"), Invoice("d", "k-cd"), Invoice("e")
    old = Invoice("old", "k-old")
    n, p = Invoice("n"), Invoice("p")
    batches = [
        # No business key to claim: the first round trip takes the history lock.
        [n.received(), n.validated(valid=False), p.received()],
        # A duplicate (same business key) of an invoice from an earlier batch.
        [old.received(), old.validated()],
        [
            a.received(), a.validated(), a.routed(),
            b.validated(), b.received(), b.routed(),          # stage event before the received one
            c.received(), c.validated(), d.received(), d.validated(), c.routed(), d.routed(),
            e.received(), e.validated(valid=False),
            a.validated(),                                     # the same event twice in a batch
            Invoice("again", "k-old").validated(),             # REJ_UNI against the earlier batch
        ],
        # Redelivered events change nothing.
        [a.routed(), e.validated(valid=False), old.routed()],
    ]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="invoicing_status.repository"):
        rows = await _compare(stores, batches)
    assert "one by one" not in caplog.text  # the set-based path did it all
    statuses = {r[0]: r[1] for r in rows["invoices"]}
    assert statuses[uuid.UUID(a.id)] == Status.MADE_AVAILABLE.value
    assert statuses[uuid.UUID(d.id)] == Status.REJECTED.value  # REJ_UNI: c holds the key
    assert statuses[uuid.UUID(e.id)] == Status.REJECTED.value
    assert statuses[uuid.UUID(old.id)] == Status.MADE_AVAILABLE.value
    assert len(rows["outbox"]) == len(rows["history"]) > 0


async def test_a_key_released_and_claimed_again_in_one_batch(stores: Any, caplog: pytest.LogCaptureFixture) -> None:
    # f is rejected by routing (its key is released), then g, same key, comes
    # in the same batch: g must be accepted, as it would be one by one.
    f, g = Invoice("f", "k-fg"), Invoice("g", "k-fg")
    with caplog.at_level(logging.INFO, logger="invoicing_status.repository"):
        rows = await _compare(stores, [[f.received(), f.validated(), f.routed(ok=False), g.validated(), g.routed()]])
    assert "released and claimed again" in caplog.text
    statuses = {r[0]: r[1] for r in rows["invoices"]}
    assert statuses[uuid.UUID(f.id)] == Status.REJECTED.value
    assert statuses[uuid.UUID(g.id)] == Status.MADE_AVAILABLE.value
    assert rows["keys"] == [("k-fg", uuid.UUID(g.id))]


async def test_a_routing_refusal_read_before_its_validated_event(stores: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Topics are read independently, so route's refusal can come first in a
    # batch: the validated event's key then belongs to an invoice already
    # final, which one by one claims nothing. h's key is claimed and released
    # in the same batch; y's is held by x from an earlier batch.
    h, x, y = Invoice("h", "k-h"), Invoice("x", "k-xy"), Invoice("y", "k-xy")
    batches = [
        [h.received(), h.routed(ok=False), h.validated()],
        [x.received(), x.validated(), x.routed()],
        [y.received(), y.routed(ok=False), y.validated()],
    ]
    with caplog.at_level(logging.INFO, logger="invoicing_status.repository"):
        rows = await _compare(stores, batches)
    assert "one by one" not in caplog.text  # the set-based path did it all
    statuses = {r[0]: r[1] for r in rows["invoices"]}
    assert statuses[uuid.UUID(h.id)] == Status.REJECTED.value
    assert statuses[uuid.UUID(y.id)] == Status.REJECTED.value
    assert statuses[uuid.UUID(x.id)] == Status.MADE_AVAILABLE.value
    assert rows["keys"] == [("k-xy", uuid.UUID(x.id))]


async def _blocks_someone(conn: Any, pid: int) -> bool:
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))", pid)
    )


async def test_a_row_another_transaction_commits_while_the_batch_reads(
    stores: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Another writer inserts the invoice's row and commits while the batch's
    # first statement waits on it: that statement's snapshot cannot show the
    # row, and the batch must still lock and use it, as one by one would.
    batch_repo, single_repo, batch_db, single_db = stores
    h = Invoice("h", "k-h")
    events = [h.received(), h.validated()]
    insert = "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, $2, now())"
    async with single_db.pool.acquire() as conn:
        await conn.execute(insert, uuid.UUID(h.id), Status.SUBMITTED.value)
    expected = [await single_repo.apply(event_id, facts, planner) for event_id, facts, planner in events]

    with caplog.at_level(logging.INFO, logger="invoicing_status.repository"):
        async with batch_db.pool.acquire() as writer, batch_db.pool.acquire() as watcher:
            other = writer.transaction()
            await other.start()
            await writer.execute(insert, uuid.UUID(h.id), Status.SUBMITTED.value)
            applying = asyncio.create_task(batch_repo.apply_many(events))
            async with asyncio.timeout(10):
                while not await _blocks_someone(watcher, writer.get_server_pid()):
                    await asyncio.sleep(0.01)
            await other.commit()
            got = await applying
    assert "one by one" not in caplog.text
    assert got == expected
    assert await _dump(batch_db) == await _dump(single_db)


def _random_facts(rng: random.Random, invoice_id: uuid.UUID) -> tuple[Any, ...]:
    """facts_args's shape, each value absent or one of two (for the id
    lists and SIRENs, an empty list too)."""
    t1, t2 = T0, T0 + timedelta(hours=1)
    choices: tuple[tuple[Any, ...], ...] = (
        ("", "a.xml", "b.xml"),  # filename
        ("", "erp-a", "erp-b"),  # submitter
        (None, t1, t2),  # received_at
        ("", "trace-1", "trace-2"),  # trace_id
        (None, b"", b"\x0a\x01x"),  # summary
        (None, "[]", '[{"rule": "BR-01"}]'),  # findings
        (None, '{"outcome": "ROUTED"}', '{"outcome": "REJECTED"}'),  # routing
        ("", "F-1", "F-2"),  # invoice_number
        ([], ["842109373"], ["73282932000074", "732829320"]),  # seller_ids
        ([], ["1"], ["2", "3"]),  # buyer_ids
        (None, [], ["842109373"]),  # seller_sirens
        (None, [], ["732829320"]),  # buyer_sirens
        (None, T0.date(), t2.date() + timedelta(days=30)),  # due_date
        (None, '{"document": 1}', '{"document": 2}'),  # received_files
        (None, '{"validated": 1}', '{"validated": 2}'),  # validated_files
        ("", "peer-a", "peer-b"),  # origin_platform
        ("", "local", "peer-c"),  # destination_platform
    )
    return (invoice_id, *(rng.choice(values) for values in choices))


async def test_folded_facts_have_the_effect_of_each_event_in_turn(stores: Any) -> None:
    # The batch writes an invoice's row once, with its events' facts folded:
    # on the database itself, that must leave what RECORD_FACTS once per
    # event leaves, from an empty row or one that has facts already.
    _, _, db, _ = stores
    rng = random.Random(18)
    columns = (
        "filename, submitter, received_at, trace_id, summary, findings, routing, invoice_number, seller_ids,"
        " buyer_ids, seller_sirens, buyer_sirens, due_date, received_files, validated_files, origin_platform,"
        " destination_platform"
    )
    async with db.pool.acquire() as conn:
        for _ in range(300):
            each, folded = uuid.uuid4(), uuid.uuid4()
            for invoice_id in (each, folded):
                await conn.execute(
                    "INSERT INTO invoices (invoice_id, status_code, updated_at) VALUES ($1, $2, now())",
                    invoice_id,
                    Status.SUBMITTED.value,
                )
            events = [_random_facts(rng, each) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.5:  # facts from an earlier batch
                earlier = _random_facts(rng, each)
                await conn.execute(RECORD_FACTS, *earlier)
                await conn.execute(RECORD_FACTS, folded, *earlier[1:])
            for args in events:
                await conn.execute(RECORD_FACTS, *args)
            await conn.execute(RECORD_FACTS, folded, *fold_facts(events)[1:])
            query = f"SELECT {columns} FROM invoices WHERE invoice_id = $1"
            one_by_one, at_once = await conn.fetchrow(query, each), await conn.fetchrow(query, folded)
            assert dict(at_once) == dict(one_by_one), events
