"""Directory use cases: every change is written to PostgreSQL (current row,
history, and its record for the compacted topic as an outbox row) in one
transaction; the outbox relay publishes the records, so the topic never
misses a committed change and no transaction waits for Kafka. Row locks
taken by the write are held until the commit, so two writers of one entry
get outbox rows (and the topic records) in the order they commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import asyncpg  # type: ignore[import-untyped]

from invoicing_common import topics
from invoicing_common.kafka import outbox
from invoicing_common.kafka.errors import is_transient
from invoicing_common.kafka.outbox import OutboxMessage, OutboxRelay
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
from invoicing_route.feed import DirectoryFeed, Offsets
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
    # The outbox rows of what was written: visible once published and applied.
    seqs: list[int] = field(default_factory=list)


OUTBOX = outbox.OutboxTable(source="directory", channel="directory_outbox", keep_published=True, positions=True)

Record = tuple[bytes, bytes | None]  # (key, value or None: a tombstone)


async def _announce(conn: asyncpg.Connection, records: Sequence[Record]) -> list[int]:
    return await outbox.insert(conn, OUTBOX, [OutboxMessage(topics.DIRECTORY, k, v) for k, v in records])


class Directory:
    def __init__(
        self,
        repository: DirectoryRepository,
        relay: OutboxRelay,
        feed: DirectoryFeed,
        apply_timeout: float,
    ) -> None:
        self._repository = repository
        self._relay = relay
        self._feed = feed
        self._apply_timeout = apply_timeout

    @property
    def index(self) -> DirectoryIndex:
        return self._feed.index

    async def _visible(self, seqs: Sequence[int]) -> None:
        """Read-your-writes: return once this instance routes with the change
        (or after the apply timeout: the change is durable either way)."""
        if seqs:
            self._relay.wake()
            if not await self.wait_visible(seqs, self._apply_timeout):
                log.warning("directory change committed but not yet in this instance's index: rows %s", seqs)

    # --- entries ---------------------------------------------------------------

    async def upsert(self, entry: Entry) -> tuple[StoredEntry, bool]:
        now = datetime.now(UTC)
        seqs: list[int] = []
        async with self._repository.transaction() as conn:
            changed = await self._repository.merge_entries(conn, [entry], now)
            version = changed.get((entry.address, entry.valid_from))
            if version is not None:
                stored = replace(entry, version=version)
                seqs = await _announce(conn, [(entry_key(stored.entry_id), entry_change(stored, timestamp(now)))])
        await self._visible(seqs)
        current = await self._repository.get_entry(entry.address, entry.valid_from)
        if current is None:  # deleted concurrently
            raise NotFound("entry_id", f"entry {entry.entry_id} was deleted meanwhile")
        return current, version is not None

    async def delete(self, entry_id: str) -> bool:
        address, valid_from = parse_entry_id(entry_id)
        seqs: list[int] = []
        async with self._repository.transaction() as conn:
            deleted = await self._repository.delete_entry(conn, address, valid_from, datetime.now(UTC))
            if deleted is not None:
                seqs = await _announce(conn, [(entry_key(deleted.entry_id), None)])
        await self._visible(seqs)
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
        seqs: list[int] = []
        async with self._repository.transaction() as conn:
            changed, orphans = await self._repository.merge_services(conn, [service], now)
            if orphans:
                what = "siret" if service.parts.siret else "siren"
                raise DirectoryError(what, f"no directory entry for {service.unit}")
            version = changed.get((service.unit, service.code))
            if version is not None:
                stored = replace(service, version=version)
                seqs = await _announce(
                    conn, [(service_key(service.unit, service.code), service_change(stored, timestamp(now)))]
                )
        await self._visible(seqs)
        current = await self._repository.get_service(service.unit, service.code)
        if current is None:
            raise NotFound("service_code", f"service {service.code} of {service.unit} was deleted meanwhile")
        return current, version is not None

    async def delete_service(self, unit: str, code: str) -> bool:
        seqs: list[int] = []
        async with self._repository.transaction() as conn:
            deleted = await self._repository.delete_service(conn, unit, code, datetime.now(UTC))
            if deleted is not None:
                seqs = await _announce(conn, [(service_key(unit, code), None)])
        await self._visible(seqs)
        return deleted is not None

    # --- bulk ------------------------------------------------------------------

    def bulk(self) -> BulkImport:
        return BulkImport(self._repository, self._relay)

    async def wait_visible(self, seqs: Sequence[int], timeout: float) -> bool:
        """True once the outbox rows ``seqs`` are published and this
        instance's index has them; False after ``timeout`` seconds."""
        if not seqs:
            return True
        deadline = time.monotonic() + timeout
        offsets: Offsets | None = await self._relay.published_offsets(seqs, timeout)
        if offsets is None:
            return False
        return await self._feed.wait_applied(offsets, max(0.0, deadline - time.monotonic()))

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
    merged set-wise, its records written to the outbox, committed; a failed
    batch writes nothing. Batches run one after another, so a batch holds
    all its row locks before the next asks for any (no deadlock) and a later
    change to the same entry gets the later outbox row (same order in the
    table and on the topic). The relay publishes while later batches merge.
    """

    def __init__(self, repository: DirectoryRepository, relay: OutboxRelay) -> None:
        self._repository = repository
        self._relay = relay
        self.outcome = BatchOutcome()
        self.failure: BaseException | None = None

    async def add_entries(self, rows: Sequence[tuple[int, Entry]]) -> None:
        latest: dict[tuple[str, date], Entry] = {}
        for _, entry in rows:
            latest[(entry.address, entry.valid_from)] = entry  # last row wins
        if not latest:
            return

        async def merge(conn: asyncpg.Connection, now: datetime) -> list[Record]:
            changed = await self._repository.merge_entries(conn, list(latest.values()), now)
            ts = timestamp(now)
            return [
                (entry_key(entry_id_of(*key)), entry_change(latest[key], ts, version))
                for key, version in changed.items()
            ]

        written = await self._run([line for line, _ in rows], merge)
        if written is not None:
            self.outcome.written += written
            self.outcome.unchanged += len(rows) - written

    async def add_services(self, rows: Sequence[tuple[int, Service]]) -> None:
        latest: dict[tuple[str, str], Service] = {}
        lines: dict[tuple[str, str], list[int]] = {}
        for line, service in rows:
            latest[(service.unit, service.code)] = service
            lines.setdefault((service.unit, service.code), []).append(line)
        if not latest:
            return
        orphaned: list[Rejection] = []

        async def merge(conn: asyncpg.Connection, now: datetime) -> list[Record]:
            changed, orphans = await self._repository.merge_services(conn, list(latest.values()), now)
            orphaned.clear()
            for key in orphans:
                service = latest[key]
                what = "siret" if service.parts.siret else "siren"
                orphaned.extend(Rejection(line, what, f"no directory entry for {service.unit}") for line in lines[key])
            ts = timestamp(now)
            return [
                (service_key(s.unit, s.code), service_change(s, ts))
                for s in (replace(latest[key], version=version) for key, version in changed.items())
            ]

        written = await self._run([line for line, _ in rows], merge)
        if written is not None:
            self.outcome.rejected += orphaned
            self.outcome.written += written
            self.outcome.unchanged += len(rows) - written - len(orphaned)

    async def _run(
        self, lines: list[int], merge: Callable[[asyncpg.Connection, datetime], Awaitable[list[Record]]]
    ) -> int | None:
        """One batch in one transaction; the number of changes written, or
        None when the batch was not written."""
        if self.failure is not None:
            raise self.failure
        try:
            async with self._repository.transaction() as conn:
                records = await merge(conn, datetime.now(UTC))
                self.outcome.seqs += await _announce(conn, records)
        except Exception as exc:  # noqa: BLE001 - reported for each row of the batch
            self._batch_failed(lines, exc)
            return None
        self._relay.wake()
        return len(records)

    def _batch_failed(self, lines: list[int], exc: Exception) -> None:
        if is_transient(exc):
            # Database gone: stop the import, the client retries.
            self.failure = self.failure or exc
            return
        log.error("import batch not written: %s", exc)
        self.outcome.rejected += [Rejection(line, "row", f"batch not written: {exc}") for line in lines]

    async def finish(self) -> BatchOutcome:
        """The outcome; raises what stopped the import."""
        if self.failure is not None:
            raise self.failure
        return self.outcome
