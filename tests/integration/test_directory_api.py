"""DirectoryService on the running route service: bad input, changes seen by
routing without restart, import with bad rows, as-of lookups, the topic."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import common_pb2, directory_pb2, directory_pb2_grpc, events_pb2

from invoicing_common import topics
from invoicing_route.directory import DirectoryIndex, is_siren, is_siret
from invoicing_route.feed import DirectoryFeed
from tests.support import Stack, demo_channel, records_for_key

pytestmark = pytest.mark.stack

# Random, not clock-based: this module is imported twice (by pytest and by
# tests/e2e/test_routing.py), and two clock-seeded counters collided.
_random = random.SystemRandom()


def fresh_siren() -> str:
    """A valid SIREN that no test has used (random 8-digit payload: 9e7 choices)."""
    while True:
        payload = f"{_random.randrange(10**7, 10**8):08d}"
        for digit in "0123456789":
            if is_siren(payload + digit) and payload[0] != "0":
                return payload + digit


def siret_of(siren: str) -> str:
    return next(f"{siren}{n:05d}" for n in range(10, 100_000) if is_siret(f"{siren}{n:05d}"))


@pytest.fixture
async def directory(stack: Stack) -> AsyncIterator[directory_pb2_grpc.DirectoryServiceStub]:
    async with demo_channel(stack.route) as channel:
        yield directory_pb2_grpc.DirectoryServiceStub(channel)


def _resolve_request(siren: str, **kwargs: object) -> directory_pb2.ResolveRequest:
    return directory_pb2.ResolveRequest(
        buyer_endpoint=common_pb2.PartyIdentifier(value=siren, scheme="0225"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_bad_entries_are_refused_naming_the_field_and_write_nothing(
    directory: directory_pb2_grpc.DirectoryServiceStub,
) -> None:
    siren = fresh_siren()
    bad = [
        (directory_pb2.DirectoryEntry(siren=siren[:8] + str((int(siren[8]) + 1) % 10), platform_id="p"), "siren"),
        (directory_pb2.DirectoryEntry(siren=siren, siret="51234567900017", platform_id="p"), "siret"),
        (directory_pb2.DirectoryEntry(siren=siren, platform_id="p", valid_from="2026-02-01", valid_to="2026-01-01"),
         "valid_to"),
        (directory_pb2.DirectoryEntry(siren=siren, platform_id=""), "platform_id"),
    ]  # fmt: skip
    for entry, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await directory.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(f"{field}: ")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await directory.Get(directory_pb2.GetRequest(entry_id=siren), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await directory.List(directory_pb2.ListRequest(siren=siren), timeout=10)
    assert not listed.entries


async def test_changes_reach_routing_without_restart(
    stack: Stack, directory: directory_pb2_grpc.DirectoryServiceStub
) -> None:
    siren = fresh_siren()
    assert (await directory.Resolve(_resolve_request(siren), timeout=10)).reason.code == "REJ_ADR"

    started = time.monotonic()
    upserted = await directory.Upsert(
        directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id="pdp-a")), timeout=10
    )
    decision = await directory.Resolve(_resolve_request(siren), timeout=10)
    assert time.monotonic() - started < 1.0
    assert upserted.changed and upserted.entry.entry_id == siren and upserted.entry.version == 1
    assert decision.outcome == events_pb2.ROUTING_OUTCOME_ROUTED
    assert decision.destination_platform == "pdp-a" and decision.entry.entry_id == siren
    assert decision.matched_level == "SIREN" and not decision.local_delivery

    again = await directory.Upsert(
        directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id="pdp-a")), timeout=10
    )
    assert not again.changed and again.entry.version == 1

    # A second "instance": a fresh feed built from the topic has the same view.
    other = DirectoryFeed(stack.kafka, DirectoryIndex(), client_id="test-second-instance")
    await other.start()
    try:
        assert other.index.in_force(siren, datetime.now(UTC).date()) is not None
    finally:
        await other.stop()

    await directory.Upsert(
        directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id=stack.platform_id)),
        timeout=10,
    )
    local = await directory.Resolve(_resolve_request(siren), timeout=10)
    assert local.local_delivery and local.destination_platform == stack.platform_id and local.entry.version == 2

    assert (await directory.Delete(directory_pb2.DeleteRequest(entry_id=siren), timeout=10)).deleted
    gone = await directory.Resolve(_resolve_request(siren), timeout=10)
    assert gone.outcome == events_pb2.ROUTING_OUTCOME_REJECTED and gone.reason.code == "REJ_ADR"
    assert "BT-49" in gone.reason.text and siren in gone.reason.text

    records = await records_for_key(stack.kafka, topics.DIRECTORY, f"entry/{siren}")
    assert [r.value is None for r in records] == [False, False, True]  # two versions, then a tombstone
    assert len({r.partition for r in records}) == 1


async def test_b2g_requirements_follow_services(directory: directory_pb2_grpc.DirectoryServiceStub) -> None:
    siren = fresh_siren()
    siret = siret_of(siren)
    entry = directory_pb2.DirectoryEntry(siren=siren, siret=siret, platform_id="chorus", requires_service_code=True)
    await directory.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=10)
    ids = [common_pb2.PartyIdentifier(value=siret, scheme="0009")]
    unknown = await directory.Resolve(directory_pb2.ResolveRequest(buyer_ids=ids, buyer_reference="SVC"), timeout=10)
    assert unknown.reason.code == "REJ_CONT_B2G" and "BT-10" in unknown.reason.text and "SVC" in unknown.reason.text
    service = directory_pb2.BuyerService(siren=siren, siret=siret, code="SVC", requires_commitment_number=True)
    await directory.UpsertService(directory_pb2.UpsertServiceRequest(service=service), timeout=10)
    no_po = await directory.Resolve(directory_pb2.ResolveRequest(buyer_ids=ids, buyer_reference="SVC"), timeout=10)
    assert no_po.reason.code == "REJ_CONT_B2G" and "BT-13" in no_po.reason.text
    ok = await directory.Resolve(
        directory_pb2.ResolveRequest(buyer_ids=ids, buyer_reference="SVC", purchase_order_reference="EJ-9"), timeout=10
    )
    assert ok.outcome == events_pb2.ROUTING_OUTCOME_ROUTED and ok.destination_platform == "chorus"
    got = await directory.Get(directory_pb2.GetRequest(entry_id=f"{siren}_{siret}"), timeout=10)
    assert [s.code for s in got.services] == ["SVC"]


async def test_as_of_lookups_see_the_entry_then_in_force(directory: directory_pb2_grpc.DirectoryServiceStub) -> None:
    siren = fresh_siren()
    await directory.Upsert(
        directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id="first")), timeout=10
    )
    between = Timestamp()
    between.FromDatetime(datetime.now(UTC))
    await directory.Upsert(
        directory_pb2.UpsertRequest(entry=directory_pb2.DirectoryEntry(siren=siren, platform_id="second")), timeout=10
    )
    before = Timestamp()
    before.FromDatetime(datetime(2000, 1, 1, tzinfo=UTC))

    then = await directory.Resolve(_resolve_request(siren, as_of=between), timeout=10)
    now = await directory.Resolve(_resolve_request(siren), timeout=10)
    never = await directory.Resolve(_resolve_request(siren, as_of=before), timeout=10)
    assert then.destination_platform == "first" and then.entry.version == 1
    assert now.destination_platform == "second" and now.entry.version == 2
    assert never.reason.code == "REJ_ADR"
    old = await directory.Get(directory_pb2.GetRequest(entry_id=siren, as_of=between), timeout=10)
    assert old.entry.platform_id == "first"


async def test_import_reports_bad_rows_and_writes_only_the_good_ones(
    directory: directory_pb2_grpc.DirectoryServiceStub,
) -> None:
    good = [fresh_siren() for _ in range(3)]
    bad_siren = fresh_siren()
    rows = [
        (2, directory_pb2.DirectoryEntry(siren=good[0], platform_id="p1")),
        (3, directory_pb2.DirectoryEntry(siren=bad_siren, siret="51234567900017", platform_id="p1")),
        (4, directory_pb2.DirectoryEntry(siren=good[1], platform_id="p2", valid_from="2026-01-01")),
        (5, directory_pb2.DirectoryEntry(siren=bad_siren, platform_id="")),
        (6, directory_pb2.DirectoryEntry(siren=good[2], platform_id="p3")),
    ]

    async def requests() -> AsyncIterator[directory_pb2.ImportRequest]:
        for line, entry in rows:  # one row per message: batches are independent
            yield directory_pb2.ImportRequest(entries=[directory_pb2.EntryRow(line=line, entry=entry)])

    reply = await directory.Import(requests(), timeout=60)
    assert (reply.received, reply.written, reply.rejected_count) == (5, 3, 2)
    assert [(r.line, r.field) for r in reply.rejected] == [(3, "siret"), (5, "platform_id")]
    for siren in good:
        assert (await directory.List(directory_pb2.ListRequest(siren=siren), timeout=10)).entries
    assert not (await directory.List(directory_pb2.ListRequest(siren=bad_siren), timeout=10)).entries
    decision = await directory.Resolve(_resolve_request(good[2]), timeout=10)
    assert decision.destination_platform == "p3"


async def test_list_pages_through_entries(directory: directory_pb2_grpc.DirectoryServiceStub) -> None:
    siren = fresh_siren()
    for suffix in ("A", "B", "C"):
        entry = directory_pb2.DirectoryEntry(siren=siren, suffix=suffix, platform_id="p")
        await directory.Upsert(directory_pb2.UpsertRequest(entry=entry), timeout=10)
    seen: list[str] = []
    token = ""
    while True:
        page = await directory.List(directory_pb2.ListRequest(siren=siren, page_size=2, page_token=token), timeout=10)
        seen += [e.entry_id for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"{siren}_A", f"{siren}_B", f"{siren}_C"]
