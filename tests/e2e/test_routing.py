"""Routing on the whole pipeline: a directory change takes effect for the
next invoice, without restart; each refusal names the field and value."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from invoicing.v1 import directory_pb2, directory_pb2_grpc, events_pb2

from invoicing_common import topics
from tests.integration.test_directory_api import fresh_siren, siret_of
from tests.support import Stack, collect_until_final, demo_channel, records_for_key, submit, unique_invoice

pytestmark = pytest.mark.stack

SAMPLE_SIREN = b"512345679"
SAMPLE_SIRET = b"51234567900017"


def invoice_for(siren: str, siret: str, buyer_reference: str = "SERV-ACHATS-17", po: str = "PO-2025-1187") -> bytes:
    """The UBL sample addressed to another buyer (BT-49, BT-47), with BT-10 and BT-13 as given."""
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    doc = doc.replace(b'schemeID="0225">' + SAMPLE_SIREN + b"<", b'schemeID="0225">' + siren.encode() + b"<")
    doc = doc.replace(b">" + SAMPLE_SIRET + b"<", b">" + siret.encode() + b"<")
    doc = doc.replace(b"<cbc:BuyerReference>SERV-ACHATS-17<", f"<cbc:BuyerReference>{buyer_reference}<".encode())
    return doc.replace(b"<cbc:ID>PO-2025-1187<", f"<cbc:ID>{po}<".encode())


@pytest.fixture
async def directory(stack: Stack) -> AsyncIterator[directory_pb2_grpc.DirectoryServiceStub]:
    async with demo_channel(stack.route) as channel:
        yield directory_pb2_grpc.DirectoryServiceStub(channel)


async def _final(stack: Stack, follower: object, document: bytes) -> tuple[str, events_pb2.StatusEvent]:
    invoice_id = (await submit(stack.ingest, document, "routing.xml")).invoice_id
    events = await collect_until_final(follower, {invoice_id})  # type: ignore[arg-type]
    return invoice_id, events[invoice_id][-1]


async def test_directory_changes_steer_the_next_invoices(
    stack: Stack, status_follower: object, directory: directory_pb2_grpc.DirectoryServiceStub
) -> None:
    siren = fresh_siren()
    siret = siret_of(siren)

    _, unknown = await _final(stack, status_follower, invoice_for(siren, siret))
    assert unknown.status_code == 213 and unknown.reason.code == "REJ_ADR"
    assert "BT-49" in unknown.reason.text and siren in unknown.reason.text

    entry = directory_pb2.DirectoryEntry(siren=siren, siret=siret, platform_id="pdp-elsewhere")
    await directory.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=10)
    invoice_id, remote = await _final(stack, status_follower, invoice_for(siren, siret))
    assert remote.status_code == 201
    routed = [events_pb2.InvoiceRouted.FromString(r.value)
              for r in await records_for_key(stack.kafka, topics.ROUTED, invoice_id)]  # fmt: skip
    assert [(r.destination_platform, r.directory_entry_id) for r in routed] == [("pdp-elsewhere", f"{siren}_{siret}")]

    entry.platform_id, entry.requires_service_code = stack.platform_id, True
    await directory.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=10)
    _, no_service = await _final(stack, status_follower, invoice_for(siren, siret, buyer_reference="SVC-X"))
    assert no_service.status_code == 213 and no_service.reason.code == "REJ_CONT_B2G"
    assert "BT-10" in no_service.reason.text and "SVC-X" in no_service.reason.text

    service = directory_pb2.BuyerService(siren=siren, siret=siret, code="SVC-X", requires_commitment_number=True)
    await directory.UpsertService(directory_pb2.UpsertServiceRequest(service=service), timeout=10)
    _, no_po = await _final(stack, status_follower, invoice_for(siren, siret, buyer_reference="SVC-X", po=""))
    assert no_po.status_code == 213 and no_po.reason.code == "REJ_CONT_B2G" and "BT-13" in no_po.reason.text

    _, here = await _final(stack, status_follower, invoice_for(siren, siret, buyer_reference="SVC-X"))
    assert here.status_code == (203 if stack.platform_id == "local" else 201)
