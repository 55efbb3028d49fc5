"""Route's delivery stage: which routed invoices go to another platform, what
is sent, which failures are waited out and which hold the invoice, the
waits between attempts, and the InvoiceDelivered made of the destination's
receipt. Then the stage's handler in memory (kafka.testing), the network
replaced by a scripted destination: a refusal and an unknown platform are
dead-lettered, a destination down for a while is waited for."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, events_pb2, ingest_pb2

from invoicing_common import topics
from invoicing_common.archive import DocumentDamaged, DocumentMissing
from invoicing_common.auth.client import TokenError
from invoicing_common.ids import stage_event_id
from invoicing_common.kafka import PermanentError, StreamApp, backoff_delays
from invoicing_common.kafka.errors import Fault
from invoicing_common.kafka.testing import StreamHarness
from invoicing_common.platforms import Peer, PlatformsConfigError, Registry
from invoicing_route import delivery
from invoicing_route.delivery_domain import (
    SUBMIT_MAX_BYTES,
    DeliveryRefused,
    Parcel,
    UnknownPlatform,
    delivered_event,
    failure_reason,
    fault_of,
    parcel_of,
    refusal,
    to_deliver,
)
from invoicing_route.directory import check_entry
from invoicing_route.domain import Resolution, routed_event
from invoicing_route.settings import RouteSettings

HERE = "local"
PEER = "peer"
SHA_DOC = "a" * 64
SHA_ATT = "b" * 64
SHA_EMB = "c" * 64


def _settings(**overrides: object) -> RouteSettings:
    return RouteSettings(
        grpc_tls_cert_file=Path("unused.pem"),
        grpc_tls_key_file=Path("unused.key"),
        oidc_issuer="https://issuer",
        platform_id=HERE,
        **overrides,  # type: ignore[arg-type]
    )


def _routed(
    invoice_id: str = "inv-1",
    destination: str = PEER,
    outcome: int = events_pb2.ROUTING_OUTCOME_ROUTED,
    local: bool = False,
    size: int = 1000,
    attachments: Iterable[common_pb2.DocumentRef] = (),
) -> events_pb2.InvoiceRouted:
    return events_pb2.InvoiceRouted(
        event_id=stage_event_id(invoice_id, "routed"),
        invoice=events_pb2.InvoiceRef(invoice_id=invoice_id, filename="facture.xml", submitter="erp"),
        outcome=outcome,  # type: ignore[arg-type]
        destination_platform=destination,
        local_delivery=local,
        original=common_pb2.DocumentRef(
            sha256=SHA_DOC,
            size_bytes=size,
            media_type="application/xml",
            filename="facture.xml",
            origin=common_pb2.FILE_ORIGIN_INVOICE,
        ),
        attachments=list(attachments),
    )


def _attachment(sha256: str, name: str, origin: int) -> common_pb2.DocumentRef:
    return common_pb2.DocumentRef(
        sha256=sha256,
        size_bytes=10,
        media_type="application/pdf",
        filename=name,
        origin=origin,  # type: ignore[arg-type]
    )


def _rpc_error(code: grpc.StatusCode, details: str = "why") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# --- which routed invoices are delivered --------------------------------------


@pytest.mark.parametrize(
    ("routed", "delivered"),
    [
        pytest.param(_routed(), True, id="routed-to-another-platform"),
        pytest.param(_routed(outcome=events_pb2.ROUTING_OUTCOME_REJECTED, destination=""), False, id="refused"),
        pytest.param(_routed(destination=HERE, local=True), False, id="local"),
        # Its own id named again without the flag: still this platform's buyer.
        pytest.param(_routed(destination=HERE), False, id="own-platform-id"),
        # Routed elsewhere but to no platform: delivered, so that it is held
        # (unknown platform) rather than silently left.
        pytest.param(_routed(destination=""), True, id="routed-to-nobody"),
        pytest.param(_routed(outcome=events_pb2.ROUTING_OUTCOME_UNSPECIFIED), False, id="no-outcome"),
    ],
)
def test_only_invoices_routed_to_another_platform_are_delivered(
    routed: events_pb2.InvoiceRouted, delivered: bool
) -> None:
    assert to_deliver(routed, HERE) is delivered


# --- what is sent --------------------------------------------------------------


def test_the_routed_event_carries_the_references_of_the_files_validated_named() -> None:
    validated = events_pb2.InvoiceValidated(
        invoice=events_pb2.InvoiceRef(invoice_id="inv-1"),
        valid=True,
        original=_routed().original,
        attachments=[_attachment(SHA_ATT, "bon.pdf", common_pb2.FILE_ORIGIN_SUBMITTED)],
    )
    entry = check_entry(siren="512345679", platform_id=PEER)
    routed = routed_event(validated, Resolution(True, entry), HERE)
    assert (routed.destination_platform, routed.local_delivery) == (PEER, False)
    assert routed.original == validated.original and list(routed.attachments) == list(validated.attachments)


def test_a_parcel_carries_the_document_and_the_sent_attachments_under_the_invoice_id() -> None:
    routed = _routed(
        attachments=[
            _attachment(SHA_ATT, "bon.pdf", common_pb2.FILE_ORIGIN_SUBMITTED),
            # Extracted from the invoice: it travels inside the document.
            _attachment(SHA_EMB, "inside.pdf", common_pb2.FILE_ORIGIN_EMBEDDED),
        ]
    )
    parcel = parcel_of(routed)
    assert parcel.idempotency_key == parcel.invoice_id == "inv-1"
    assert parcel.filename == "facture.xml"
    assert parcel.document.sha256 == SHA_DOC
    assert [a.filename for a in parcel.attachments] == ["bon.pdf"]
    assert parcel.streamed


@pytest.mark.parametrize(
    ("size", "attachments", "streamed"),
    [
        pytest.param(1000, [], False, id="small-alone: SubmitInvoice"),
        pytest.param(SUBMIT_MAX_BYTES, [], False, id="at-the-limit: SubmitInvoice"),
        pytest.param(SUBMIT_MAX_BYTES + 1, [], True, id="large: UploadInvoice"),
        pytest.param(
            1000, [_attachment(SHA_ATT, "a.pdf", common_pb2.FILE_ORIGIN_SUBMITTED)], True, id="attached: UploadInvoice"
        ),
        pytest.param(1000, [_attachment(SHA_EMB, "e.pdf", common_pb2.FILE_ORIGIN_EMBEDDED)], False, id="embedded-only"),
    ],
)
def test_submit_or_upload(size: int, attachments: list[common_pb2.DocumentRef], streamed: bool) -> None:
    assert parcel_of(_routed(size=size, attachments=attachments)).streamed is streamed


def test_an_invoice_is_never_sent_back_to_the_platform_it_came_from() -> None:
    routed = _routed(destination=PEER)
    routed.invoice.origin_platform = PEER
    with pytest.raises(PermanentError, match="routed back to platform peer"):
        parcel_of(routed)
    # From a third platform, on to this one's buyer's platform: sent.
    routed.invoice.origin_platform = "third"
    assert parcel_of(routed).invoice_id == "inv-1"


def test_a_routed_event_without_a_document_reference_cannot_be_delivered() -> None:
    routed = _routed()
    routed.ClearField("original")
    with pytest.raises(PermanentError, match="names no archived document"):
        parcel_of(routed)


# --- which failures are waited out ---------------------------------------------

RETRIED = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
]
REFUSED = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
]


@pytest.mark.parametrize("code", RETRIED, ids=lambda c: c.name)
def test_codes_that_may_pass_are_retried(code: grpc.StatusCode) -> None:
    assert fault_of(_rpc_error(code)) is Fault.TRANSIENT
    assert failure_reason(_rpc_error(code)) == code.name


@pytest.mark.parametrize("code", REFUSED, ids=lambda c: c.name)
def test_refusals_hold_the_invoice_with_the_destinations_reason(code: grpc.StatusCode) -> None:
    exc = _rpc_error(code, "seller SIREN unknown here")
    assert fault_of(exc) is Fault.PERMANENT
    refused = refusal(PEER, exc)
    assert isinstance(refused, DeliveryRefused) and isinstance(refused, PermanentError)
    assert str(refused) == f"platform {PEER} refused the invoice: {code.name}: seller SIREN unknown here"


def test_every_code_not_retried_holds_the_invoice() -> None:
    unlisted = set(grpc.StatusCode) - set(RETRIED) - {grpc.StatusCode.OK}
    assert all(fault_of(_rpc_error(code)) is Fault.PERMANENT for code in unlisted)


def test_an_unreachable_token_endpoint_is_waited_for_a_refusing_one_holds() -> None:
    unreachable = TokenError("cannot reach the token endpoint", transient=True)
    assert fault_of(unreachable) is Fault.TRANSIENT
    assert failure_reason(unreachable) == "token"
    refused = TokenError("the token endpoint refused the client credentials: invalid_client")
    assert fault_of(refused) is Fault.PERMANENT
    assert "no access token" in str(refusal(PEER, refused))


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        pytest.param(asyncpg.exceptions.ConnectionDoesNotExistError("gone"), Fault.TRANSIENT, id="archive-db-away"),
        pytest.param(ConnectionRefusedError(), Fault.TRANSIENT, id="network"),
        pytest.param(DocumentMissing(SHA_DOC), Fault.PERMANENT, id="file-missing"),
        pytest.param(DocumentDamaged(SHA_DOC, "chunk 0"), Fault.PERMANENT, id="file-damaged"),
        pytest.param(UnknownPlatform("elsewhere"), Fault.PERMANENT, id="unknown-platform"),
        pytest.param(PlatformsConfigError("platform peer: cannot read"), Fault.PERMANENT, id="registry"),
        pytest.param(ValueError("grpc_tls_ca_file: cannot read"), Fault.PERMANENT, id="ca-file"),
    ],
)
def test_other_failures(exc: Exception, fault: Fault) -> None:
    assert fault_of(exc) is fault
    if fault is Fault.PERMANENT:
        assert refusal(PEER, exc) is exc  # its own type and message in the dead letter


def test_the_waits_double_from_half_a_second_up_to_the_cap_for_ever() -> None:
    assert list(itertools.islice(backoff_delays(0.5, 30.0), 10)) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert list(itertools.islice(backoff_delays(2.0, 2.0), 3)) == [2.0, 2.0, 2.0]


# --- the acknowledgement -------------------------------------------------------


def _receipt(remote: str = "remote-1", duplicate: bool = False) -> ingest_pb2.SubmitInvoiceResponse:
    received_at = Timestamp()
    received_at.FromDatetime(datetime(2026, 6, 15, 10, 0, tzinfo=UTC))
    return ingest_pb2.SubmitInvoiceResponse(invoice_id=remote, received_at=received_at, duplicate=duplicate)


def test_the_delivered_event_is_made_of_the_destinations_receipt() -> None:
    routed = _routed()
    at = datetime(2026, 6, 15, 10, 0, 1, tzinfo=UTC)
    event = delivered_event(routed, _receipt(duplicate=True), attempts=3, acknowledged_at=at)
    assert event.event_id == stage_event_id("inv-1", "delivered")
    assert event.invoice == routed.invoice
    assert (event.destination_platform, event.remote_invoice_id, event.duplicate, event.attempts) == (
        PEER,
        "remote-1",
        True,
        3,
    )
    assert event.acknowledged_at.ToDatetime(tzinfo=UTC) == at
    # A redelivery of the routed record makes the same event (status dedupes on it).
    again = delivered_event(routed, _receipt(duplicate=True), attempts=1, acknowledged_at=at)
    assert again.event_id == event.event_id


def test_an_answer_without_a_receipt_is_no_acknowledgement() -> None:
    with pytest.raises(DeliveryRefused, match="without a receipt"):
        delivered_event(_routed(), _receipt(remote=""), 1, datetime.now(UTC))


def test_settings_name_the_delivery_group_and_keep_the_backoff_ordered() -> None:
    settings = _settings()
    assert settings.delivery_group == "invoicing-route-delivery"
    assert (settings.delivery_backoff_initial_seconds, settings.delivery_backoff_max_seconds) == (0.5, 30.0)
    with pytest.raises(ValueError, match="delivery_backoff_max_seconds"):
        _settings(delivery_backoff_initial_seconds=10, delivery_backoff_max_seconds=5)


# --- the stage's handler, in memory ----------------------------------------------


class _Destination:
    """Stands for PeerLinks: answers each attempt as scripted."""

    def __init__(self, *outcomes: ingest_pb2.SubmitInvoiceResponse | BaseException) -> None:
        self._outcomes = list(outcomes)
        self.parcels: list[Parcel] = []

    async def submit(
        self, peer: Peer, parcel: Parcel, _archive: object, _timeout: float
    ) -> ingest_pb2.SubmitInvoiceResponse:
        self.parcels.append(parcel)
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _peer() -> Peer:
    return Peer(
        id=PEER,
        ingest="127.0.0.1:17011",
        exchange="127.0.0.1:17014",
        token_url="https://issuer/token",
        client_id="platform-local",
        client_secret_file="/nonexistent",
        caller_client_id="platform-peer",
    )


def _stage(destination: _Destination) -> tuple[StreamHarness, list[float]]:
    settings = _settings()
    app = StreamApp(settings.delivery_group, settings)
    waits: list[float] = []

    async def pause(seconds: float) -> None:
        waits.append(seconds)

    deliverer = delivery.Deliverer(settings, destination, None, pause)  # type: ignore[arg-type]
    delivery.register(app, settings, Registry({PEER: _peer()}), deliverer)
    return StreamHarness(app), waits


async def test_a_destination_down_for_a_while_is_waited_for_then_acknowledged_once() -> None:
    destination = _Destination(
        _rpc_error(grpc.StatusCode.UNAVAILABLE),
        TokenError("cannot reach the token endpoint", transient=True),
        _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
        _receipt("remote-9"),
    )
    stream, waits = _stage(destination)
    await stream.put(topics.ROUTED, _routed().SerializeToString(), key=b"inv-1")
    [sent] = stream.sent(topics.DELIVERED)
    event = events_pb2.InvoiceDelivered.FromString(sent.value)
    assert (event.remote_invoice_id, event.attempts, sent.key) == ("remote-9", 4, b"inv-1")
    assert waits == [0.5, 1.0, 2.0]
    # The same invoice, the same key, on every attempt.
    assert {p.idempotency_key for p in destination.parcels} == {"inv-1"}
    assert stream.dead_letters() == []


async def test_local_and_refused_invoices_are_not_sent() -> None:
    destination = _Destination()
    stream, _ = _stage(destination)
    await stream.put(topics.ROUTED, _routed(destination=HERE, local=True).SerializeToString(), key=b"inv-1")
    rejected = _routed("inv-2", destination="", outcome=events_pb2.ROUTING_OUTCOME_REJECTED)
    await stream.put(topics.ROUTED, rejected.SerializeToString(), key=b"inv-2")
    assert destination.parcels == [] and stream.sent(topics.DELIVERED) == [] and stream.dead_letters() == []


async def test_a_refusal_and_an_unknown_platform_hold_the_invoice() -> None:
    destination = _Destination(_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not registered"))
    stream, waits = _stage(destination)
    await stream.put(topics.ROUTED, _routed("inv-1").SerializeToString(), key=b"inv-1")
    await stream.put(topics.ROUTED, _routed("inv-2", destination="elsewhere").SerializeToString(), key=b"inv-2")
    assert stream.sent(topics.DELIVERED) == [] and waits == []
    refused, unknown = stream.dead_letters()
    assert (refused.key, refused.error_type, refused.consumer_group) == (
        b"inv-1",
        "DeliveryRefused",
        "invoicing-route-delivery",
    )
    assert "PERMISSION_DENIED: not registered" in refused.error
    assert (unknown.key, unknown.error_type) == (b"inv-2", "UnknownPlatform")
    assert "'elsewhere'" in unknown.error


async def test_waiting_stops_at_once_when_the_service_stops() -> None:
    settings = _settings()
    app = StreamApp(settings.delivery_group, settings)
    pause = app.retry_pause
    await app.stop()
    # Given up, as the drain would after its timeout: not committed, not dead-lettered.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pause(3600), timeout=5)
