"""scripts/pg_transactions.py: a service's transactions read from a
PostgreSQL statement log (the log's lines as the local stack writes them)."""

from __future__ import annotations

from tests.support import load_script

pt = load_script("pg_transactions")


def _line(ts: str, pid: int, app: str, ms: float, what: str) -> str:
    return f"2026-12-03 06:36:{ts} UTC [{pid}] {app} LOG:  duration: {ms} ms  {what}"


LOG = [
    _line("22.000", 7, "status", 0.03, "statement: BEGIN;"),
    _line("22.001", 7, "status", 0.02, "bind __asyncpg_stmt_1__: WITH fresh AS (INSERT INTO processed_events ..."),
    _line("22.003", 7, "status", 2.00, "execute __asyncpg_stmt_1__: WITH fresh AS (INSERT INTO processed_events ..."),
    # Another service's statements and another backend's are not this one's.
    _line("22.004", 9, "ingest", 5.00, "statement: BEGIN;"),
    _line("22.004", 9, "ingest", 1.00, "execute __asyncpg_stmt_3__: INSERT INTO outbox ..."),
    # Three executions of one statement in a row: one pipelined round trip.
    _line("22.005", 7, "status", 0.10, "execute __asyncpg_stmt_2__: UPDATE invoices SET filename = ..."),
    _line("22.005", 7, "status", 0.10, "execute __asyncpg_stmt_2__: UPDATE invoices SET filename = ..."),
    _line("22.006", 7, "status", 0.10, "execute __asyncpg_stmt_2__: UPDATE invoices SET filename = ..."),
    _line("22.008", 7, "status", 0.50, "execute __asyncpg_stmt_4__: INSERT INTO outbox ..."),
    _line("22.020", 7, "status", 1.50, "statement: COMMIT;"),
    _line("22.021", 9, "ingest", 1.00, "statement: COMMIT;"),
    # Outside a transaction: a statement of its own.
    _line("22.022", 9, "ingest", 0.20, "execute __asyncpg_stmt_6__: SELECT seq FROM outbox ..."),
    # A transaction without the marker (the relay's), and a stray line.
    _line("22.030", 7, "status", 0.03, "statement: BEGIN;"),
    "2026-12-03 06:36:22.031 UTC [7] status LOG:  checkpoint starting: time",
    _line("22.032", 7, "status", 0.20, "execute __asyncpg_stmt_5__: UPDATE outbox SET published_at = now() ..."),
    _line("22.034", 7, "status", 0.40, "statement: COMMIT;"),
]


def test_a_transaction_counts_its_round_trips_wall_time_and_server_time() -> None:
    found = pt.transactions(LOG, "status", marker="processed_events")
    assert len(found) == 1
    tx = found[0]
    assert (tx.statements, tx.round_trips) == (5, 3)
    assert round(tx.wall_ms, 3) == 20.0
    assert round(tx.server_ms, 2) == round(0.03 + 0.02 + 2.0 + 0.3 + 0.5 + 1.5, 2)


def test_without_a_marker_every_transaction_of_the_app_counts() -> None:
    found = pt.transactions(LOG, "status")
    assert [t.round_trips for t in found] == [3, 1]
    assert [t.round_trips for t in pt.transactions(LOG, "ingest")] == [1]
    figures = pt.summary(found)
    assert figures["transactions"] == 2
    assert figures["round_trips_p50"] == 2
    assert figures["round_trips_max"] == 3
    assert pt.summary([]) == {"transactions": 0}


def test_statements_outside_a_transaction_are_counted_apart() -> None:
    assert pt.loose_statements(LOG, "ingest") == 1
    assert pt.loose_statements(LOG, "status") == 0
