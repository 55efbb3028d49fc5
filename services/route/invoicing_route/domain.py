"""Pure routing decisions: which directory entry an invoice addresses, and
whether the buyer's B2G requirements are met."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import NamedTuple

from invoicing.v1 import common_pb2, events_pb2

from invoicing_common.ids import stage_event_id
from invoicing_route.directory import DirectoryIndex, Entry, Service, address_of, is_siren, is_siret

SCHEME_ADDRESS = "0225"  # SIREN-based electronic address (BT-49)
SCHEME_SIRET = "0009"
SCHEME_SIREN = "0002"

REJ_ADR = "REJ_ADR"
REJ_CONT_B2G = "REJ_CONT_B2G"

_IDS = "BT-46/BT-47"


class Level(StrEnum):
    """How specific the matched entry is, most specific first."""

    SIRET_ROUTING_CODE = "SIRET_ROUTING_CODE"
    SIRET = "SIRET"
    SIREN_SUFFIX = "SIREN_SUFFIX"
    SIREN = "SIREN"


@dataclass(frozen=True)
class BuyerIdentifiers:
    """What routing reads from the business summary, and nothing else."""

    endpoint: tuple[str, str] | None = None  # BT-49 (value, scheme)
    ids: tuple[tuple[str, str], ...] = ()  # BT-46 / BT-47 (value, scheme)
    buyer_reference: str = ""  # BT-10: service code
    purchase_order_reference: str = ""  # BT-13: commitment number

    @classmethod
    def from_summary(cls, summary: common_pb2.InvoiceSummary) -> BuyerIdentifiers:
        endpoint = summary.buyer_endpoint
        return cls(
            endpoint=(endpoint.value, endpoint.scheme) if endpoint.value else None,
            ids=tuple((i.value, i.scheme) for i in summary.buyer_ids),
            buyer_reference=summary.buyer_reference,
            purchase_order_reference=summary.purchase_order_reference,
        )

    def described(self) -> str:
        given = []
        if self.endpoint is not None:
            given.append(f"BT-49 {self.endpoint[1]}:{self.endpoint[0]}")
        given += [f"{_IDS} {scheme}:{value}" for value, scheme in self.ids]
        return ", ".join(given)


class Candidate(NamedTuple):  # a tuple: cheap to build on every invoice
    level: Level
    address: str
    source: str


def candidates(buyer: BuyerIdentifiers) -> tuple[list[Candidate], list[str]]:
    """Addresses to try, most specific first, and notes on identifiers that
    could not be used."""
    notes: list[str] = []
    sirets: list[tuple[str, str]] = []
    sirens: list[tuple[str, str]] = []
    suffixes: list[tuple[str, str, str]] = []
    routing_codes: list[str] = []
    if buyer.endpoint is not None:
        value, scheme = buyer.endpoint[0].strip(), buyer.endpoint[1].strip()
        if scheme == SCHEME_ADDRESS:
            parts = value.split("_", 2)
            if not is_siren(parts[0]):
                notes.append(f"BT-49 {scheme}:{value}: {parts[0]!r} is not a valid SIREN")
            else:
                sirens.append((parts[0], "BT-49"))
                if len(parts) >= 2:
                    if len(parts[1]) == 14 and parts[1].isdigit():
                        sirets.append((parts[1], "BT-49"))
                    else:
                        suffixes.append((parts[0], parts[1], "BT-49"))
                    if len(parts) == 3 and parts[2]:
                        routing_codes.append(parts[2])
        elif scheme == SCHEME_SIRET:
            sirets.append((value, "BT-49"))
        elif scheme == SCHEME_SIREN:
            sirens.append((value, "BT-49"))
        else:
            notes.append(f"BT-49 {scheme}:{value}: scheme {scheme!r} is not a French directory address")
    for value, scheme in buyer.ids:
        value, scheme = value.strip(), scheme.strip()
        if scheme == SCHEME_SIRET:
            sirets.append((value, _IDS))
        elif scheme == SCHEME_SIREN:
            sirens.append((value, _IDS))
    valid_sirets: list[tuple[str, str]] = []
    checked: set[str] = set()
    for siret, source in sirets:
        if is_siret(siret):  # also checks the SIREN it starts with
            valid_sirets.append((siret, source))
            sirens.append((siret[:9], f"SIREN of {source} SIRET {siret}"))
            checked.add(siret[:9])
        else:
            notes.append(f"{source} SIRET {siret!r} is not a valid SIRET")
    found: list[Candidate] = []
    for code in routing_codes:
        for siret, source in valid_sirets:
            found.append(
                Candidate(Level.SIRET_ROUTING_CODE, address_of(siret[:9], siret, code), f"{source} + BT-49 code {code}")
            )
    found += [Candidate(Level.SIRET, address_of(siret[:9], siret), source) for siret, source in valid_sirets]
    found += [Candidate(Level.SIREN_SUFFIX, address_of(siren, suffix=sfx), src) for siren, sfx, src in suffixes]
    for siren, source in sirens:
        if siren in checked or is_siren(siren):
            checked.add(siren)
            found.append(Candidate(Level.SIREN, siren, source))
        else:
            notes.append(f"{source} SIREN {siren!r} is not a valid SIREN")
    seen: set[str] = set()
    unique = []
    for candidate in found:
        if candidate.address not in seen:
            seen.add(candidate.address)
            unique.append(candidate)
    return unique, notes


@dataclass(frozen=True)
class Resolution:
    routed: bool
    entry: Entry | None = None
    level: Level | None = None
    service: Service | None = None
    reason_code: str = ""
    reason_text: str = ""
    trace: list[str] = field(default_factory=list)

    def destination(self) -> str:
        return self.entry.platform_id if self.routed and self.entry is not None else ""


def _why_not(versions: Iterable[Entry], day: date) -> str:
    described = []
    for e in versions:
        if not e.active:
            described.append(f"{e.entry_id} inactive")
        else:
            end = "" if e.valid_to == date.max else e.valid_to.isoformat()
            start = "" if e.valid_from == date.min else e.valid_from.isoformat()
            described.append(f"{e.entry_id} valid {start or '…'}..{end or '…'}")
    return f"no entry in force on {day.isoformat()} ({'; '.join(described)})" if described else "no entry"


def _service_of(index: DirectoryIndex, entry: Entry, code: str) -> Service | None:
    """The entry's unit service, else (for an establishment) its company's."""
    service = index.service(entry.unit, code)
    if service is None:
        parts = entry.parts
        if parts.siret:
            service = index.service(parts.siren, code)
    return service


def _requirements(index: DirectoryIndex, entry: Entry, buyer: BuyerIdentifiers) -> tuple[Service | None, str]:
    """(service used, rejection text or "") for the B2G checks."""
    code = buyer.buyer_reference.strip()
    service = _service_of(index, entry, code) if code else None
    if entry.requires_service_code:
        if not code:
            return None, (
                f"BT-10 (buyer reference, service code) is empty; buyer {entry.entry_id} requires a service code"
            )
        if service is None:
            return None, f"BT-10 service code {code!r} is unknown for buyer {entry.entry_id}"
        if not service.active:
            return service, f"BT-10 service code {code!r} is inactive for buyer {entry.entry_id}"
    elif service is not None and not service.active:
        service = None
    if not buyer.purchase_order_reference.strip():
        if entry.requires_commitment_number:
            return service, (
                f"BT-13 (purchase order reference, commitment number) is empty; "
                f"buyer {entry.entry_id} requires a commitment number"
            )
        if service is not None and service.requires_commitment_number:
            return service, (
                f"BT-13 (purchase order reference, commitment number) is empty; "
                f"service {service.code!r} (BT-10) of buyer {entry.entry_id} requires a commitment number"
            )
    return service, ""


def resolve(index: DirectoryIndex, buyer: BuyerIdentifiers, day: date) -> Resolution:
    """The most specific entry in force on ``day`` for ``buyer``, then its
    B2G checks; a plain function of the index, the identifiers and the day."""
    found, notes = candidates(buyer)
    trace = list(notes)
    for candidate in found:
        entry = index.in_force(candidate.address, day)
        where = f"{candidate.level.value} {candidate.address} ({candidate.source})"
        if entry is None:
            trace.append(f"{where}: {_why_not(index.versions(candidate.address), day)}")
            continue
        trace.append(f"{where}: entry {entry.entry_id} on platform {entry.platform_id}")
        service, problem = _requirements(index, entry, buyer)
        if problem:
            trace.append(problem)
            return Resolution(False, entry, candidate.level, service, REJ_CONT_B2G, problem, trace)
        return Resolution(True, entry, candidate.level, service, trace=trace)
    given = buyer.described()
    if not found:
        text = (
            f"no usable buyer address: {given}" if given
            else "no buyer address: BT-49 is empty and BT-46/BT-47 carry no SIREN (0002) or SIRET (0009)"
        )  # fmt: skip
    else:
        text = f"no active directory entry for the buyer ({given})"
    return Resolution(False, reason_code=REJ_ADR, reason_text=text, trace=trace)


def routed_event(
    validated: events_pb2.InvoiceValidated, resolution: Resolution, platform_id: str
) -> events_pb2.InvoiceRouted:
    event = events_pb2.InvoiceRouted(
        event_id=stage_event_id(validated.invoice.invoice_id, "routed"),
        invoice=validated.invoice,
        summary=validated.summary,
        directory_entry_id=resolution.entry.entry_id if resolution.entry is not None else "",
        # What the delivery stage sends on when the buyer is on another platform.
        original=validated.original,
        attachments=validated.attachments,
    )
    if resolution.routed:
        destination = resolution.destination()
        event.outcome = events_pb2.ROUTING_OUTCOME_ROUTED
        event.destination_platform = destination
        event.local_delivery = destination == platform_id
    else:
        event.outcome = events_pb2.ROUTING_OUTCOME_REJECTED
        event.reason.code, event.reason.text = resolution.reason_code, resolution.reason_text
    return event
