"""Directory entries and services to and from protobuf and topic records."""

from __future__ import annotations

import sys
from datetime import date, datetime
from functools import lru_cache

from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import directory_pb2

from invoicing_route.directory import (
    FOREVER,
    SINCE_ALWAYS,
    DirectoryError,
    Entry,
    Service,
    check_entry,
    check_service,
    entry_id_of,
    parse_entry_id,
)

ENTRY_KEY_PREFIX = "entry/"
SERVICE_KEY_PREFIX = "service/"


@lru_cache(maxsize=65536)
def _day_text(day: date, empty: date) -> str:
    return "" if day == empty else day.isoformat()


@lru_cache(maxsize=65536)
def _day(text: str, empty: date) -> date:
    """Dates repeat across entries: one object per distinct date."""
    return date.fromisoformat(text) if text else empty


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def entry_from_proto(message: directory_pb2.DirectoryEntry) -> Entry:
    """A checked entry from a request; DirectoryError names the field."""
    return check_entry(
        siren=message.siren,
        siret=message.siret,
        routing_code=message.routing_code,
        suffix=message.suffix,
        platform_id=message.platform_id,
        requires_service_code=message.requires_service_code,
        requires_commitment_number=message.requires_commitment_number,
        valid_from=message.valid_from,
        valid_to=message.valid_to,
        active=message.active if message.HasField("active") else True,
    )


def entry_to_proto(entry: Entry, updated_at: datetime | None = None) -> directory_pb2.DirectoryEntry:
    parts = entry.parts
    message = directory_pb2.DirectoryEntry(
        entry_id=entry.entry_id,
        siren=parts.siren,
        siret=parts.siret,
        routing_code=parts.routing_code,
        suffix=parts.suffix,
        platform_id=entry.platform_id,
        requires_service_code=entry.requires_service_code,
        requires_commitment_number=entry.requires_commitment_number,
        valid_from=_day_text(entry.valid_from, SINCE_ALWAYS),
        valid_to=_day_text(entry.valid_to, FOREVER),
        active=entry.active,
        version=entry.version,
    )
    if updated_at is not None:
        message.updated_at.CopyFrom(timestamp(updated_at))
    return message


def service_from_proto(message: directory_pb2.BuyerService) -> Service:
    return check_service(
        siren=message.siren,
        siret=message.siret,
        code=message.code,
        name=message.name,
        active=message.active if message.HasField("active") else True,
        requires_commitment_number=message.requires_commitment_number,
    )


def service_to_proto(service: Service, updated_at: datetime | None = None) -> directory_pb2.BuyerService:
    parts = service.parts
    message = directory_pb2.BuyerService(
        siren=parts.siren,
        siret=parts.siret,
        code=service.code,
        name=service.name,
        active=service.active,
        requires_commitment_number=service.requires_commitment_number,
        version=service.version,
    )
    if updated_at is not None:
        message.updated_at.CopyFrom(timestamp(updated_at))
    return message


def entry_key(entry_id: str) -> bytes:
    return (ENTRY_KEY_PREFIX + entry_id).encode()


def service_key(unit: str, code: str) -> bytes:
    return f"{SERVICE_KEY_PREFIX}{unit}/{code}".encode()


def entry_change(entry: Entry, changed_at: Timestamp, version: int | None = None) -> bytes:
    """The topic value for ``entry`` (at ``version`` when given); attribute by
    attribute, because this runs for every imported row."""
    parts = entry.parts
    change = directory_pb2.DirectoryChange(changed_at=changed_at)
    message = change.entry
    message.entry_id = entry_id_of(entry.address, entry.valid_from)
    message.siren = parts.siren
    message.siret = parts.siret
    message.routing_code = parts.routing_code
    message.suffix = parts.suffix
    message.platform_id = entry.platform_id
    message.requires_service_code = entry.requires_service_code
    message.requires_commitment_number = entry.requires_commitment_number
    message.valid_from = _day_text(entry.valid_from, SINCE_ALWAYS)
    message.valid_to = _day_text(entry.valid_to, FOREVER)
    message.active = entry.active
    message.version = entry.version if version is None else version
    message.updated_at.CopyFrom(changed_at)
    return change.SerializeToString()


def service_change(service: Service, changed_at: Timestamp) -> bytes:
    change = directory_pb2.DirectoryChange(service=service_to_proto(service), changed_at=changed_at)
    change.service.updated_at.CopyFrom(changed_at)
    return change.SerializeToString()


def _stored_entry(message: directory_pb2.DirectoryEntry) -> Entry:
    """An entry as published: already checked when written, so rebuilt
    without re-validation (this runs for every record at start)."""
    siren, siret, routing_code, suffix = message.siren, message.siret, message.routing_code, message.suffix
    if siret:
        address = f"{siren}_{siret}_{routing_code}" if routing_code else f"{siren}_{siret}"
    else:
        address = f"{siren}_{suffix}" if suffix else siren
    return Entry(
        address=address,
        valid_from=_day(message.valid_from, SINCE_ALWAYS),
        valid_to=_day(message.valid_to, FOREVER),
        platform_id=sys.intern(message.platform_id),
        requires_service_code=message.requires_service_code,
        requires_commitment_number=message.requires_commitment_number,
        active=message.active if message.HasField("active") else True,
        version=message.version,
    )


def _stored_service(message: directory_pb2.BuyerService) -> Service:
    unit = f"{message.siren}_{message.siret}" if message.siret else message.siren
    return Service(
        unit=unit,
        code=message.code,
        name=message.name,
        active=message.active if message.HasField("active") else True,
        requires_commitment_number=message.requires_commitment_number,
        version=message.version,
    )


# What a topic record means for the index.
Upsert = Entry | Service


class Removal:
    __slots__ = ("address", "code", "valid_from")

    def __init__(self, address: str, valid_from: date | None = None, code: str | None = None) -> None:
        self.address = address
        self.valid_from = valid_from
        self.code = code


def decode_record(key: bytes | None, value: bytes | None) -> Upsert | Removal:
    """The meaning of one directory topic record; DirectoryError if it has none."""
    if key is None:
        raise DirectoryError("key", "directory record without key")
    text = key.decode()
    if value is None:
        if text.startswith(ENTRY_KEY_PREFIX):
            address, valid_from = parse_entry_id(text[len(ENTRY_KEY_PREFIX) :])
            return Removal(address, valid_from=valid_from)
        if text.startswith(SERVICE_KEY_PREFIX):
            unit, _, code = text[len(SERVICE_KEY_PREFIX) :].partition("/")
            return Removal(unit, code=code)
        raise DirectoryError("key", f"unknown directory key {text!r}")
    change = directory_pb2.DirectoryChange.FromString(value)
    kind = change.WhichOneof("record")
    if kind == "entry":
        return _stored_entry(change.entry)
    if kind == "service":
        return _stored_service(change.service)
    raise DirectoryError("value", f"directory record {text!r} holds neither an entry nor a service")
