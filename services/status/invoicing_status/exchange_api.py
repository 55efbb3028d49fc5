"""ExchangeService gRPC servicer: the CDAR lifecycle messages other
platforms send about the invoices they share with this one
(docs/reform.md, "Platform to platform").

The caller must be a platform registered here (role ``platform`` and its
account in PLATFORMS_FILE). Its message is read with the hardened parser,
checked with the official rules of the release in force, matched to the
invoice it names among those shared with that platform, and applied as a
status update through the lifecycle's checks, once per message id. The
status event goes out through the outbox like any other change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn

import grpc
from invoicing.v1 import exchange_pb2, exchange_pb2_grpc
from opentelemetry import trace

from invoicing_common.auth.principal import ROLE_PLATFORM, current_principal
from invoicing_common.cdar import CdarError, CdvError, CdvRulesMissing, from_xml
from invoicing_common.kafka import headers_to_carrier
from invoicing_common.platforms import Registry
from invoicing_common.telemetry import current_trace_id, inject_headers, record_invoice
from invoicing_status.cdar_rules import CdarRules
from invoicing_status.domain import Change, TransitionError
from invoicing_status.lifecycle import Status
from invoicing_status.observability import EXCHANGE_RECEIVED, observe_changes
from invoicing_status.queries import StatusQueries
from invoicing_status.records import InvoiceFacts, ReceivedMessage
from invoicing_status.repository import StatusRepository
from invoicing_status.sharing import (
    BadMessage,
    NotAPeer,
    NotTheirs,
    calling_peer,
    check_envelope,
    invoice_key,
    match,
    peer_status,
    plan_peer_update,
)

log = logging.getLogger(__name__)

_SERVICE = exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"].full_name
# Other platforms only; which ones, the handler asks the registry.
EXCHANGE_POLICY: dict[str, frozenset[str]] = {
    f"/{_SERVICE}/SubmitLifecycleMessage": frozenset({ROLE_PLATFORM}),
}


class _InvoiceGone(Exception):
    pass


class ExchangeServicer(exchange_pb2_grpc.ExchangeServiceServicer):
    def __init__(
        self, registry: Registry, rules: CdarRules, repository: StatusRepository, queries: StatusQueries
    ) -> None:
        self._registry = registry
        self._rules = rules
        self._repository = repository
        self._queries = queries

    async def SubmitLifecycleMessage(  # noqa: N802 - gRPC method name
        self, request: exchange_pb2.SubmitLifecycleMessageRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.SubmitLifecycleMessageResponse:
        try:
            peer = calling_peer(current_principal(), self._registry)
        except NotAPeer as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        span = trace.get_current_span()
        span.set_attribute("invoicing.exchange.platform", peer.id)

        async def refuse(code: grpc.StatusCode, details: str, status: int = 0) -> NoReturn:
            EXCHANGE_RECEIVED.add(1, {"platform": peer.id, "status": status, "outcome": code.name})
            await context.abort(code, details)
            raise AssertionError("abort returned")  # it raises: the server ends the call there

        try:
            message = from_xml(request.message)
            check_envelope(peer, message.sender.global_id, message.message_id)
        except CdarError as exc:
            await refuse(grpc.StatusCode.INVALID_ARGUMENT, f"message: {exc.field}: {exc.message}")
        except BadMessage as exc:
            await refuse(grpc.StatusCode.INVALID_ARGUMENT, f"message: {exc}")
        status_code = message.status_code
        try:
            verdict = await self._rules.check(request.message)
        except (CdvError, CdvRulesMissing):
            # Ours, not the message's: the caller retries later.
            log.exception("CDAR from platform %s not checked: the rules could not run", peer.id)
            await refuse(grpc.StatusCode.INTERNAL, "the rules could not be run; try again later", status_code)
        if verdict.findings:
            await refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message: refused by BR-FR-CDV {verdict.release.version}: {', '.join(verdict.rule_ids)}",
                status_code,
            )

        key = invoice_key(message)
        found = match(await self._queries.shared_candidates(peer.id, key.seller_siren, key.number), key, peer.id)
        if found is None:
            # The same answer for no invoice and for several: ids of invoices
            # are never named to a caller that did not name them.
            await refuse(
                grpc.StatusCode.NOT_FOUND,
                f"message: no invoice shared with platform {peer.id} has this seller SIREN, number (BT-1)"
                " and issue date (BT-2)",
                status_code,
            )
        assert found is not None
        invoice_id = found.invoice_id
        record_invoice(span, invoice_id)
        asked = peer_status(message)
        # Message ids are the sender's: two platforms' ids never collide.
        dedup_key = f"cdar:{peer.id}:{message.message_id}"
        now = datetime.now(UTC)

        def planner(current: Status | None, _duplicate_of: str | None) -> list[Change]:
            if current is None:
                raise _InvoiceGone(invoice_id)
            return plan_peer_update(current, found.shared, peer.id, asked, found.summary.currency, now, dedup_key)

        facts = InvoiceFacts(
            invoice_id=invoice_id, trace_id=current_trace_id(), headers=headers_to_carrier(inject_headers())
        )
        try:
            received = ReceivedMessage(peer.id, message.message_id, status_code, request.message)
            changes = await self._repository.apply(dedup_key, facts, planner, received)
        except _InvoiceGone:
            await refuse(grpc.StatusCode.NOT_FOUND, f"message: no invoice shared with platform {peer.id}", status_code)
        except NotTheirs as exc:
            await refuse(grpc.StatusCode.PERMISSION_DENIED, f"message: {exc}", status_code)
        except TransitionError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.precondition else grpc.StatusCode.INVALID_ARGUMENT
            await refuse(code, f"message: {exc.field}: {exc.message}", status_code)
        observe_changes(span, changes, None)
        outcome = "applied" if changes else "duplicate"
        EXCHANGE_RECEIVED.add(1, {"platform": peer.id, "status": status_code, "outcome": outcome})
        if changes:
            log.info(
                "status %s from platform %s",
                ",".join(str(c.status.value) for c in changes),
                peer.id,
                extra={"invoice_id": invoice_id},
            )
        current = await self._queries.current(invoice_id)
        assert current is not None
        return exchange_pb2.SubmitLifecycleMessageResponse(
            invoice_id=invoice_id, status_code=current[0].value, applied=bool(changes)
        )


def registrar(servicer: ExchangeServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        exchange_pb2_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
        return [_SERVICE]

    return register
