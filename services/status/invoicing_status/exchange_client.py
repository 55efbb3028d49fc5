"""The client side of other platforms' ExchangeService: one TLS channel per
platform, whose calls carry a bearer token of the OAuth2 client-credentials
grant (this platform's account there, PLATFORMS_FILE), and one attempt at
handing it a CDAR message.

A token that cannot be had fails the call with UNAVAILABLE (the channel's
call credentials): the exchange stage waits it out like the platform
being away, whether the token endpoint is down or refuses the account
(an operator's fix, after which the messages go; none is dropped).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from invoicing.v1 import exchange_pb2, exchange_pb2_grpc
from mode import Service
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from invoicing_common.auth.client import TokenSource, secure_channel
from invoicing_common.platforms import Peer, PeerTokens
from invoicing_common.telemetry import record_invoice, tracer

log = logging.getLogger(__name__)

_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name
_METHOD = "SubmitLifecycleMessage"


@dataclass
class _Link:
    channel: grpc.aio.Channel
    # The token source the channel's call credentials hold: a rotated
    # secret gives a new one, and so a new channel.
    tokens: TokenSource


class ExchangeClient(Service):
    """Channels to the other platforms, made at first use and closed with
    the service."""

    def __init__(self, call_timeout_seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._timeout = call_timeout_seconds
        self._links: dict[str, _Link] = {}
        self._tokens = PeerTokens()

    def _link(self, peer: Peer) -> _Link:
        tokens = self._tokens.source(peer)
        link = self._links.get(peer.id)
        if link is not None and link.tokens is not tokens:
            self._retire(link)
            link = None
        if link is None:
            link = _Link(secure_channel(peer.exchange, tokens, peer.ca_file), tokens)
            self._links[peer.id] = link
        return link

    def _retire(self, link: _Link) -> None:
        closing = asyncio.ensure_future(link.channel.close(grace=self._timeout))
        closing.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def on_stop(self) -> None:
        links, self._links = list(self._links.values()), {}
        self._tokens.close()
        await asyncio.gather(*(link.channel.close() for link in links), return_exceptions=True)

    async def submit(self, peer: Peer, invoice_id: str, data: bytes) -> exchange_pb2.SubmitLifecycleMessageResponse:
        """One attempt; raises grpc.aio.AioRpcError as the call failed."""
        stub = exchange_pb2_grpc.ExchangeServiceStub(self._link(peer).channel)
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": _SERVICE,
            "rpc.method": _METHOD,
            "server.address": peer.exchange,
            "invoicing.exchange.platform": peer.id,
        }
        name = f"{_SERVICE}/{_METHOD}"
        with tracer().start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            record_invoice(span, invoice_id)
            # The peer's server span continues this trace.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            response: exchange_pb2.SubmitLifecycleMessageResponse = await stub.SubmitLifecycleMessage(
                exchange_pb2.SubmitLifecycleMessageRequest(message=data),
                metadata=tuple(carrier.items()),
                timeout=self._timeout,
            )
            return response
