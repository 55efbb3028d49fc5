"""The buyer directory, pure: entries, their checks, addresses and the
in-memory index that routing reads.

An entry is identified by its address and the first day of its validity.
The address is what a supplier writes in BT-49 (scheme 0225), one of

    SIREN                      a company
    SIREN_SIRET                an establishment
    SIREN_SIRET_ROUTINGCODE    a routing code under an establishment
    SIREN_SUFFIX               a company-level addressing suffix

so one dict keyed by address serves all four levels of lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

SINCE_ALWAYS = date.min
FOREVER = date.max
MAX_ROUTING_CODE_CHARS = 100
MAX_SUFFIX_CHARS = 35
MAX_PLATFORM_ID_CHARS = 100
MAX_SERVICE_CODE_CHARS = 100
MAX_SERVICE_NAME_CHARS = 200

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
# Each digit replaced by the digit sum of its double, for the Luhn checksum.
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")
# La Poste establishments share SIREN 356000000 and use a sum-of-digits rule.
_LA_POSTE = "356000000"


class DirectoryError(ValueError):
    """A directory entry or service that can never be stored as given."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _is_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of an ASCII digit string. Checked against python-stdnum
    in the unit tests; written with string operations because it runs for
    every imported row (a byte sum costs far less than a digit loop)."""
    backwards = digits[::-1]
    kept, doubled = backwards[0::2], backwards[1::2].translate(_LUHN_DOUBLE)
    return (sum(kept.encode()) + sum(doubled.encode()) - 48 * len(digits)) % 10 == 0


def is_siren(value: str) -> bool:
    return len(value) == 9 and _is_digits(value) and luhn_valid(value)


def is_siret(value: str) -> bool:
    if len(value) != 14 or not _is_digits(value):
        return False
    if value.startswith(_LA_POSTE) and value != "35600000000048":
        return (sum(value.encode()) - 48 * 14) % 5 == 0
    return luhn_valid(value) and is_siren(value[:9])


def check_siren(value: str, field: str = "siren") -> str:
    if not value:
        raise DirectoryError(field, "is empty")
    if len(value) != 9 or not _is_digits(value):
        raise DirectoryError(field, f"{value!r} is not 9 digits")
    if not luhn_valid(value):
        raise DirectoryError(field, f"{value} has a wrong checksum")
    return value


def check_siret(value: str, siren: str, field: str = "siret") -> str:
    if len(value) != 14 or not _is_digits(value):
        raise DirectoryError(field, f"{value!r} is not 14 digits")
    if not is_siret(value):
        raise DirectoryError(field, f"{value} has a wrong checksum")
    if not value.startswith(siren):
        raise DirectoryError(field, f"{value} is not an establishment of siren {siren}")
    return value


def parse_day(value: str, field: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise DirectoryError(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


def address_of(siren: str, siret: str = "", routing_code: str = "", suffix: str = "") -> str:
    if siret:
        return f"{siren}_{siret}_{routing_code}" if routing_code else f"{siren}_{siret}"
    return f"{siren}_{suffix}" if suffix else siren


@dataclass(frozen=True, slots=True)
class Address:
    siren: str
    siret: str = ""
    routing_code: str = ""
    suffix: str = ""


def split_address(address: str) -> Address:
    """Inverse of ``address_of`` for a stored address (no checks)."""
    parts = address.split("_", 2)
    if len(parts) == 1:
        return Address(parts[0])
    if len(parts[1]) == 14 and parts[1].isdigit():
        return Address(parts[0], siret=parts[1], routing_code=parts[2] if len(parts) == 3 else "")
    return Address(parts[0], suffix="_".join(parts[1:]))


def entry_id_of(address: str, valid_from: date) -> str:
    return address if valid_from == SINCE_ALWAYS else f"{address}@{valid_from.isoformat()}"


def parse_entry_id(entry_id: str) -> tuple[str, date]:
    """(address, valid_from) of an entry id; DirectoryError("entry_id") if malformed."""
    address, _, day = entry_id.partition("@")
    parts = split_address(address)
    if not is_siren(parts.siren) or (parts.siret and not is_siret(parts.siret)):
        raise DirectoryError("entry_id", f"{entry_id!r} is not an entry id (SIREN[_SIRET[_CODE]|_SUFFIX][@DATE])")
    try:
        valid_from = date.fromisoformat(day) if day else SINCE_ALWAYS
    except ValueError:
        raise DirectoryError("entry_id", f"{entry_id!r}: {day!r} is not a date") from None
    return address, valid_from


@dataclass(frozen=True, slots=True)
class Entry:
    """One version of an addressable unit; slots keep 1M of them small."""

    address: str
    valid_from: date
    valid_to: date
    platform_id: str
    requires_service_code: bool = False
    requires_commitment_number: bool = False
    active: bool = True
    version: int = 1

    @property
    def entry_id(self) -> str:
        return entry_id_of(self.address, self.valid_from)

    @property
    def parts(self) -> Address:
        return split_address(self.address)

    @property
    def unit(self) -> str:
        """Address of the unit whose services apply: SIREN or SIREN_SIRET."""
        parts = self.parts
        return address_of(parts.siren, parts.siret)

    def in_force(self, day: date) -> bool:
        return self.active and self.valid_from <= day <= self.valid_to


def check_entry(
    *,
    siren: str,
    siret: str = "",
    routing_code: str = "",
    suffix: str = "",
    platform_id: str,
    requires_service_code: bool = False,
    requires_commitment_number: bool = False,
    valid_from: str = "",
    valid_to: str = "",
    active: bool = True,
    version: int = 1,
) -> Entry:
    """An entry from raw fields, or DirectoryError naming the first bad field."""
    siren = check_siren(siren.strip())
    siret = siret.strip()
    if siret:
        check_siret(siret, siren)
    routing_code = routing_code.strip()
    if routing_code:
        if not siret:
            raise DirectoryError("routing_code", "a routing code needs a siret")
        if len(routing_code) > MAX_ROUTING_CODE_CHARS or _TOKEN.fullmatch(routing_code) is None:
            raise DirectoryError(
                "routing_code",
                f"{routing_code!r} must be 1-{MAX_ROUTING_CODE_CHARS} letters, digits, '.', '_' or '-'",
            )
    suffix = suffix.strip()
    if suffix:
        if siret:
            raise DirectoryError("suffix", "a suffix applies to a SIREN-level entry, not with a siret")
        if len(suffix) > MAX_SUFFIX_CHARS or "_" in suffix or _TOKEN.fullmatch(suffix) is None:
            raise DirectoryError("suffix", f"{suffix!r} must be 1-{MAX_SUFFIX_CHARS} letters, digits, '.' or '-'")
        if len(suffix) == 14 and suffix.isdigit():
            raise DirectoryError("suffix", f"{suffix!r} would read as a SIRET")
    platform_id = platform_id.strip()
    if not platform_id:
        raise DirectoryError("platform_id", "is empty")
    if len(platform_id) > MAX_PLATFORM_ID_CHARS or not platform_id.isprintable():
        raise DirectoryError("platform_id", f"must be at most {MAX_PLATFORM_ID_CHARS} printable characters")
    start = parse_day(valid_from.strip(), "valid_from", SINCE_ALWAYS)
    end = parse_day(valid_to.strip(), "valid_to", FOREVER)
    if end < start:
        raise DirectoryError("valid_to", f"{end.isoformat()} is before valid_from {start.isoformat()}")
    return Entry(
        address=address_of(siren, siret, routing_code, suffix),
        valid_from=start,
        valid_to=end,
        platform_id=platform_id,
        requires_service_code=requires_service_code,
        requires_commitment_number=requires_commitment_number,
        active=active,
        version=version,
    )


@dataclass(frozen=True, slots=True)
class Service:
    """A service code of a unit (SIREN or SIREN_SIRET)."""

    unit: str
    code: str
    name: str = ""
    active: bool = True
    requires_commitment_number: bool = False
    version: int = 1

    @property
    def parts(self) -> Address:
        return split_address(self.unit)


def check_service(
    *,
    siren: str,
    siret: str = "",
    code: str,
    name: str = "",
    active: bool = True,
    requires_commitment_number: bool = False,
    version: int = 1,
) -> Service:
    siren = check_siren(siren.strip())
    siret = siret.strip()
    if siret:
        check_siret(siret, siren)
    code = code.strip()
    if not code:
        raise DirectoryError("service_code", "is empty")
    if len(code) > MAX_SERVICE_CODE_CHARS or not code.isprintable():
        raise DirectoryError("service_code", f"must be at most {MAX_SERVICE_CODE_CHARS} printable characters")
    name = name.strip()
    if len(name) > MAX_SERVICE_NAME_CHARS or not name.isprintable():
        raise DirectoryError("name", f"must be at most {MAX_SERVICE_NAME_CHARS} printable characters")
    return Service(
        unit=address_of(siren, siret),
        code=code,
        name=name,
        active=active,
        requires_commitment_number=requires_commitment_number,
        version=version,
    )


class DirectoryIndex:
    """Entries by address (each address holds its validity periods) and
    services by unit and code. Plain dicts: a lookup is a few hash probes."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Entry, ...]] = {}
        self._services: dict[str, dict[str, Service]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    @property
    def addresses(self) -> int:
        return len(self._entries)

    def put_entry(self, entry: Entry) -> None:
        current = self._entries.get(entry.address)
        if current is None:
            self._entries[entry.address] = (entry,)
            return
        kept = tuple(e for e in current if e.valid_from != entry.valid_from)
        self._entries[entry.address] = (*kept, entry)

    def remove_entry(self, address: str, valid_from: date) -> None:
        current = self._entries.get(address)
        if current is None:
            return
        kept = tuple(e for e in current if e.valid_from != valid_from)
        if kept:
            self._entries[address] = kept
        else:
            del self._entries[address]

    def versions(self, address: str) -> tuple[Entry, ...]:
        return self._entries.get(address, ())

    def in_force(self, address: str, day: date) -> Entry | None:
        """The version of ``address`` in force on ``day`` (latest start wins
        when periods overlap), or None."""
        best: Entry | None = None
        for entry in self._entries.get(address, ()):
            if entry.in_force(day) and (best is None or entry.valid_from > best.valid_from):
                best = entry
        return best

    def put_service(self, service: Service) -> None:
        self._services.setdefault(service.unit, {})[service.code] = service

    def remove_service(self, unit: str, code: str) -> None:
        services = self._services.get(unit)
        if services is not None:
            services.pop(code, None)
            if not services:
                del self._services[unit]

    def service(self, unit: str, code: str) -> Service | None:
        services = self._services.get(unit)
        return services.get(code) if services is not None else None

    @classmethod
    def of(cls, entries: Iterable[Entry], services: Iterable[Service] = ()) -> DirectoryIndex:
        index = cls()
        for entry in entries:
            index.put_entry(entry)
        for service in services:
            index.put_service(service)
        return index
