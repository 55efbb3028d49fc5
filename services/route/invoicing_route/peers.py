"""The client side of other platforms' IngestService: TLS channels and one
OAuth2 client-credentials token source per destination platform, and one
attempt at handing it an invoice read from the archive.

The token is fetched here, not by the channel's call credentials: a
credentials plugin turns every token failure into UNAVAILABLE, and the
delivery stage must tell an unreachable token endpoint (wait) from one that
refuses this platform's credentials (hold the invoice).

UploadInvoice goes through gRPC's synchronous API: when a server answers
an upload before reading all of it (a refusal at its gate, a quota, a
limit), grpc.aio reports INTERNAL "Internal error from Core" for the write
that failed instead of the server's status (grpc/grpc#36066), and the
delivery stage decides on that status. The files are still read from the
archive on the event loop, one message at a time, as gRPC's thread asks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc
from mode import Service
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from invoicing_common.archive.postgres import PostgresArchive
from invoicing_common.auth.client import secure_channel, secure_channel_sync
from invoicing_common.grpc_streams import send_stream
from invoicing_common.platforms import Peer, PeerTokens
from invoicing_common.telemetry import tracer
from invoicing_route.delivery_domain import Parcel

log = logging.getLogger(__name__)

_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name

Metadata = tuple[tuple[str, str], ...]


@dataclass
class _Link:
    channel: grpc.aio.Channel
    # UploadInvoice's (see the module's docstring).
    upload_channel: grpc.Channel


class PeerLinks(Service):
    """Channels and token sources of the destination platforms, made at
    first use and closed with the service. The registry is read once, at
    start: a platform's address does not change while the service runs."""

    def __init__(self) -> None:
        super().__init__()
        self._links: dict[str, _Link] = {}
        self._tokens = PeerTokens()

    def _link(self, peer: Peer) -> _Link:
        link = self._links.get(peer.id)
        if link is None:
            link = _Link(
                channel=secure_channel(peer.ingest, None, peer.ca_file),
                upload_channel=secure_channel_sync(peer.ingest, None, peer.ca_file),
            )
            self._links[peer.id] = link
        return link

    async def on_stop(self) -> None:
        links, self._links = list(self._links.values()), {}
        self._tokens.close()
        for link in links:
            link.upload_channel.close()
        await asyncio.gather(*(link.channel.close() for link in links), return_exceptions=True)

    async def submit(
        self, peer: Peer, parcel: Parcel, archive: PostgresArchive, timeout: float
    ) -> ingest_pb2.SubmitInvoiceResponse:
        """One attempt: the destination's receipt, or the failure as raised
        (a gRPC status, a token error, an archive error)."""
        link = self._link(peer)
        token = await self._tokens.source(peer).atoken()
        method = "UploadInvoice" if parcel.streamed else "SubmitInvoice"
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": _SERVICE,
            "rpc.method": method,
            "server.address": peer.ingest,
            "invoicing.delivery.destination_platform": peer.id,
        }
        with tracer().start_as_current_span(f"{_SERVICE}/{method}", kind=SpanKind.CLIENT, attributes=attributes):
            # The destination's server span continues this trace.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            metadata: Metadata = (("authorization", f"Bearer {token}"), *carrier.items())
            if parcel.streamed:
                stub = ingest_pb2_grpc.IngestServiceStub(link.upload_channel)
                return await _upload(stub, _messages(parcel, archive), metadata, timeout)
            document = await archive.read(parcel.document.sha256)
            request = ingest_pb2.SubmitInvoiceRequest(
                document=document, filename=parcel.filename, idempotency_key=parcel.idempotency_key
            )
            response: ingest_pb2.SubmitInvoiceResponse = await ingest_pb2_grpc.IngestServiceStub(
                link.channel
            ).SubmitInvoice(request, metadata=metadata, timeout=timeout)
            return response


async def _messages(parcel: Parcel, archive: PostgresArchive) -> AsyncIterator[ingest_pb2.UploadInvoiceRequest]:
    """The upload: the document, then each attachment, each a header then
    its chunks as the archive serves them (each chunk checked against its
    hash). Each header carries the file's hash too, so the destination
    refuses bytes that are not the archived ones.

    A file's last chunk is sent only once the archive has served the whole
    file (its final checks included): a read that fails, wherever it fails,
    leaves the file short of its hash at the destination, never an upload
    that looks whole without the files after it (a server may see a
    cancelled stream end as if it were closed)."""
    files = [(parcel.document, parcel.filename), *((a, a.filename) for a in parcel.attachments)]
    for index, (ref, name) in enumerate(files):
        # The invoice's media type is found from its content; the key goes
        # in the first message only.
        header = ingest_pb2.UploadFile(filename=name, media_type=ref.media_type if index else "", sha256=ref.sha256)
        yield ingest_pb2.UploadInvoiceRequest(file=header, idempotency_key="" if index else parcel.idempotency_key)
        held: bytes | None = None
        async for chunk in archive.stream(ref.sha256):
            if held is not None:
                yield ingest_pb2.UploadInvoiceRequest(chunk=held)
            held = chunk
        if held is not None:
            yield ingest_pb2.UploadInvoiceRequest(chunk=held)


async def _upload(
    stub: ingest_pb2_grpc.IngestServiceStub,
    messages: AsyncIterator[ingest_pb2.UploadInvoiceRequest],
    metadata: Metadata,
    timeout: float,
) -> ingest_pb2.SubmitInvoiceResponse:
    """UploadInvoice on a synchronous stub (invoicing_common.grpc_streams),
    its messages read from ``messages`` on this event loop while gRPC's
    thread waits for each. A message that cannot be read (a damaged chunk,
    the archive's database away) cancels the call before its end, so the
    destination keeps nothing, and is raised instead."""
    loop = asyncio.get_running_loop()

    async def next_message() -> ingest_pb2.UploadInvoiceRequest | None:
        return await anext(messages, None)

    def pulled() -> Iterator[ingest_pb2.UploadInvoiceRequest]:
        while (message := asyncio.run_coroutine_threadsafe(next_message(), loop).result(timeout)) is not None:
            yield message

    response: ingest_pb2.SubmitInvoiceResponse = await send_stream(
        stub.UploadInvoice.future, pulled(), timeout, metadata
    )
    return response
