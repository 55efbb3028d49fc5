"""The exchange stage: each status another platform must know goes to it
as a CDAR message (docs/reform.md, "Platform to platform").

Its own consumer group (``<service>-exchange``) reads this service's status
topic, one record at a time: the statuses of an invoice share a partition
and reach the peer in their order. For a status of an invoice shared with
a peer, of that peer's interest (sharing.Shared.recipient), and not itself
applied from that peer's message, the stage builds the message from the
history row (invoicing_common.cdar.history: the message id derives from the
row, so a message sent twice is dropped by the receiver), checks it with
the official rules of the release in force, and calls the peer's
ExchangeService.

- A message the rules refuse, or an invoice that cannot be expressed as
  CDAR, is a bug: logged as an error, counted, never sent; the stage goes on.
- The peer away, slow, overloaded or not accepting our token: the call is
  retried with a growing wait (0.5 s doubling to 30 s), for as long as it
  takes; the record stays uncommitted, so a restart resumes it.
- A refusal a retry would meet again (the message or the transition is
  wrong for the peer): logged with the invoice, counted, skipped, so that
  it does not hold the statuses of other invoices.
- A peer missing from PLATFORMS_FILE: the record goes to the DLQ, for an
  operator to replay once the registry knows it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from invoicing.v1 import events_pb2, exchange_pb2

from invoicing_common import topics
from invoicing_common.cdar import LifecycleMessage, to_xml
from invoicing_common.cdar.history import NotExpressible, lifecycle_message
from invoicing_common.kafka import PermanentError, Record, StreamApp, backoff_delays
from invoicing_common.platforms import Peer, Registry
from invoicing_status.cdar_rules import CdarRules
from invoicing_status.lifecycle import Status
from invoicing_status.observability import EXCHANGE_CDAR_INVALID, EXCHANGE_REFUSED, EXCHANGE_SENT
from invoicing_status.queries import SharedStatus, StatusQueries
from invoicing_status.sharing import EXCHANGED

log = logging.getLogger(__name__)

# Refusals a retry would meet again: the message, or the state of the
# invoice there, is wrong for the peer. Any other failure may pass.
PERMANENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
# The peer may not have recorded the shared invoice yet when its first
# message about it arrives (its status service lags its ingest): NOT_FOUND
# is retried this long (in waits) before it counts as permanent.
NOT_FOUND_GRACE_SECONDS = 300.0
_EXCHANGED_CODES = frozenset(s.value for s in EXCHANGED)


def _exchanged(event: events_pb2.StatusEvent) -> bool:
    return event.status_code in _EXCHANGED_CODES and event.sequence > 0


FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0

Pause = Callable[[float], Awaitable[None]]


class Submitter(Protocol):
    """One attempt at handing a peer a message (exchange_client.ExchangeClient)."""

    async def submit(self, peer: Peer, invoice_id: str, data: bytes) -> exchange_pb2.SubmitLifecycleMessageResponse: ...


@dataclass(frozen=True)
class Outgoing:
    peer_id: str
    message: LifecycleMessage


def outgoing(row: SharedStatus, platform_id: str) -> Outgoing | None:
    """The message of ``row`` and the peer it goes to; None when no peer
    is to be told. Raises NotExpressible when the invoice lacks what a
    message must carry."""
    peer_id = row.shared.recipient(Status(row.change.status_code), row.change.actor)
    if peer_id is None:
        return None
    return Outgoing(peer_id, lifecycle_message(row.invoice_id, row.summary, row.change, row.position, platform_id))


class ExchangeStage:
    def __init__(
        self,
        queries: StatusQueries,
        registry: Registry,
        rules: CdarRules,
        client: Submitter,
        platform_id: str,
        pause: Pause,
    ) -> None:
        self._queries = queries
        self._registry = registry
        self._rules = rules
        self._client = client
        self._platform_id = platform_id
        self._pause = pause

    def wants(self, record: Record) -> bool:
        """Whether ``record`` may be a status to send: the stream runtime
        passes over the others before any span or task (most statuses are
        this platform's own business). A record without a value is wanted,
        so that it is dead-lettered."""
        if record.value is None:
            return True
        # No other platform: nothing is shared.
        return bool(self._registry.peers) and _exchanged(events_pb2.StatusEvent.FromString(record.value))

    async def handle(self, record: Record) -> None:
        """A status event ``wants`` selected (the stream runtime hands over
        no other)."""
        if record.value is None:
            raise PermanentError("record has no value")
        event = events_pb2.StatusEvent.FromString(record.value)
        row = await self._queries.shared_status(event.sequence)
        if row is None or row.invoice_id != event.invoice_id:
            log.warning(
                "status event at %s names history row %d, which is not this invoice's: not sent",
                record.where,
                event.sequence,
                extra={"invoice_id": event.invoice_id},
            )
            return
        status = Status(row.change.status_code)
        try:
            out = outgoing(row, self._platform_id)
            if out is None:
                return
            data = to_xml(out.message)
        except (NotExpressible, ValueError) as exc:
            peer_id = row.shared.recipient(status, row.change.actor) or ""
            self._invalid(peer_id, status, row.invoice_id, f"the invoice cannot be expressed as CDAR: {exc}")
            return
        peer = self._registry.get(out.peer_id)
        if peer is None:
            raise PermanentError(f"platform {out.peer_id} is not in PLATFORMS_FILE: status {status.value} not sent")
        verdict = await self._rules.check(data)
        if verdict.findings:
            rules = ", ".join(f"{f.rule} ({f.location})" for f in verdict.findings)
            self._invalid(peer.id, status, row.invoice_id, f"BR-FR-CDV {verdict.release.version} refuses it: {rules}")
            return
        await self._send(peer, status, row.invoice_id, data)

    def _invalid(self, peer_id: str, status: Status, invoice_id: str, why: str) -> None:
        EXCHANGE_CDAR_INVALID.add(1, {"platform": peer_id, "status": status.value})
        log.error(
            "CDAR of status %d for platform %s not sent (a bug, please report it): %s",
            status.value,
            peer_id,
            why,
            extra={"invoice_id": invoice_id},
        )

    async def _send(self, peer: Peer, status: Status, invoice_id: str, data: bytes) -> None:
        waits = backoff_delays(FIRST_DELAY_SECONDS, MAX_DELAY_SECONDS)
        attempts = 0
        waited = 0.0
        while True:
            attempts += 1
            try:
                response = await self._client.submit(peer, invoice_id, data)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                not_yet = code == grpc.StatusCode.NOT_FOUND and waited < NOT_FOUND_GRACE_SECONDS
                if code in PERMANENT_CODES and not not_yet:
                    EXCHANGE_REFUSED.add(1, {"platform": peer.id, "code": code.name})
                    log.error(
                        "platform %s refused the CDAR of status %d for good (%s: %s): not sent again",
                        peer.id,
                        status.value,
                        code.name,
                        exc.details(),
                        extra={"invoice_id": invoice_id},
                    )
                    return
                delay = next(waits)
                waited += delay
                log.warning(
                    "CDAR of status %d to platform %s failed (attempt %d: %s: %s), retrying in %.1fs",
                    status.value,
                    peer.id,
                    attempts,
                    code.name,
                    exc.details(),
                    delay,
                    extra={"invoice_id": invoice_id},
                )
                await self._pause(delay)
                continue
            EXCHANGE_SENT.add(1, {"platform": peer.id, "status": status.value})
            log.info(
                "status %d sent to platform %s (%s there, %s)",
                status.value,
                peer.id,
                response.status_code,
                "applied" if response.applied else "already applied",
                extra={"invoice_id": invoice_id},
            )
            return


def register(app: StreamApp, stage: ExchangeStage) -> None:
    """``app``: the exchange stage's own stream app (consumer group
    ``settings.exchange_group``), beside the pipeline's."""
    app.consume(topics.STATUS, handler=stage.handle, concurrency=1, select=stage.wants)
