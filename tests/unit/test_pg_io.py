"""scripts/pg_io.py: PostgreSQL's buffer and WAL counters, as differences
per invoice over a command."""

from __future__ import annotations

from tests.support import load_script

pg_io = load_script("pg_io")


def _server(invoices: int, **counters: int) -> dict[str, int]:
    base = dict.fromkeys(
        ("wal_records", "wal_fpi", "wal_bytes", "blks_read", "blks_hit", "buffers_checkpoint", "buffers_clean",
         "buffers_backend", "checkpoints"),
        0,
    )  # fmt: skip
    return {"invoices": invoices, "database_bytes": 3 * 2**20, **base, **counters}


def test_counters_are_per_invoice_and_relations_ranked_by_pages_read() -> None:
    before = (_server(1000, wal_bytes=10_000, blks_read=5), {"status.invoices": 10, "status.outbox": 3})
    after = (
        _server(1200, wal_bytes=3_010_000, blks_read=405, checkpoints=1),
        {"status.invoices": 310, "status.outbox": 3, "status.processed_events_pkey": 40},
    )
    report = pg_io._report(before, after, top=5)
    assert report["invoices"] == 200
    assert report["invoices_in_database"] == 1200
    assert report["database_mb"] == 3
    assert report["per_invoice"]["wal_bytes"] == 15_000
    assert report["per_invoice"]["blks_read"] == 2
    assert report["per_invoice"]["checkpoints"] == 0.01
    # Relations with no page read in the window are left out.
    assert report["blks_read_per_invoice_by_relation"] == {
        "status.invoices": 1.5,
        "status.processed_events_pkey": 0.2,
    }
