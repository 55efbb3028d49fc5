"""A LifecycleMessage as CDAR XML (D22B): pure, deterministic.

Elements go in the order of the D22B schema; optional ones are left out
when the model has no value. What the BR-FR-CDV rules require of the
content (reasons for some statuses, the amount of a 212...) is not checked
here but by validation.py, so that an invalid message surfaces with the
official rule id.
"""

from __future__ import annotations

import datetime as dt

from lxml import etree

from .model import CHARACTERISTIC_CASHED, ROLE_SELLER, SCHEME_SIREN, LifecycleMessage, Party, Reason
from .names import DATE_FORMAT, DATETIME_FORMAT, NSMAP, QDT, RAM, ROOT_TAG, RSM, UDT

# ISO 8601 to UNTDID 2379 (102, 204): keep the digits. Unlike strftime,
# isoformat always writes four-digit years.
_DIGITS_ONLY = str.maketrans("", "", "-:T")


def _el(parent: etree._Element, ns: str, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        element.text = text
    return element


def _ram(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    return _el(parent, RAM, name, text)


def _with_scheme(parent: etree._Element, name: str, value: str, scheme: str | None) -> None:
    element = _ram(parent, name, value)
    if scheme:
        element.set("schemeID", scheme)


def _datetime(parent: etree._Element, name: str, value: dt.datetime) -> None:
    # The model holds UTC to the second: format 204 carries it exactly.
    holder = _ram(parent, name)
    compact = value.replace(tzinfo=None).isoformat(timespec="seconds").translate(_DIGITS_ONLY)
    _el(holder, UDT, "DateTimeString", compact).set("format", DATETIME_FORMAT)


def _party(parent: etree._Element, name: str, party: Party) -> None:
    element = _ram(parent, name)
    if party.global_id:
        _with_scheme(element, "GlobalID", party.global_id, party.scheme)
    if party.name:
        _ram(element, "Name", party.name)
    _ram(element, "RoleCode", party.role)
    if party.uri:
        _with_scheme(_ram(element, "URIUniversalCommunication"), "URIID", party.uri, party.uri_scheme)


def _reason(parent: etree._Element, reason: Reason, sequence: int) -> None:
    status = _ram(parent, "SpecifiedDocumentStatus")
    _ram(status, "ReasonCode", reason.code)
    if reason.text:
        _ram(status, "Reason", reason.text)
    _ram(status, "SequenceNumeric", str(sequence))


def _amount(parent: etree._Element, message: LifecycleMessage, sequence: int) -> None:
    assert message.amount is not None
    status = _ram(parent, "SpecifiedDocumentStatus")
    _ram(status, "SequenceNumeric", str(sequence))
    characteristic = _ram(status, "SpecifiedDocumentCharacteristic")
    _ram(characteristic, "TypeCode", CHARACTERISTIC_CASHED)
    # "f": never an exponent, and the scale given (100.00 stays 100.00).
    value = _ram(characteristic, "ValueAmount", format(message.amount, "f"))
    if message.currency:
        value.set("currencyID", message.currency)


def _referenced_invoice(parent: etree._Element, message: LifecycleMessage) -> None:
    invoice = message.invoice
    document = _ram(parent, "ReferenceReferencedDocument")
    _ram(document, "IssuerAssignedID", invoice.number)
    if invoice.type_code:
        _ram(document, "TypeCode", invoice.type_code)
    issue_date = _ram(document, "FormattedIssueDateTime")
    date_string = _el(issue_date, QDT, "DateTimeString", invoice.issue_date.isoformat().translate(_DIGITS_ONLY))
    date_string.set("format", DATE_FORMAT)
    _ram(document, "ProcessConditionCode", str(message.status_code))
    seller = _ram(document, "IssuerTradeParty")
    _with_scheme(seller, "GlobalID", invoice.seller_siren, SCHEME_SIREN)
    _ram(seller, "RoleCode", ROLE_SELLER)
    for sequence, reason in enumerate(message.reasons, start=1):
        _reason(document, reason, sequence)
    if message.amount is not None:
        _amount(document, message, len(message.reasons) + 1)


def to_xml(message: LifecycleMessage) -> bytes:
    """The message as UTF-8 CDAR XML; the same message gives the same bytes.

    Raises ValueError when a text holds characters XML cannot carry."""
    root = etree.Element(ROOT_TAG, nsmap=NSMAP)

    context = _el(root, RSM, "ExchangedDocumentContext")
    _ram(_ram(context, "BusinessProcessSpecifiedDocumentContextParameter"), "ID", message.business_process)
    _ram(_ram(context, "GuidelineSpecifiedDocumentContextParameter"), "ID", message.guideline)

    exchanged = _el(root, RSM, "ExchangedDocument")
    _ram(exchanged, "ID", message.message_id)
    _datetime(exchanged, "IssueDateTime", message.issued_at)
    _party(exchanged, "SenderTradeParty", message.sender)
    _party(exchanged, "IssuerTradeParty", message.issuer)
    for recipient in message.recipients:
        _party(exchanged, "RecipientTradeParty", recipient)

    acknowledgement = _el(root, RSM, "AcknowledgementDocument")
    # One invoice per message.
    _el(_ram(acknowledgement, "MultipleReferencesIndicator"), UDT, "Indicator", "false")
    _ram(acknowledgement, "TypeCode", message.phase)
    _datetime(acknowledgement, "IssueDateTime", message.status_at or message.issued_at)
    _referenced_invoice(acknowledgement, message)

    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
