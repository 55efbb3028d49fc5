"""PostgreSQL's buffer and WAL traffic per invoice while a command runs:
pages read from outside shared buffers, pages found in them, WAL records,
full-page images and bytes, pages the checkpointer and the background
writer wrote, and the indexes and tables whose pages were read most.

    . .run/env
    .venv/bin/python scripts/pg_io.py -- \\
        invoicectl bench --mode open --rate 50 --count 1200 --no-baselines --seed 7

It answers "does an invoice cost more as the database grows": a key that
lands on a random page of a large index (a random UUID, a hash) touches a
page that is less and less likely to be in shared buffers, and after each
checkpoint its first change writes the whole page to the WAL.

Invoices are counted as the rows ``status.invoices`` gained over the
command. Needs the local stack (``make up``) and the admin account of
``.run/env`` (``DATABASE_URL``, ``PGPASSFILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from invoicectl.bench.wrapping import parse_with_command

_SERVER = """
select (select count(*) from status.invoices) as invoices,
       w.wal_records, w.wal_fpi, w.wal_bytes::bigint as wal_bytes,
       d.blks_read, d.blks_hit,
       b.buffers_checkpoint, b.buffers_clean, b.buffers_backend,
       b.checkpoints_timed + b.checkpoints_req as checkpoints,
       (select sum(pg_total_relation_size(relid))::bigint from pg_stat_user_tables) as database_bytes
from pg_stat_wal w, pg_stat_database d, pg_stat_bgwriter b
where d.datname = current_database()
"""

_RELATIONS = """
select schemaname || '.' || indexrelname as name, idx_blks_read as blks_read
from pg_statio_user_indexes
union all
select schemaname || '.' || relname, heap_blks_read from pg_statio_user_tables
"""


async def _snapshot(conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, int]]:
    server = dict(await conn.fetchrow(_SERVER))
    relations = {r["name"]: r["blks_read"] or 0 for r in await conn.fetch(_RELATIONS)}
    return server, relations


def _report(
    before: tuple[dict[str, int], dict[str, int]], after: tuple[dict[str, int], dict[str, int]], top: int
) -> dict[str, Any]:
    (s0, r0), (s1, r1) = before, after
    invoices = s1["invoices"] - s0["invoices"]
    per = max(invoices, 1)
    counters = [k for k in s0 if k not in ("invoices", "database_bytes")]
    reads = sorted(((name, r1.get(name, 0) - r0.get(name, 0)) for name in r1), key=lambda x: -x[1])
    return {
        "invoices": invoices,
        "invoices_in_database": s1["invoices"],
        "database_mb": round(s1["database_bytes"] / 2**20),
        "per_invoice": {k: round((s1[k] - s0[k]) / per, 2) for k in counters},
        "blks_read_per_invoice_by_relation": {name: round(n / per, 2) for name, n in reads[:top] if n > 0},
    }


async def _main(args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        before = await _snapshot(conn)
        rc = await asyncio.to_thread(subprocess.call, args.command)
        after = await _snapshot(conn)
    finally:
        await conn.close()
    print(json.dumps(_report(before, after, args.top), indent=2))
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=12, help="relations listed by pages read")
    args = parse_with_command(parser)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
