"""Directory use cases: every change is written to PostgreSQL (current row
and history) and published on the compacted topic inside one transaction
that commits only after Kafka acknowledged the records, so the topic never
misses a committed change. Row locks taken by the write are held until the
commit, so two writers of one entry publish in the order they commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from invoicing_common.kafka.errors import is_transient
from invoicing_route.codec import entry_change, entry_key, service_change, service_key, timestamp
from invoicing_route.directory import (
    DirectoryError,
    DirectoryIndex,
    Entry,
    Service,
    address_of,
    entry_id_of,
    parse_entry_id,
)
from invoicing_route.domain import BuyerIdentifiers, Resolution, candidates, resolve
from invoicing_route.feed import DirectoryFeed, DirectoryPublisher, Offsets
from invoicing_route.repository import DirectoryRepository, EntryFilter, StoredEntry, StoredService

log = logging.getLogger(__name__)


class NotFound(LookupError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rejection:
    line: int
    field: str
    message: str


@dataclass
class BatchOutcome:
    written: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    offsets: Offsets = field(default_factory=dict)


def merge_offsets(into: Offsets, more: Offsets) -> None:
    for partition, offset in more.items():
        into[partition] = max(into.get(partition, -1), offset)


class Directory:
    def __init__(
        self,
        repository: DirectoryRepository,
        publisher: DirectoryPublisher,
        feed: DirectoryFeed,
        apply_timeout: float,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._feed = feed
        self._apply_timeout = apply_timeout

    @property
    def index(self) -> DirectoryIndex:
        return self._feed.index

    async def _visible(self, offsets: Offsets, timeout: float | None = None) -> None:
        """Read-your-writes: return once this instance routes with the change."""
        if offsets and not await self._feed.wait_applied(offsets, timeout or self._apply_timeout):
            log.warning("directory change published but not yet applied to the index: %s", offsets)

    # --- entries ---------------------------------------------------------------

    async def upsert(self, entry: Entry) -> tuple[StoredEntry, bool]:
        now = datetime.now(UTC)
        offsets: Offsets = {}
        async with self._repository.transaction() as conn:
            changed = await self._repository.merge_entries(conn, [entry], now)
            version = changed.get((entry.address, entry.valid_from))
            if version is not None:
                stored = replace(entry, version=version)
                offsets = await self._publisher.publish(
                    [(entry_key(stored.entry_id), entry_change(stored, timestamp(now)))]
                )
        await self._visible(offsets)
        current = await self._repository.get_entry(entry.address, entry.valid_from)
        if current is None:  # deleted concurrently
            raise NotFound("entry_id", f"entry {entry.entry_id} was deleted meanwhile")
        return current, version is not None

    async def delete(self, entry_id: str) -> bool:
        address, valid_from = parse_entry_id(entry_id)
        offsets: Offsets = {}
        async with self._repository.transaction() as conn:
            deleted = await self._repository.delete_entry(conn, address, valid_from, datetime.now(UTC))
            if deleted is not None:
                offsets = await self._publisher.publish([(entry_key(deleted.entry_id), None)])
        await self._visible(offsets)
        return deleted is not None

    async def get(self, entry_id: str) -> tuple[StoredEntry, list[StoredService]]:
        address, valid_from = parse_entry_id(entry_id)
        stored = await self._repository.get_entry(address, valid_from)
        if stored is None:
            raise NotFound("entry_id", f"no directory entry {entry_id}")
        parts = stored.entry.parts
        units = [parts.siren] if not parts.siret else [address_of(parts.siren, parts.siret), parts.siren]
        return stored, await self._repository.services_of(units)

    async def get_as_of(self, entry_id: str, at: datetime) -> Entry:
        address, valid_from = parse_entry_id(entry_id)
        for entry in await self._repository.entries_as_of([address], at):
            if entry.valid_from == valid_from:
                return entry
        raise NotFound("entry_id", f"no directory entry {entry_id} at {at.isoformat()}")

    async def list(self, where: EntryFilter, after: tuple[str, date] | None, limit: int) -> list[StoredEntry]:
        return await self._repository.list_entries(where, after, limit)

    # --- services --------------------------------------------------------------

    async def upsert_service(self, service: Service) -> tuple[StoredService, bool]:
        now = datetime.now(UTC)
        offsets: Offsets = {}
        async with self._repository.transaction() as conn:
            changed, orphans = await self._repository.merge_services(conn, [service], now)
            if orphans:
                what = "siret" if service.parts.siret else "siren"
                raise DirectoryError(what, f"no directory entry for {service.unit}")
            version = changed.get((service.unit, service.code))
            if version is not None:
                stored = replace(service, version=version)
                offsets = await self._publisher.publish(
                    [(service_key(service.unit, service.code), service_change(stored, timestamp(now)))]
                )
        await self._visible(offsets)
        current = await self._repository.get_service(service.unit, service.code)
        if current is None:
            raise NotFound("service_code", f"service {service.code} of {service.unit} was deleted meanwhile")
        return current, version is not None

    async def delete_service(self, unit: str, code: str) -> bool:
        offsets: Offsets = {}
        async with self._repository.transaction() as conn:
            deleted = await self._repository.delete_service(conn, unit, code, datetime.now(UTC))
            if deleted is not None:
                offsets = await self._publisher.publish([(service_key(unit, code), None)])
        await self._visible(offsets)
        return deleted is not None

    # --- bulk ------------------------------------------------------------------

    def bulk(self, max_in_flight: int = 3) -> BulkImport:
        return BulkImport(self._repository, self._publisher, max_in_flight)

    async def wait_visible(self, offsets: Offsets, timeout: float) -> bool:
        return not offsets or await self._feed.wait_applied(offsets, timeout)

    # --- resolution ------------------------------------------------------------

    def resolve_now(self, buyer: BuyerIdentifiers) -> Resolution:
        return resolve(self.index, buyer, datetime.now(UTC).date())

    async def resolve_as_of(self, buyer: BuyerIdentifiers, at: datetime) -> Resolution:
        """The decision with the directory as recorded at ``at``, for the day of ``at``."""
        found, _ = candidates(buyer)
        addresses = [c.address for c in found]
        entries = await self._repository.entries_as_of(addresses, at)
        units: set[str] = set()
        for entry in entries:
            parts = entry.parts
            units.update({parts.siren, address_of(parts.siren, parts.siret)})
        services = await self._repository.services_as_of(sorted(units), at) if units else []
        return resolve(DirectoryIndex.of(entries, services), buyer, at.date())


class BulkImport:
    """One import, batch by batch. Each batch is one transaction: staged,
    merged set-wise, published, committed after the broker's ack; a failed
    batch writes nothing. Merges run one after another, so a batch holds all
    its row locks before the next asks for any (no deadlock) and a later
    change to the same entry waits for the earlier commit (same order in
    the table and on the topic). Publishing and committing overlap with the
    next batches' merges, up to ``max_in_flight`` batches.
    """

    def __init__(self, repository: DirectoryRepository, publisher: DirectoryPublisher, max_in_flight: int) -> None:
        self._repository = repository
        self._publisher = publisher
        self._slots = asyncio.Semaphore(max_in_flight)
        self._finishing: set[asyncio.Task[None]] = set()
        self.outcome = BatchOutcome()
        self.failure: BaseException | None = None

    async def add_entries(self, rows: Sequence[tuple[int, Entry]]) -> None:
        latest: dict[tuple[str, date], Entry] = {}
        for _, entry in rows:
            latest[(entry.address, entry.valid_from)] = entry  # last row wins
        if not latest:
            return

        async def merge(conn: asyncpg.Connection, now: datetime) -> list[tuple[bytes, bytes | None]]:
            changed = await self._repository.merge_entries(conn, list(latest.values()), now)
            self.outcome.written += len(changed)
            self.outcome.unchanged += len(rows) - len(changed)
            ts = timestamp(now)
            return [
                (entry_key(entry_id_of(*key)), entry_change(latest[key], ts, version))
                for key, version in changed.items()
            ]

        await self._run([line for line, _ in rows], merge)

    async def add_services(self, rows: Sequence[tuple[int, Service]]) -> None:
        latest: dict[tuple[str, str], Service] = {}
        lines: dict[tuple[str, str], list[int]] = {}
        for line, service in rows:
            latest[(service.unit, service.code)] = service
            lines.setdefault((service.unit, service.code), []).append(line)
        if not latest:
            return

        async def merge(conn: asyncpg.Connection, now: datetime) -> list[tuple[bytes, bytes | None]]:
            changed, orphans = await self._repository.merge_services(conn, list(latest.values()), now)
            for key in orphans:
                service = latest[key]
                what = "siret" if service.parts.siret else "siren"
                self.outcome.rejected += [
                    Rejection(line, what, f"no directory entry for {service.unit}") for line in lines[key]
                ]
            self.outcome.written += len(changed)
            self.outcome.unchanged += len(rows) - len(changed) - sum(len(lines[k]) for k in orphans)
            ts = timestamp(now)
            return [
                (service_key(s.unit, s.code), service_change(s, ts))
                for s in (replace(latest[key], version=version) for key, version in changed.items())
            ]

        await self._run([line for line, _ in rows], merge)

    async def _run(
        self,
        lines: list[int],
        merge: Callable[[asyncpg.Connection, datetime], Awaitable[list[tuple[bytes, bytes | None]]]],
    ) -> None:
        if self.failure is not None:
            raise self.failure
        await self._slots.acquire()
        pool = self._repository.pool
        conn = await pool.acquire()
        transaction = conn.transaction()
        try:
            await transaction.start()
            records = await merge(conn, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - reported for each row of the batch
            await self._abandon(pool, conn, transaction)
            self._batch_failed(lines, exc)
            return
        except asyncio.CancelledError:
            await self._abandon(pool, conn, transaction)
            raise
        task = asyncio.create_task(self._finish(pool, conn, transaction, records, lines))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(
        self, pool: Any, conn: asyncpg.Connection, transaction: Any, records: list[tuple[bytes, bytes | None]],
        lines: list[int],
    ) -> None:  # fmt: skip
        try:
            merge_offsets(self.outcome.offsets, await self._publisher.publish(records))
            await transaction.commit()
        except Exception as exc:  # noqa: BLE001 - reported for each row of the batch
            await self._abandon(pool, conn, transaction)
            self._batch_failed(lines, exc)
            return
        except asyncio.CancelledError:
            await self._abandon(pool, conn, transaction)
            raise
        await pool.release(conn)
        self._slots.release()

    async def _abandon(self, pool: Any, conn: asyncpg.Connection, transaction: Any) -> None:
        try:
            await transaction.rollback()
        except Exception:
            log.warning("rollback of an import batch failed", exc_info=True)
        await pool.release(conn)
        self._slots.release()

    def _batch_failed(self, lines: list[int], exc: Exception) -> None:
        if is_transient(exc):
            # Broker or database gone: stop the import, the client retries.
            self.failure = self.failure or exc
            return
        log.error("import batch not written: %s", exc)
        self.outcome.rejected += [Rejection(line, "row", f"batch not written: {exc}") for line in lines]

    async def finish(self) -> BatchOutcome:
        """Wait for the batches in flight; raises what stopped the import."""
        if self._finishing:
            await asyncio.gather(*self._finishing)
        if self.failure is not None:
            raise self.failure
        return self.outcome
