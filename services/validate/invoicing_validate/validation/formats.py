"""Recognising what was received: UBL Invoice, UBL CreditNote, CII, a
Factur-X/ZUGFeRD PDF, or something we reject (with a finding saying what)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Final

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
from .pdf_attachments import AttachedFiles, read_attached_files, read_invoice_attachment

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


def _pdf_limits() -> dict[str, Any]:
    # Everything pypdf decodes while we look for the attachments is bounded
    # so that a compression bomb costs a finding, not the worker's memory.
    return {
        "zlib_maximum_output_length": MAX_XML_BYTES + 1,
        "zlib_maximum_recovery_input_length": 256 * 1024,
        "maximum_declared_stream_length": MAX_PDF_BYTES,
        "array_based_stream_maximum_output_length": MAX_XML_BYTES + 1,
        "lzw_maximum_output_length": MAX_XML_BYTES + 1,
        "run_length_maximum_output_length": MAX_XML_BYTES + 1,
        "jbig2_maximum_output_length": MAX_XML_BYTES + 1,
        "brotli_maximum_output_length": MAX_XML_BYTES + 1,
        "stream_decoding_work_maximum_length": 4 * (MAX_XML_BYTES + 1),
        "xmp_maximum_input_length": 1024 * 1024,
    }


def _read_xmp_level(reader: Any) -> str:
    try:
        meta = reader.trailer["/Root"].get_object().get("/Metadata")
        if meta is None:
            return ""
        raw: bytes = meta.get_object().get_data()
    except Exception:  # noqa: BLE001 - XMP is informative only
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
    # Imported here: pypdf is only needed for PDFs, and keeps worker start cheap.
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    with apply_configuration(**_pdf_limits()):
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise _reject("PDF is encrypted; a Factur-X PDF/A-3 cannot be")
            attachment = read_invoice_attachment(reader)
            # Listed under the same decoding limits, from the same reader.
            attached = read_attached_files(reader, max_files=max_files, max_bytes=max_bytes)
            xmp_level = _read_xmp_level(reader)
        except DocumentRejected:
            raise
        except LimitReachedError as exc:
            raise _reject(f"PDF stream decodes to more than the accepted size ({exc})", rule="PARSE") from None
        except (RecursionError, MemoryError) as exc:
            raise _reject(f"not a readable PDF: {type(exc).__name__}") from None
        except Exception as exc:  # noqa: BLE001 - pypdf raises many types on bad input
            detail = " ".join(str(exc).split())[:200]
            raise _reject(f"not a readable PDF: {type(exc).__name__}: {detail}") from None
    return PdfExtraction(xml=attachment.xml, filename=attachment.name, xmp_level=xmp_level, attached=attached)
