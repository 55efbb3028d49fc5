"""CDAR XML received from another platform, read back into a LifecycleMessage.

The bytes come from outside, so the parser can never read a file, open a
connection or expand an entity: no DTD is loaded (and any DOCTYPE is
refused), entities are not resolved, the network is off, libxml2 keeps its
resource limits (huge_tree=False) and XInclude is never processed; an
element from outside the CDAR namespaces (an xi:include, say) is refused
too. Errors name the field at fault and never quote the input, so they can
be logged and sent back as they are; the lxml error they replace is
dropped for the same reason.

Reading is lenient where the rules are (extra optional elements are
ignored) and strict where the model needs a value.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Final

from lxml import etree

from .model import CHARACTERISTIC_CASHED, SCHEME_SIREN, InvoiceRef, LifecycleMessage, Party, Reason
from .names import CDAR_NAMESPACES, QDT, RAM, ROOT_NAME, ROOT_TAG, RSM, UDT

# A CDAR is a few kilobytes; anything near this is not one.
DEFAULT_MAX_BYTES: Final = 1024 * 1024

# The official reason codes of an inadmissible file (status 501), reused to
# say why a message was refused.
IRR_EMPTY: Final = "IRR_VIDE_F"
IRR_TOO_LARGE: Final = "IRR_TAILLE_F"
IRR_SYNTAX: Final = "IRR_SYNTAX"
IRR_TYPE: Final = "IRR_TYPE_F"

_DOCUMENT: Final = "document"
# A DOCTYPE is refused before libxml2 reads its internal subset; the check
# after parsing catches the encodings this byte test cannot see.
_DOCTYPE_MARKERS: Final = tuple("<!DOCTYPE".encode(codec) for codec in ("ascii", "utf-16-le", "utf-16-be"))
_STATUS_CODE = re.compile(r"[0-9]{3}")
_DECIMAL = re.compile(r"-?[0-9]{1,19}(\.[0-9]{1,6})?")
# UNTDID 2379 formats accepted on input; zone-less ones are UTC.
_DATETIME_FORMATS: Final = {
    "102": "%Y%m%d",
    "203": "%Y%m%d%H%M",
    "204": "%Y%m%d%H%M%S",
    "205": "%Y%m%d%H%M%S%z",
}


class CdarError(ValueError):
    """A CDAR message that cannot be read. ``reason_code`` is the official
    status reason code that fits (IRR_*); ``field`` is the element at fault,
    as a path from the root without prefixes; ``message`` never quotes the
    input."""

    def __init__(self, reason_code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.reason_code = reason_code
        self.field = field
        self.message = message


def _parser() -> etree.XMLParser:
    # A new parser per call: lxml parsers must not be shared between threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        recover=False,
    )


def parse_tree(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """The root of ``data`` parsed safely; raises CdarError. Checks only
    that the bytes are acceptable XML, not that they are a CDAR."""
    if not data.strip():
        raise CdarError(IRR_EMPTY, _DOCUMENT, "is empty")
    if len(data) > max_bytes:
        raise CdarError(IRR_TOO_LARGE, _DOCUMENT, f"is larger than the {max_bytes} bytes accepted")
    if any(marker in data for marker in _DOCTYPE_MARKERS):
        raise CdarError(IRR_SYNTAX, _DOCUMENT, "has a DOCTYPE; DTDs and entities are not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError):
        raise CdarError(IRR_SYNTAX, _DOCUMENT, "is not well-formed XML") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise CdarError(IRR_SYNTAX, _DOCUMENT, "has a DOCTYPE; DTDs and entities are not allowed")
    return root


def _all(parent: etree._Element, name: str, ns: str = RAM) -> list[etree._Element]:
    return list(parent.findall(f"{{{ns}}}{name}"))


def _optional(parent: etree._Element, name: str, field: str, ns: str = RAM) -> etree._Element | None:
    found = _all(parent, name, ns)
    if len(found) > 1:
        raise CdarError(IRR_SYNTAX, field, "appears more than once")
    return found[0] if found else None


def _required(parent: etree._Element, name: str, field: str, ns: str = RAM) -> etree._Element:
    element = _optional(parent, name, field, ns)
    if element is None:
        raise CdarError(IRR_SYNTAX, field, "is missing")
    return element


def _value(element: etree._Element | None) -> str | None:
    value = (element.text or "").strip() if element is not None else ""
    return value or None


def _text(element: etree._Element, field: str) -> str:
    value = (element.text or "").strip()
    if not value:
        raise CdarError(IRR_SYNTAX, field, "is empty")
    return value


def _required_text(parent: etree._Element, name: str, field: str) -> str:
    return _text(_required(parent, name, field), field)


def _optional_text(parent: etree._Element, name: str, field: str) -> str | None:
    return _value(_optional(parent, name, field))


def _attribute(element: etree._Element | None, name: str) -> str | None:
    value = (element.get(name) or "").strip() if element is not None else ""
    return value or None


def _date_time(parent: etree._Element, name: str, field: str, ns: str = UDT) -> dt.datetime:
    holder = _required(parent, name, field)
    string = _required(holder, "DateTimeString", f"{field}/DateTimeString", ns)
    pattern = _DATETIME_FORMATS.get(string.get("format") or "")
    if pattern is None:
        raise CdarError(IRR_SYNTAX, f"{field}/DateTimeString", "has a date format other than 102, 203, 204 or 205")
    try:
        value = dt.datetime.strptime(_text(string, f"{field}/DateTimeString"), pattern)
    except ValueError:
        raise CdarError(IRR_SYNTAX, f"{field}/DateTimeString", "is not a date in its format") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _party(parent: etree._Element, name: str, field: str) -> Party:
    return _party_of(_required(parent, name, field), field)


def _party_of(element: etree._Element, field: str) -> Party:
    # A party may list several identifiers; the first is the one kept.
    global_ids = _all(element, "GlobalID")
    global_id = global_ids[0] if global_ids else None
    uri = element.find(f"{{{RAM}}}URIUniversalCommunication/{{{RAM}}}URIID")
    return Party(
        role=_required_text(element, "RoleCode", f"{field}/RoleCode"),
        global_id=_value(global_id),
        scheme=_attribute(global_id, "schemeID"),
        name=_optional_text(element, "Name", f"{field}/Name"),
        uri=_value(uri),
        uri_scheme=_attribute(uri, "schemeID"),
    )


def _status_code(document: etree._Element, field: str) -> int:
    value = _required_text(document, "ProcessConditionCode", field)
    if not _STATUS_CODE.fullmatch(value):
        raise CdarError(IRR_SYNTAX, field, "is not a three-digit status code")
    return int(value)


def _reasons(document: etree._Element, field: str) -> tuple[Reason, ...]:
    reasons: list[Reason] = []
    for status in _all(document, "SpecifiedDocumentStatus"):
        # A status block without a code carries other things (an amount).
        code = _optional_text(status, "ReasonCode", f"{field}/ReasonCode")
        if code is None:
            continue
        texts = [(t.text or "").strip() for t in _all(status, "Reason")]
        reasons.append(Reason(code, "\n".join(t for t in texts if t) or None))
    return tuple(reasons)


def _cashed(document: etree._Element, field: str) -> tuple[Decimal | None, str | None]:
    """The amount cashed (MEN characteristics, summed: a platform may split
    it by VAT rate) and its currency."""
    field = f"{field}/SpecifiedDocumentCharacteristic/ValueAmount"
    total: Decimal | None = None
    currencies: set[str | None] = set()
    for status in _all(document, "SpecifiedDocumentStatus"):
        for characteristic in _all(status, "SpecifiedDocumentCharacteristic"):
            if _optional_text(characteristic, "TypeCode", field) != CHARACTERISTIC_CASHED:
                continue
            amount = _optional(characteristic, "ValueAmount", field)
            if amount is None:
                continue
            value = _text(amount, field)
            if not _DECIMAL.fullmatch(value):
                raise CdarError(IRR_SYNTAX, field, "is not a decimal amount")
            total = Decimal(value) if total is None else total + Decimal(value)
            currencies.add(_attribute(amount, "currencyID"))
    if len(currencies) > 1:
        raise CdarError(IRR_SYNTAX, field, "mixes currencies")
    return total, next(iter(currencies), None)


def _seller_id(document: etree._Element, field: str) -> str:
    # The seller may be named by several identifiers: the SIREN if given.
    seller = _required(document, "IssuerTradeParty", f"{field}/IssuerTradeParty")
    field = f"{field}/IssuerTradeParty/GlobalID"
    ids = _all(seller, "GlobalID")
    if not ids:
        raise CdarError(IRR_SYNTAX, field, "is missing")
    sirens = [i for i in ids if _attribute(i, "schemeID") == SCHEME_SIREN]
    return _text((sirens or ids)[0], field)


def _invoice(document: etree._Element, field: str) -> InvoiceRef:
    issue = _date_time(document, "FormattedIssueDateTime", f"{field}/FormattedIssueDateTime", ns=QDT)
    return InvoiceRef(
        number=_required_text(document, "IssuerAssignedID", f"{field}/IssuerAssignedID"),
        issue_date=issue.date(),
        seller_siren=_seller_id(document, field),
        type_code=_optional_text(document, "TypeCode", f"{field}/TypeCode"),
    )


def _check_namespaces(root: etree._Element) -> None:
    for element in root.iter(etree.Element):
        if etree.QName(element).namespace not in CDAR_NAMESPACES:
            raise CdarError(IRR_SYNTAX, _DOCUMENT, "has an element outside the CDAR namespaces")


def _context_id(context: etree._Element, name: str) -> str:
    field = f"ExchangedDocumentContext/{name}"
    return _required_text(_required(context, name, field), "ID", f"{field}/ID")


def from_xml(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> LifecycleMessage:
    """The message in ``data``; raises CdarError naming the field at fault."""
    root = parse_tree(data, max_bytes)
    if root.tag != ROOT_TAG:
        raise CdarError(IRR_TYPE, ROOT_NAME, "is not the root element (not a CDAR message)")
    _check_namespaces(root)

    context = _required(root, "ExchangedDocumentContext", "ExchangedDocumentContext", RSM)
    exchanged = _required(root, "ExchangedDocument", "ExchangedDocument", RSM)
    recipients = _all(exchanged, "RecipientTradeParty")
    if not recipients:
        raise CdarError(IRR_SYNTAX, "ExchangedDocument/RecipientTradeParty", "is missing")

    ack = "AcknowledgementDocument"
    acknowledgement = _required(root, ack, ack, RSM)
    status_at = None
    if _optional(acknowledgement, "IssueDateTime", f"{ack}/IssueDateTime") is not None:
        status_at = _date_time(acknowledgement, "IssueDateTime", f"{ack}/IssueDateTime")
    # One message, one invoice: a second reference is refused, not dropped.
    ref = f"{ack}/ReferenceReferencedDocument"
    document = _required(acknowledgement, "ReferenceReferencedDocument", ref)
    amount, currency = _cashed(document, f"{ref}/SpecifiedDocumentStatus")

    return LifecycleMessage(
        business_process=_context_id(context, "BusinessProcessSpecifiedDocumentContextParameter"),
        guideline=_context_id(context, "GuidelineSpecifiedDocumentContextParameter"),
        message_id=_required_text(exchanged, "ID", "ExchangedDocument/ID"),
        issued_at=_date_time(exchanged, "IssueDateTime", "ExchangedDocument/IssueDateTime"),
        sender=_party(exchanged, "SenderTradeParty", "ExchangedDocument/SenderTradeParty"),
        issuer=_party(exchanged, "IssuerTradeParty", "ExchangedDocument/IssuerTradeParty"),
        recipients=tuple(_party_of(r, "ExchangedDocument/RecipientTradeParty") for r in recipients),
        phase=_required_text(acknowledgement, "TypeCode", f"{ack}/TypeCode"),
        status_at=status_at,
        status_code=_status_code(document, f"{ref}/ProcessConditionCode"),
        invoice=_invoice(document, ref),
        reasons=_reasons(document, f"{ref}/SpecifiedDocumentStatus"),
        amount=amount,
        currency=currency,
    )
