"""Recognising what was received: UBL Invoice, UBL CreditNote, CII, a
Factur-X/ZUGFeRD PDF, or something we reject (with a finding saying what)."""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from typing import Final

import pikepdf
import pikepdf.settings
from lxml import etree

from .model import (
    FATAL,
    FORMAT_CII,
    FORMAT_UBL_CREDIT_NOTE,
    FORMAT_UBL_INVOICE,
    DocumentRejected,
    Finding,
)
from .parsing import MAX_XML_BYTES, looks_like_xml
from .pdf_attachments import (
    MAX_STREAM_FILTERS,
    AttachedFiles,
    StreamNotDecoded,
    decode_stream,
    read_attached_files,
    read_invoice_attachment,
)

NS_UBL_INVOICE: Final = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
NS_UBL_CREDIT_NOTE: Final = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
NS_CII: Final = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
NS_ZUGFERD1: Final = "urn:ferd:CrossIndustryDocument:invoice:1p0"

_ROOTS: Final = {
    (NS_UBL_INVOICE, "Invoice"): FORMAT_UBL_INVOICE,
    (NS_UBL_CREDIT_NOTE, "CreditNote"): FORMAT_UBL_CREDIT_NOTE,
    (NS_CII, "CrossIndustryInvoice"): FORMAT_CII,
}

MAX_PDF_BYTES: Final = 50 * 1024 * 1024


def _reject(message: str, rule: str = "FORMAT") -> DocumentRejected:
    return DocumentRejected(Finding(rule=rule, severity=FATAL, location="", message=message))


def is_pdf(data: bytes) -> bool:
    if data.startswith(b"%PDF-"):
        return True
    # ISO 32000 readers accept up to 1 KiB of junk before the header; an XML
    # document that merely mentions "%PDF-" early stays XML.
    return b"%PDF-" in data[:1024] and not looks_like_xml(data)


def classify_root(root: etree._Element) -> str:
    """Return the format name of a parsed document or raise a FORMAT finding."""
    qname = etree.QName(root)
    found = _ROOTS.get((qname.namespace or "", qname.localname))
    if found is not None:
        return found
    received = f"root element '{qname.localname}'" + (
        f" in namespace '{qname.namespace}'" if qname.namespace else " without namespace"
    )
    if qname.namespace == NS_ZUGFERD1:
        hint = "ZUGFeRD 1.0 is not supported, send Factur-X / ZUGFeRD 2.x"
    else:
        hint = "expected a UBL 2.1 Invoice or CreditNote, or a UN/CEFACT CII CrossIndustryInvoice"
    raise _reject(f"unsupported document: {received}; {hint}")


@dataclass(frozen=True)
class PdfExtraction:
    xml: bytes
    filename: str
    # Factur-X conformance level declared in the XMP metadata, lower-cased
    # ("en 16931", "basic wl", ...); "" when absent or unreadable.
    xmp_level: str
    # Every file the PDF attaches, the invoice XML included.
    attached: AttachedFiles


# What a stream may decode to: the largest XML accepted, plus one byte so
# that going over it is seen. Flate and RunLength are the filters
# pdf_attachments lets through whose output can grow; PNG predictors ride
# on Flate.
_MAX_DECODED_STREAM: Final = MAX_XML_BYTES + 1
MAX_XMP_BYTES: Final = 1024 * 1024


@functools.cache
def _limit_qpdf() -> None:
    # qpdf's limits are process-wide, so they are set once, before the
    # first PDF; the validator's worker processes are single-threaded.
    pikepdf.settings.set_qpdf_limits(
        flate_max_memory=_MAX_DECODED_STREAM,
        run_length_max_memory=_MAX_DECODED_STREAM,
        png_max_memory=_MAX_DECODED_STREAM,
        max_stream_filters=MAX_STREAM_FILTERS,
    )


def _read_xmp_level(pdf: pikepdf.Pdf) -> str:
    meta = pdf.Root.get("/Metadata")
    if not isinstance(meta, pikepdf.Stream):
        return ""
    try:
        raw = decode_stream(meta)
    except StreamNotDecoded:  # XMP is informative only
        return ""
    if len(raw) > MAX_XMP_BYTES:
        return ""
    # XMP is XML too: parse it with the hardened parser, ignore failures.
    from .parsing import parse_xml

    try:
        root = parse_xml(raw, what="XMP metadata")
    except DocumentRejected:
        return ""
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "ConformanceLevel":
            return (el.text or "").strip().lower()
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for key, value in el.attrib.items():
            if etree.QName(key).localname == "ConformanceLevel":
                return str(value).strip().lower()
    return ""


def extract_pdf_xml(data: bytes, max_files: int, max_bytes: int) -> PdfExtraction:
    """Return the one embedded Factur-X/ZUGFeRD XML, or raise a finding (see pdf_attachments),
    with at most ``max_files`` of the PDF's attached files, ``max_bytes`` in all."""
    if len(data) > MAX_PDF_BYTES:
        raise _reject(
            f"PDF is {len(data)} bytes, larger than the {MAX_PDF_BYTES} bytes accepted",
            rule="PARSE",
        )
    _limit_qpdf()
    try:
        # The page tree is never needed: not pushing inherited attributes
        # down to the pages leaves it unwalked.
        with pikepdf.open(io.BytesIO(data), inherit_page_attributes=False) as pdf:
            if pdf.is_encrypted:
                raise _reject("PDF is encrypted; a Factur-X PDF/A-3 cannot be")
            attachment = read_invoice_attachment(pdf)
            attached = read_attached_files(pdf, max_files=max_files, max_bytes=max_bytes, decoded=attachment.decoded)
            xmp_level = _read_xmp_level(pdf)
    except DocumentRejected:
        raise
    except pikepdf.PasswordError:
        raise _reject("PDF is encrypted; a Factur-X PDF/A-3 cannot be") from None
    except (RecursionError, MemoryError) as exc:
        raise _reject(f"not a readable PDF: {type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - qpdf raises several types on bad input
        raise _reject(f"not a readable PDF: {type(exc).__name__}: {_detail(exc)}") from None
    return PdfExtraction(xml=attachment.xml, filename=attachment.name, xmp_level=xmp_level, attached=attached)


# qpdf names its input in each message ("stream <_io.BytesIO object at
# 0x7f...>"): an address says nothing to the sender.
_INPUT_NAME = re.compile(r"^.*?<_io\.BytesIO object at 0x[0-9a-f]+>\s*(\([^)]*\))?:?\s*")


def _detail(exc: BaseException) -> str:
    return " ".join(_INPUT_NAME.sub("", str(exc)).split())[:200]
