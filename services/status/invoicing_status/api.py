"""StatusService gRPC servicer."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, status_pb2, status_pb2_grpc

from invoicing_status.repository import InvoiceView, StatusRepository


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
    return response


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, repository: StatusRepository) -> None:
        self._repository = repository

    async def GetInvoice(  # noqa: N802 - gRPC method name
        self, request: status_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.GetInvoiceResponse:
        try:
            invoice_id = str(uuid.UUID(request.invoice_id))
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invoice_id: {request.invoice_id!r} is not a UUID")
        view = await self._repository.get_invoice(invoice_id)
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"invoice_id: no invoice {invoice_id}")
        assert view is not None
        return invoice_response(view)


def registrar(servicer: StatusServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def register(server: grpc.aio.Server) -> list[str]:
        status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, server)
        return [status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name]

    return register
