"""Directory entries: checks naming the field, identifiers, index, records."""

from __future__ import annotations

import random
from datetime import date

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from stdnum.fr import siren as stdnum_siren
from stdnum.fr import siret as stdnum_siret

from invoicing_route.codec import Removal, decode_record, entry_change, entry_key, service_change, service_key
from invoicing_route.directory import (
    DirectoryError,
    DirectoryIndex,
    check_entry,
    check_service,
    is_siren,
    is_siret,
    parse_entry_id,
)


def test_checksums_agree_with_python_stdnum() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        siren = str(rng.randrange(10**8, 10**9))
        assert is_siren(siren) == stdnum_siren.is_valid(siren), siren
        for siret in (siren + f"{rng.randrange(10**5):05d}", "356000000" + f"{rng.randrange(10**5):05d}"):
            assert is_siret(siret) == stdnum_siret.is_valid(siret), siret


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"siren": "512345678"}, "siren", "checksum"),
        ({"siren": "51234567"}, "siren", "9 digits"),
        ({"siren": ""}, "siren", "empty"),
        ({"siret": "51234567900018"}, "siret", "checksum"),
        ({"siret": "73282932000074"}, "siret", "not an establishment of siren 512345679"),
        ({"valid_from": "2026-01-02", "valid_to": "2026-01-01"}, "valid_to", "before valid_from"),
        ({"valid_from": "2026-13-01"}, "valid_from", "not a date"),
        ({"platform_id": "  "}, "platform_id", "empty"),
        ({"routing_code": "R1"}, "routing_code", "needs a siret"),
        ({"siret": "51234567900017", "suffix": "S"}, "suffix", "SIREN-level"),
        ({"suffix": "A_B"}, "suffix", ""),
    ],
)
def test_bad_entries_name_the_field(fields: dict[str, str], field: str, words: str) -> None:
    values = {"siren": "512345679", "platform_id": "local", **fields}
    with pytest.raises(DirectoryError) as refused:
        check_entry(**values)  # type: ignore[arg-type]
    assert refused.value.field == field
    assert words in refused.value.message
    assert str(refused.value).startswith(f"{field}: ")


def test_entry_ids_round_trip() -> None:
    plain = check_entry(siren="512345679", siret="51234567900017", routing_code="ACH-1", platform_id="p")
    assert plain.entry_id == "512345679_51234567900017_ACH-1"
    dated = check_entry(siren="512345679", suffix="FACT", platform_id="p", valid_from="2026-03-01")
    assert dated.entry_id == "512345679_FACT@2026-03-01"
    for entry in (plain, dated):
        assert parse_entry_id(entry.entry_id) == (entry.address, entry.valid_from)
    with pytest.raises(DirectoryError) as bad:
        parse_entry_id("nope")
    assert bad.value.field == "entry_id"


def test_bad_services_name_the_field() -> None:
    with pytest.raises(DirectoryError) as empty:
        check_service(siren="512345679", code=" ")
    assert empty.value.field == "service_code"
    with pytest.raises(DirectoryError) as foreign:
        check_service(siren="512345679", siret="73282932000074", code="S")
    assert foreign.value.field == "siret"


def test_topic_records_rebuild_the_same_index() -> None:
    now = Timestamp(seconds=1_800_000_000)
    entry = check_entry(siren="512345679", siret="51234567900017", platform_id="pdp", requires_service_code=True,
                        valid_from="2026-01-01", valid_to="2026-12-31")  # fmt: skip
    service = check_service(siren="512345679", siret="51234567900017", code="S1", requires_commitment_number=True)
    rebuilt = decode_record(entry_key(entry.entry_id), entry_change(entry, now, version=4))
    assert rebuilt == check_entry(siren="512345679", siret="51234567900017", platform_id="pdp",
                                  requires_service_code=True, valid_from="2026-01-01", valid_to="2026-12-31",
                                  version=4)  # fmt: skip
    assert decode_record(service_key(service.unit, service.code), service_change(service, now)) == service
    gone = decode_record(entry_key(entry.entry_id), None)
    assert isinstance(gone, Removal) and (gone.address, gone.valid_from) == (entry.address, entry.valid_from)
    gone_service = decode_record(service_key(service.unit, service.code), None)
    assert isinstance(gone_service, Removal) and (gone_service.address, gone_service.code) == (service.unit, "S1")


def test_index_keeps_periods_apart_and_removes_them_one_by_one() -> None:
    first = check_entry(siren="512345679", platform_id="a", valid_to="2026-06-30")
    second = check_entry(siren="512345679", platform_id="b", valid_from="2026-07-01")
    index = DirectoryIndex.of([first, second])
    assert len(index) == 2 and index.addresses == 1
    assert index.in_force("512345679", date(2026, 6, 30)) == first
    assert index.in_force("512345679", date(2026, 7, 1)) == second
    index.put_entry(check_entry(siren="512345679", platform_id="c", valid_from="2026-07-01"))
    assert len(index) == 2 and index.in_force("512345679", date(2026, 8, 1)).platform_id == "c"  # type: ignore[union-attr]
    index.remove_entry("512345679", date.min)
    assert index.in_force("512345679", date(2026, 6, 1)) is None
