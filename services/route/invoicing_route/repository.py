"""The directory in PostgreSQL (schema ``directory``).

Writes take a connection inside a transaction the caller owns, so the
caller can publish the change and commit only once Kafka acknowledged it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from invoicing_common.db import Database
from invoicing_route.directory import Entry, Service

_ENTRY_COLUMNS = (
    "address", "valid_from", "siren", "siret", "routing_code", "suffix", "platform_id",
    "requires_service_code", "requires_commitment_number", "valid_to", "active",
)  # fmt: skip
_SERVICE_COLUMNS = ("unit", "code", "siren", "siret", "name", "active", "requires_commitment_number")
# Columns whose change makes a new version (the others follow from the key).
_ENTRY_VALUES = "platform_id, requires_service_code, requires_commitment_number, valid_to, active"
_SERVICE_VALUES = "name, active, requires_commitment_number"


@dataclass(frozen=True)
class StoredEntry:
    entry: Entry
    updated_at: datetime


@dataclass(frozen=True)
class StoredService:
    service: Service
    updated_at: datetime


@dataclass(frozen=True)
class EntryFilter:
    siren: str = ""
    siret: str = ""
    platform_id: str = ""
    active_only: bool = False


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(
        address=row["address"],
        valid_from=row["valid_from"],
        valid_to=row["valid_to"],
        platform_id=row["platform_id"],
        requires_service_code=row["requires_service_code"],
        requires_commitment_number=row["requires_commitment_number"],
        active=row["active"],
        version=row["version"],
    )


def _service(row: asyncpg.Record) -> Service:
    return Service(
        unit=row["unit"],
        code=row["code"],
        name=row["name"],
        active=row["active"],
        requires_commitment_number=row["requires_commitment_number"],
        version=row["version"],
    )


def _entry_record(entry: Entry) -> tuple[Any, ...]:
    parts = entry.parts
    return (
        entry.address, entry.valid_from, parts.siren, parts.siret, parts.routing_code, parts.suffix,
        entry.platform_id, entry.requires_service_code, entry.requires_commitment_number, entry.valid_to,
        entry.active,
    )  # fmt: skip


def _service_record(service: Service) -> tuple[Any, ...]:
    parts = service.parts
    return (
        service.unit, service.code, parts.siren, parts.siret, service.name, service.active,
        service.requires_commitment_number,
    )  # fmt: skip


_MERGE_ENTRIES = f"""
WITH up AS (
    INSERT INTO entries ({", ".join(_ENTRY_COLUMNS)}, updated_at)
    SELECT {", ".join(_ENTRY_COLUMNS)}, $1 FROM entry_staging
    ON CONFLICT (address, valid_from) DO UPDATE SET
        platform_id = EXCLUDED.platform_id,
        requires_service_code = EXCLUDED.requires_service_code,
        requires_commitment_number = EXCLUDED.requires_commitment_number,
        valid_to = EXCLUDED.valid_to,
        active = EXCLUDED.active,
        version = entries.version + 1,
        updated_at = EXCLUDED.updated_at
    WHERE ({", ".join("entries." + c.strip() for c in _ENTRY_VALUES.split(","))})
          IS DISTINCT FROM ({", ".join("EXCLUDED." + c.strip() for c in _ENTRY_VALUES.split(","))})
    RETURNING *
), history AS (
    INSERT INTO entry_history (address, valid_from, deleted, {_ENTRY_VALUES}, version, recorded_at)
    SELECT address, valid_from, false, {_ENTRY_VALUES}, version, updated_at FROM up
)
SELECT address, valid_from, version FROM up
"""

_ORPHAN_SERVICES = """
DELETE FROM service_staging s
WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.siren = s.siren AND (s.siret = '' OR e.siret = s.siret))
RETURNING unit, code
"""

_MERGE_SERVICES = f"""
WITH up AS (
    INSERT INTO services ({", ".join(_SERVICE_COLUMNS)}, updated_at)
    SELECT {", ".join(_SERVICE_COLUMNS)}, $1 FROM service_staging
    ON CONFLICT (unit, code) DO UPDATE SET
        name = EXCLUDED.name,
        active = EXCLUDED.active,
        requires_commitment_number = EXCLUDED.requires_commitment_number,
        version = services.version + 1,
        updated_at = EXCLUDED.updated_at
    WHERE (services.name, services.active, services.requires_commitment_number)
          IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.active, EXCLUDED.requires_commitment_number)
    RETURNING *
), history AS (
    INSERT INTO service_history (unit, code, deleted, {_SERVICE_VALUES}, version, recorded_at)
    SELECT unit, code, false, {_SERVICE_VALUES}, version, updated_at FROM up
)
SELECT unit, code, version FROM up
"""


class DirectoryRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    @property
    def pool(self) -> asyncpg.Pool:
        return self._database.pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._database.pool.acquire() as conn, conn.transaction():
            yield conn

    # --- entries ---------------------------------------------------------------

    async def merge_entries(
        self, conn: asyncpg.Connection, entries: Sequence[Entry], now: datetime
    ) -> dict[tuple[str, date], int]:
        """Insert or update ``entries`` (distinct keys) set-wise; returns the
        new version of each entry that actually changed."""
        await conn.execute(
            "CREATE TEMP TABLE entry_staging ON COMMIT DROP AS"
            f" SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries WITH NO DATA"
        )
        await conn.copy_records_to_table(
            "entry_staging", records=[_entry_record(e) for e in entries], columns=_ENTRY_COLUMNS
        )
        rows = await conn.fetch(_MERGE_ENTRIES, now)
        return {(r["address"], r["valid_from"]): r["version"] for r in rows}

    async def delete_entry(
        self, conn: asyncpg.Connection, address: str, valid_from: date, now: datetime
    ) -> Entry | None:
        row = await conn.fetchrow(
            "DELETE FROM entries WHERE address = $1 AND valid_from = $2 RETURNING *", address, valid_from
        )
        if row is None:
            return None
        await conn.execute(
            f"INSERT INTO entry_history (address, valid_from, deleted, {_ENTRY_VALUES}, version, recorded_at)"
            f" VALUES ($1, $2, true, $3, $4, $5, $6, $7, $8, $9)",
            row["address"], row["valid_from"], row["platform_id"], row["requires_service_code"],
            row["requires_commitment_number"], row["valid_to"], row["active"], row["version"] + 1, now,
        )  # fmt: skip
        return _entry(row)

    async def get_entry(self, address: str, valid_from: date) -> StoredEntry | None:
        async with self._database.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM entries WHERE address = $1 AND valid_from = $2", address, valid_from
            )
        return StoredEntry(_entry(row), row["updated_at"]) if row is not None else None

    async def list_entries(self, where: EntryFilter, after: tuple[str, date] | None, limit: int) -> list[StoredEntry]:
        """Entries in (address, valid_from) order, after the given key."""
        clauses: list[str] = []
        args: list[object] = []
        if where.siren:
            args.append(where.siren)
            clauses.append(f"siren = ${len(args)}")
        if where.siret:
            args.append(where.siret)
            clauses.append(f"siren = left(${len(args)}, 9) AND siret = ${len(args)}")
        if where.platform_id:
            args.append(where.platform_id)
            clauses.append(f"platform_id = ${len(args)}")
        if where.active_only:
            clauses.append("active")
        if after is not None:
            args += [after[0], after[1]]
            clauses.append(f"(address, valid_from) > (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = (
            "SELECT * FROM entries"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + f" ORDER BY address, valid_from LIMIT ${len(args)}"
        )
        async with self._database.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [StoredEntry(_entry(r), r["updated_at"]) for r in rows]

    async def entries_as_of(self, addresses: Sequence[str], at: datetime) -> list[Entry]:
        """The version of each entry at these addresses recorded at ``at``."""
        async with self._database.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (address, valid_from) * FROM entry_history"
                " WHERE address = ANY($1::text[]) AND recorded_at <= $2"
                " ORDER BY address, valid_from, recorded_at DESC, version DESC",
                list(addresses),
                at,
            )
        return [_entry(r) for r in rows if not r["deleted"]]

    # --- services --------------------------------------------------------------

    async def merge_services(
        self, conn: asyncpg.Connection, services: Sequence[Service], now: datetime
    ) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
        """(new version of each changed service, services whose unit has no
        entry: not written)."""
        await conn.execute(
            "CREATE TEMP TABLE service_staging ON COMMIT DROP AS"
            f" SELECT {', '.join(_SERVICE_COLUMNS)} FROM services WITH NO DATA"
        )
        await conn.copy_records_to_table(
            "service_staging", records=[_service_record(s) for s in services], columns=_SERVICE_COLUMNS
        )
        orphans = {(r["unit"], r["code"]) for r in await conn.fetch(_ORPHAN_SERVICES)}
        rows = await conn.fetch(_MERGE_SERVICES, now)
        return {(r["unit"], r["code"]): r["version"] for r in rows}, orphans

    async def delete_service(self, conn: asyncpg.Connection, unit: str, code: str, now: datetime) -> Service | None:
        row = await conn.fetchrow("DELETE FROM services WHERE unit = $1 AND code = $2 RETURNING *", unit, code)
        if row is None:
            return None
        await conn.execute(
            f"INSERT INTO service_history (unit, code, deleted, {_SERVICE_VALUES}, version, recorded_at)"
            " VALUES ($1, $2, true, $3, $4, $5, $6, $7)",
            unit, code, row["name"], row["active"], row["requires_commitment_number"], row["version"] + 1, now,
        )  # fmt: skip
        return _service(row)

    async def get_service(self, unit: str, code: str) -> StoredService | None:
        async with self._database.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM services WHERE unit = $1 AND code = $2", unit, code)
        return StoredService(_service(row), row["updated_at"]) if row is not None else None

    async def services_of(self, units: Sequence[str]) -> list[StoredService]:
        async with self._database.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM services WHERE unit = ANY($1::text[]) ORDER BY unit, code", list(units)
            )
        return [StoredService(_service(r), r["updated_at"]) for r in rows]

    async def services_as_of(self, units: Sequence[str], at: datetime) -> list[Service]:
        async with self._database.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (unit, code) * FROM service_history"
                " WHERE unit = ANY($1::text[]) AND recorded_at <= $2"
                " ORDER BY unit, code, recorded_at DESC, version DESC",
                list(units),
                at,
            )
        return [_service(r) for r in rows if not r["deleted"]]
