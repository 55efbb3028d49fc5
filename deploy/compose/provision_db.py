"""The compose deployment's database provisioning job (the `db-init` service).

Runs in the app image (it has asyncpg), as a one-shot container: waits for
PostgreSQL, then makes the `invoicing` database and one login role per
service owning its own schema and nothing else, plus the archive schema
(owned by ingest, usable by validate); the same model as the local stack
(deploy/local/stack.py, docs/security.md). Idempotent: passwords are
(re)set from the mounted files at each run.

    DB_INIT_DIR        folder of admin-password and NAME-password files
    PGHOST, PGPORT     the server (127.0.0.1, 25432)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from invoicing_common.archive.grants import grant_archive

SECRETS = Path(os.environ.get("DB_INIT_DIR", "/run/invoicing/db-init"))
HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ.get("PGPORT", "25432"))
ADMIN = os.environ.get("POSTGRES_ADMIN", "invoicing")
DATABASE = "invoicing"
# Login role -> the schema it owns.
ROLES = {"ingest": "ingest", "validate": "validate", "route": "directory", "status": "status"}
WAIT_SECONDS = float(os.environ.get("DB_INIT_WAIT_SECONDS", "180"))


def say(message: str) -> None:
    print(f"[db-init] {message}", flush=True)


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


async def connect(database: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=HOST, port=PORT, user=ADMIN, password=secret("admin-password"), database=database, timeout=5
    )


async def wait_for_server() -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            conn = await connect("postgres")
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"PostgreSQL on {HOST}:{PORT} not ready after {WAIT_SECONDS:.0f}s: {exc}") from exc
            await asyncio.sleep(1)
            continue
        await conn.close()
        return


async def provision() -> None:
    await wait_for_server()
    conn = await connect("postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            say(f"database {DATABASE} created")
    finally:
        await conn.close()
    conn = await connect(DATABASE)
    try:
        await conn.execute(f'REVOKE ALL ON DATABASE "{DATABASE}" FROM PUBLIC')
        await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for role, schema in ROLES.items():
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f'CREATE ROLE "{role}" LOGIN')
            # format() quotes the password as a literal on the server.
            statement = await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, secret(f"{role}-password")
            )
            await conn.execute(statement)
            await conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{DATABASE}" TO "{role}"')
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}"')
            await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{role}"')
        await grant_archive(conn)
    finally:
        await conn.close()
    say(f"roles {', '.join(ROLES)} and their schemas provisioned in {DATABASE}")


if __name__ == "__main__":
    asyncio.run(provision())
    sys.exit(0)
