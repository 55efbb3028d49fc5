"""StatusService gRPC servicer.

Every call acts for the authenticated account (invoicing_status.access):
an invoice it may not see is answered as one that does not exist, lists
and watches are filtered on the server, and the part a caller plays in a
status update follows from its token and the invoice's parties.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2, status_pb2, status_pb2_grpc
from opentelemetry import trace

from invoicing_common.auth.principal import ROLE_BUYER, ROLE_SUPPLIER, current_principal
from invoicing_common.kafka import headers_to_carrier
from invoicing_common.telemetry import current_trace_id, inject_headers
from invoicing_status.access import NotYourPart, Viewer, acting_role, can_see
from invoicing_status.domain import Change, TransitionError, check_payment, check_update, iso_date
from invoicing_status.holds import HELD_TECH
from invoicing_status.lifecycle import STATUS_CODES_TEXT, Reason, Status
from invoicing_status.notifier import ChangeNotifier
from invoicing_status.observability import observe_changes
from invoicing_status.queries import Cursor, Filter, ListItem, StatusQueries
from invoicing_status.records import InvoiceFacts, InvoiceView, file_refs, payment_proto
from invoicing_status.repository import StatusRepository

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
_WATCH_BATCH = 200
_WATCH_IDLE_SECONDS = 1.0
# Trailing metadata of a watch ended by its token's expiry: where to resume.
RESUME_POSITION_KEY = "resume-from-position"
_SERVICE = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
WATCH_METHOD = f"/{_SERVICE}/WatchInvoices"
# Reads are open to any account (filtered to what it may see); updates need
# a party's role, and the handler checks the party (access.acting_role).
ACCESS_POLICY: dict[str, frozenset[str]] = {
    f"/{_SERVICE}/GetInvoice": frozenset(),
    f"/{_SERVICE}/ListInvoices": frozenset(),
    WATCH_METHOD: frozenset(),
    f"/{_SERVICE}/UpdateStatus": frozenset({ROLE_BUYER, ROLE_SUPPLIER}),
}


class InvoiceNotFound(Exception):
    pass


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(field, f"{value!r} is not a UUID") from None


def to_filter(f: status_pb2.InvoiceFilter) -> Filter:
    for code in f.status_codes:
        if code not in {s.value for s in Status}:
            raise BadRequest("filter.status_codes", f"{code} is not a lifecycle status ({STATUS_CODES_TEXT})")
    due_before = iso_date(f.due_before) if f.due_before else None
    if f.due_before and due_before is None:
        raise BadRequest("filter.due_before", f"{f.due_before[:40]!r} is not a date (YYYY-MM-DD)")
    received_from = f.received_from.ToDatetime(tzinfo=UTC) if f.HasField("received_from") else None
    received_to = f.received_to.ToDatetime(tzinfo=UTC) if f.HasField("received_to") else None
    if received_from and received_to and received_to <= received_from:
        raise BadRequest("filter.received_to", "must be after filter.received_from")
    return Filter(
        seller_id=f.seller_id.strip(),
        buyer_id=f.buyer_id.strip(),
        status_codes=tuple(sorted(set(f.status_codes))),
        received_from=received_from,
        received_to=received_to,
        due_before=due_before,
        unpaid=f.unpaid,
    )


def _filter_fingerprint(f: Filter) -> str:
    return hashlib.sha256(repr(f).encode()).hexdigest()[:16]


def encode_page_token(cursor: Cursor, f: Filter) -> str:
    raw = json.dumps({"r": cursor.received_at.isoformat(), "i": cursor.invoice_id, "f": _filter_fingerprint(f)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str, f: Filter) -> Cursor | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        cursor = Cursor(received_at=datetime.fromisoformat(data["r"]), invoice_id=str(uuid.UUID(data["i"])))
        fingerprint = data["f"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest("page_token", "is not a token returned by ListInvoices") from None
    if fingerprint != _filter_fingerprint(f):
        raise BadRequest("page_token", "was issued for a different filter")
    return cursor


def list_item(item: ListItem) -> status_pb2.InvoiceListItem:
    out = status_pb2.InvoiceListItem(
        invoice_id=item.invoice_id,
        status_code=item.status.value,
        status=item.status.name,
        received_at=_ts(item.received_at),
        updated_at=_ts(item.updated_at),
        invoice_number=item.invoice_number,
        seller_id=item.seller_ids[0] if item.seller_ids else "",
        buyer_id=item.buyer_ids[0] if item.buyer_ids else "",
        filename=item.filename,
        due_date=item.due_date.isoformat() if item.due_date is not None else "",
    )
    if item.reason_code or item.reason_text:
        out.reason.code, out.reason.text = item.reason_code, item.reason_text
    return out


def _severity(name: str) -> common_pb2.Severity.ValueType:
    return common_pb2.SEVERITY_WARNING if name == "warning" else common_pb2.SEVERITY_FATAL


def invoice_response(view: InvoiceView) -> status_pb2.GetInvoiceResponse:
    response = status_pb2.GetInvoiceResponse(
        invoice_id=view.invoice_id,
        status_code=view.status.value,
        status=view.status.name,
        filename=view.filename,
        trace_id=view.trace_id,
        summary=view.summary,
        findings=[
            common_pb2.Finding(
                rule=f["rule"], severity=_severity(f["severity"]), location=f["location"], message=f["message"]
            )
            for f in view.findings
        ],
    )
    if view.reason_code or view.reason_text:
        response.reason.code, response.reason.text = view.reason_code, view.reason_text
    if view.received_at is not None:
        response.received_at.CopyFrom(_ts(view.received_at))
    document, attachments = file_refs(view.files)
    if document is not None:
        response.document.CopyFrom(document)
        response.attachments.extend(attachments)
    if view.hold is not None:
        response.hold.stage = view.hold.stage
        response.hold.code = HELD_TECH
        response.hold.message = view.hold.message
        response.hold.since.CopyFrom(_ts(view.hold.held_at))
        response.hold.dead_letter = view.hold.dead_letter
    if view.routing:
        r = view.routing
        response.routing.outcome = events_pb2.RoutingOutcome.Value(r.get("outcome") or "ROUTING_OUTCOME_UNSPECIFIED")
        response.routing.destination_platform = r.get("destination_platform", "")
        response.routing.local_delivery = bool(r.get("local_delivery"))
        response.routing.directory_entry_id = r.get("directory_entry_id", "")
        response.routing.reason.code = r.get("reason_code", "")
        response.routing.reason.text = r.get("reason", "")
    for row in view.history:
        at = Timestamp()
        at.FromDatetime(row.occurred_at)
        change = response.history.add(
            status_code=row.status.value,
            status=row.status.name,
            at=at,
            actor=row.actor,
            source_event_id=row.source_event_id,
            trace_id=row.trace_id,
        )
        if row.reason_code or row.reason_text:
            change.reason.code, change.reason.text = row.reason_code, row.reason_text
        if row.payment is not None:
            payment_proto(row.payment, change.payment)
    return response


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, repository: StatusRepository, queries: StatusQueries, notifier: ChangeNotifier) -> None:
        self._repository = repository
        self._queries = queries
        self._notifier = notifier

    async def GetInvoice(  # noqa: N802 - gRPC method name
        self, request: status_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.GetInvoiceResponse:
        try:
            invoice_id = _uuid(request.invoice_id, "invoice_id")
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Who may see it is decided before anything else is read: an invoice
        # the caller may not see costs what an unknown id costs.
        parties = await self._queries.parties(invoice_id)
        view = None
        if parties is not None and can_see(Viewer.of(current_principal()), parties):
            view = await self._repository.get_invoice(invoice_id)
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"invoice_id: no invoice {invoice_id}")
        assert view is not None
        return invoice_response(view)

    async def ListInvoices(  # noqa: N802 - gRPC method name
        self, request: status_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.ListInvoicesResponse:
        try:
            if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
                raise BadRequest("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})")
            f = to_filter(request.filter)
            after = decode_page_token(request.page_token, f)
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        size = request.page_size or DEFAULT_PAGE_SIZE
        items = await self._queries.list_invoices(f, Viewer.of(current_principal()), size + 1, after)
        response = status_pb2.ListInvoicesResponse(invoices=[list_item(i) for i in items[:size]])
        if len(items) > size:
            last = items[size - 1]
            response.next_page_token = encode_page_token(Cursor(last.received_at, last.invoice_id), f)
        return response

    async def WatchInvoices(  # noqa: N802 - gRPC method name
        self, request: status_pb2.WatchInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[status_pb2.WatchInvoicesResponse]:
        try:
            f = to_filter(request.filter)
            if request.from_position < 0:
                raise BadRequest("from_position", "must be 0 (from now) or a position received earlier")
            if f.due_before is not None or f.unpaid:
                field_name = "filter.due_before" if f.due_before is not None else "filter.unpaid"
                raise BadRequest(field_name, "filters ListInvoices only, not a watch")
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        principal = current_principal()
        viewer = Viewer.of(principal)
        if request.from_position:
            pruned = await self._queries.pruned_through()
            if request.from_position < pruned:
                # Resuming there would skip events silently: say so instead.
                await context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"from_position: events up to position {pruned} are no longer kept (STATUS_RETENTION_DAYS); "
                    "list the invoices, then watch from a newer position",
                )
        position = request.from_position or await self._queries.head_position()
        while not context.done():
            # The stream lives as long as the token that opened it. Ended
            # here (the gate would end it too, a little later, but without
            # knowing where the stream stood), it tells the client where to
            # resume with a new token, so that nothing is missed.
            left = principal.expires_at - time.time()
            if left <= 0:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"access token expired; call again with a new token and from_position={position}",
                    trailing_metadata=((RESUME_POSITION_KEY, str(position)),),
                )
            batch = await self._queries.events_after(f, viewer, position, _WATCH_BATCH)
            for seq, payload in batch:
                yield status_pb2.WatchInvoicesResponse(event=events_pb2.StatusEvent.FromString(payload), position=seq)
                position = seq
            if len(batch) < _WATCH_BATCH:
                # Positions of invoices this viewer may not see are skipped
                # too: resuming after the last one it got misses nothing.
                await self._notifier.wait_for_change(min(_WATCH_IDLE_SECONDS, max(left, 0.0)))

    async def UpdateStatus(  # noqa: N802 - gRPC method name
        self, request: status_pb2.UpdateStatusRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.UpdateStatusResponse:
        principal = current_principal()
        try:
            invoice_id = _uuid(request.invoice_id, "invoice_id")
            if len(request.request_id) > 128:
                raise BadRequest("request_id", "is too long")
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        parties = await self._queries.parties(invoice_id)
        if parties is None or not can_see(Viewer.of(principal), parties):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"invoice_id: no invoice {invoice_id}")
        assert parties is not None
        try:
            role = acting_role(principal, parties, request.status_code)
        except TransitionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.field}: {exc.message}")
        except NotYourPart as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"status_code: {exc}")
        elsewhere = (await self._queries.shared(invoice_id)).set_elsewhere(request.status_code)
        if elsewhere is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"status_code: {elsewhere}")
        reason = Reason(request.reason.code, request.reason.text) if request.HasField("reason") else None
        p = request.payment
        invoice_currency = await self._queries.currency(invoice_id) if p.amount and not p.currency else ""
        request_id = request.request_id or str(uuid.uuid4())
        # Request ids are the caller's: two accounts' ids never collide.
        dedup_key = f"update:{invoice_id}:{principal.subject}:{request_id}"
        actor = f"{role}:{principal.subject}"
        now = datetime.now(UTC)

        def planner(current: Status | None, _duplicate_of: str | None) -> list[Change]:
            if current is None:
                raise InvoiceNotFound(invoice_id)
            new = check_update(current, request.status_code, reason)
            payment = check_payment(new.value, p.amount, p.currency, p.paid_on, invoice_currency, now.date())
            return [Change(new, actor, now, dedup_key, reason, payment)]

        try:
            facts = InvoiceFacts(
                invoice_id=invoice_id, trace_id=current_trace_id(), headers=headers_to_carrier(inject_headers())
            )
            changes = await self._repository.apply(dedup_key, facts, planner)
            observe_changes(trace.get_current_span(), changes, None)
        except InvoiceNotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"invoice_id: no invoice {invoice_id}")
        except TransitionError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.precondition else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, f"{exc.field}: {exc.message}")
        current = await self._queries.current(invoice_id)
        assert current is not None
        status, position = current
        return status_pb2.UpdateStatusResponse(
            status_code=status.value, status=status.name, applied=bool(changes), position=position
        )


def registrar(servicer: StatusServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, server)
        return [status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name]

    return register
