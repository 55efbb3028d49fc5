"""DirectoryService gRPC servicer: thin, delegates to the use cases."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import NoReturn

import grpc
from invoicing.v1 import directory_pb2, directory_pb2_grpc, events_pb2

from invoicing_common.auth.principal import ROLE_DIRECTORY_ADMIN
from invoicing_common.kafka.errors import is_transient
from invoicing_route.codec import entry_from_proto, entry_to_proto, service_from_proto, service_to_proto
from invoicing_route.directory import DirectoryError, Entry, Service, address_of, check_siren, check_siret
from invoicing_route.domain import BuyerIdentifiers, Resolution
from invoicing_route.repository import EntryFilter
from invoicing_route.usecases import Directory, NotFound, Rejection

log = logging.getLogger(__name__)

_SERVICE = directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name
# Writes decide where buyers' invoices go: directory administrators only.
# Reads serve any authenticated account (suppliers check an address).
ACCESS_POLICY: dict[str, frozenset[str]] = {
    **{f"/{_SERVICE}/{m}": frozenset({ROLE_DIRECTORY_ADMIN})
       for m in ("Upsert", "Delete", "Import", "UpsertService", "DeleteService")},
    **{f"/{_SERVICE}/{m}": frozenset() for m in ("Get", "List", "Resolve")},
}  # fmt: skip
# Counted against the account's concurrent streams (QUOTA_STREAMS).
STREAMING_METHODS = frozenset({f"/{_SERVICE}/Import"})

MAX_REPORTED_REJECTIONS = 10_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# An import returns once this instance routes with it, or after this long.
IMPORT_VISIBLE_TIMEOUT = 120.0


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    if isinstance(exc, DirectoryError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotFound):
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if is_transient(exc):
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"directory store or broker unavailable: {exc}")
    raise exc


def _page_token(entry: Entry) -> str:
    return base64.urlsafe_b64encode(f"{entry.address}@{entry.valid_from.isoformat()}".encode()).decode()


def _after(token: str) -> tuple[str, date] | None:
    if not token:
        return None
    try:
        address, _, day = base64.urlsafe_b64decode(token.encode()).decode().rpartition("@")
        return address, date.fromisoformat(day)
    except ValueError:
        raise DirectoryError("page_token", "is not a token returned by List") from None


def _at(ts: object) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined, no-any-return]


def resolution_response(resolution: Resolution, platform_id: str) -> directory_pb2.ResolveResponse:
    response = directory_pb2.ResolveResponse(trace=resolution.trace)
    if resolution.entry is not None:
        response.entry.CopyFrom(entry_to_proto(resolution.entry))
    if resolution.level is not None:
        response.matched_level = resolution.level.value
    if resolution.routed:
        response.outcome = events_pb2.ROUTING_OUTCOME_ROUTED
        response.destination_platform = resolution.destination()
        response.local_delivery = response.destination_platform == platform_id
    else:
        response.outcome = events_pb2.ROUTING_OUTCOME_REJECTED
        response.reason.code, response.reason.text = resolution.reason_code, resolution.reason_text
    return response


def _unit(siren: str, siret: str) -> str:
    siren = check_siren(siren.strip())
    siret = siret.strip()
    if siret:
        check_siret(siret, siren)
    return address_of(siren, siret)


class DirectoryServicer(directory_pb2_grpc.DirectoryServiceServicer):
    def __init__(self, directory: Directory, platform_id: str) -> None:
        self._directory = directory
        self._platform_id = platform_id

    async def Upsert(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.UpsertResponse:
        try:
            stored, changed = await self._directory.upsert(entry_from_proto(request.entry))
        except Exception as exc:  # noqa: BLE001 - mapped to a status, or re-raised
            await _abort(context, exc)
        return directory_pb2.UpsertResponse(entry=entry_to_proto(stored.entry, stored.updated_at), changed=changed)

    async def Delete(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.DeleteResponse:
        try:
            deleted = await self._directory.delete(request.entry_id)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        return directory_pb2.DeleteResponse(deleted=deleted)

    async def Get(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.GetResponse:
        try:
            if request.HasField("as_of"):
                entry = await self._directory.get_as_of(request.entry_id, _at(request.as_of))
                return directory_pb2.GetResponse(entry=entry_to_proto(entry))
            stored, services = await self._directory.get(request.entry_id)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        return directory_pb2.GetResponse(
            entry=entry_to_proto(stored.entry, stored.updated_at),
            services=[service_to_proto(s.service, s.updated_at) for s in services],
        )

    async def List(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.ListResponse:
        try:
            if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
                raise DirectoryError("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
            size = request.page_size or DEFAULT_PAGE_SIZE
            where = EntryFilter(
                siren=request.siren.strip(),
                siret=request.siret.strip(),
                platform_id=request.platform_id.strip(),
                active_only=request.active_only,
            )
            rows = await self._directory.list(where, _after(request.page_token), size + 1)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        response = directory_pb2.ListResponse(entries=[entry_to_proto(r.entry, r.updated_at) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = _page_token(rows[size - 1].entry)
        return response

    async def Resolve(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.ResolveRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.ResolveResponse:
        buyer = BuyerIdentifiers(
            endpoint=(request.buyer_endpoint.value, request.buyer_endpoint.scheme)
            if request.buyer_endpoint.value
            else None,
            ids=tuple((i.value, i.scheme) for i in request.buyer_ids),
            buyer_reference=request.buyer_reference,
            purchase_order_reference=request.purchase_order_reference,
        )
        try:
            if request.HasField("as_of"):
                resolution = await self._directory.resolve_as_of(buyer, _at(request.as_of))
            else:
                resolution = self._directory.resolve_now(buyer)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        return resolution_response(resolution, self._platform_id)

    async def Import(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[directory_pb2.ImportRequest], context: grpc.aio.ServicerContext
    ) -> directory_pb2.ImportResponse:
        started = time.monotonic()
        received = 0
        rejected: list[Rejection] = []
        job = self._directory.bulk()
        # Checking rows (here) overlaps with writing earlier batches (writer).
        queue: asyncio.Queue[tuple[list[tuple[int, Entry]], list[tuple[int, Service]]] | None] = asyncio.Queue(2)

        async def writer() -> None:
            while (item := await queue.get()) is not None:
                entries, services = item
                await job.add_entries(entries)
                await job.add_services(services)

        writing = asyncio.create_task(writer())
        try:
            async for request in request_iterator:
                entries: list[tuple[int, Entry]] = []
                services: list[tuple[int, Service]] = []
                for entry_row in request.entries:
                    try:
                        entries.append((entry_row.line, entry_from_proto(entry_row.entry)))
                    except DirectoryError as exc:
                        rejected.append(Rejection(entry_row.line, exc.field, exc.message))
                for service_row in request.services:
                    try:
                        services.append((service_row.line, service_from_proto(service_row.service)))
                    except DirectoryError as exc:
                        rejected.append(Rejection(service_row.line, exc.field, exc.message))
                received += len(request.entries) + len(request.services)
                queued = asyncio.ensure_future(queue.put((entries, services)))
                await asyncio.wait([queued, writing], return_when=asyncio.FIRST_COMPLETED)
                if writing.done():  # the writer stopped: broker or database gone
                    queued.cancel()
                    break
            else:
                await queue.put(None)
            await writing
            outcome = await job.finish()
            visible = await self._directory.wait_visible(outcome.seqs, IMPORT_VISIBLE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            writing.cancel()
            await _abort(context, exc)
        rejected += outcome.rejected
        rejected.sort(key=lambda r: r.line)
        log.info(
            "directory import: %d rows, %d written, %d unchanged, %d rejected in %.1fs%s",
            received, outcome.written, outcome.unchanged, len(rejected), time.monotonic() - started,
            "" if visible else " (index still catching up)",
        )  # fmt: skip
        return directory_pb2.ImportResponse(
            received=received,
            written=outcome.written,
            unchanged=outcome.unchanged,
            rejected_count=len(rejected),
            rejected=[
                directory_pb2.RowRejection(line=r.line, field=r.field, message=r.message)
                for r in rejected[:MAX_REPORTED_REJECTIONS]
            ],
        )

    async def UpsertService(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.UpsertServiceRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.UpsertServiceResponse:
        try:
            stored, changed = await self._directory.upsert_service(service_from_proto(request.service))
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        return directory_pb2.UpsertServiceResponse(
            service=service_to_proto(stored.service, stored.updated_at), changed=changed
        )

    async def DeleteService(  # noqa: N802 - gRPC method name
        self, request: directory_pb2.DeleteServiceRequest, context: grpc.aio.ServicerContext
    ) -> directory_pb2.DeleteServiceResponse:
        try:
            if not request.code.strip():
                raise DirectoryError("code", "is empty")
            deleted = await self._directory.delete_service(_unit(request.siren, request.siret), request.code.strip())
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc)
        return directory_pb2.DeleteServiceResponse(deleted=deleted)


def registrar(servicer: DirectoryServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        directory_pb2_grpc.add_DirectoryServiceServicer_to_server(servicer, server)
        return [directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name]

    return register
