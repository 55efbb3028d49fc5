"""The files an invoice carries, extracted so the pipeline can archive them and list them with it.

UBL embeds them as ``cbc:EmbeddedDocumentBinaryObject`` and CII as
``ram:AttachmentBinaryObject``: base64 text with ``mimeCode`` and ``filename``
attributes. A Factur-X PDF attaches files (its factur-x.xml among them), and
that XML may embed more. Everything here comes from the sender: names are
made safe and unique before anyone uses them as file names, base64 is decoded
strictly, and the number and total size of the files are bounded. What cannot
be extracted is left out with an ``ATTACHMENT`` warning; it never makes an
invoice invalid, as it is not part of the invoice's checks.

The engine fills ``ValidationReport.attachments`` from the tree it already
parsed; :func:`extract_attachments` does the same from a document's bytes
without validating it.
"""

from __future__ import annotations

import binascii
import functools
import mimetypes
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from lxml import etree

from .formats import classify_root, extract_pdf_xml, is_pdf
from .model import (
    FORMAT_CII,
    FORMAT_UBL_CREDIT_NOTE,
    FORMAT_UBL_INVOICE,
    WARNING,
    DocumentRejected,
    Finding,
)
from .parsing import parse_xml
from .pdf_attachments import AttachedFiles

# Real invoices carry a handful of files. Both bounds are for the whole
# invoice, the PDF's attached files and the XML's embedded ones together.
# An XML's base64 cannot decode to more than the XML itself (20 MiB at most),
# but a PDF's compressed streams can, so the total is bounded on its own.
MAX_EMBEDDED_FILES: Final = 200
MAX_EMBEDDED_BYTES: Final = 120 * 1024 * 1024
# The usual file-system limit on one name, in UTF-8 bytes.
MAX_NAME_BYTES: Final = 255
ATTACHMENT_RULE: Final = "ATTACHMENT"
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"

_UBL_OBJECT: Final = (
    "{urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2}EmbeddedDocumentBinaryObject"
)
_CII_OBJECT: Final = (
    "{urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100}AttachmentBinaryObject"
)
_BINARY_OBJECTS: Final = {
    FORMAT_UBL_INVOICE: _UBL_OBJECT,
    FORMAT_UBL_CREDIT_NOTE: _UBL_OBJECT,
    FORMAT_CII: _CII_OBJECT,
}
# xs:base64Binary allows XML whitespace between the characters, nothing else.
_XML_WHITESPACE: Final = b" \t\r\n"
# RFC 6838 restricted names; parameters (";charset=...") are dropped before.
_MEDIA_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_DIRECTORY_SEPARATORS: Final = re.compile(r"[/\\]")
# Control and format characters (bidi overrides included: "invoice\u202efdp.exe"
# shows as "invoiceexe.pdf"), lone surrogates, line and paragraph separators.
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
_ODS: Final = "application/vnd.oasis.opendocument.spreadsheet"
# Python's table lacks two of the types EN 16931 allows for attachments
# (BT-125-1), and names application/xml files ".xsl".
_PREFERRED_EXTENSIONS: Final = {"application/xml": ".xml", _XLSX: ".xlsx", _ODS: ".ods"}


@dataclass(frozen=True)
class EmbeddedFile:
    """One file carried by an invoice: a safe name unique within the invoice, a media type, its bytes."""

    name: str
    media_type: str
    data: bytes


@functools.cache
def _types() -> mimetypes.MimeTypes:
    # Python's built-in table only, not the host's /etc/mime.types, so names
    # and types do not depend on the machine; built on first use, as most
    # invoices carry no file.
    types = mimetypes.MimeTypes()
    types.add_type(_XLSX, ".xlsx")
    types.add_type(_ODS, ".ods")
    return types


def _basename(raw: str) -> str:
    return _DIRECTORY_SEPARATORS.split(raw)[-1].strip()


def _is_safe(name: str) -> bool:
    if name in ("", ".", ".."):
        return False
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return False
    return not any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in name)


def _media_type(declared: str, name: str) -> str:
    candidate = declared.split(";", 1)[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(candidate):
        return candidate
    if name:
        guessed, _ = _types().guess_type(name, strict=False)
        if guessed:
            return guessed
    return DEFAULT_MEDIA_TYPE


def _extension(media_type: str) -> str:
    return _PREFERRED_EXTENSIONS.get(media_type) or _types().guess_extension(media_type, strict=False) or ""


def _with_suffix(name: str, suffix: str) -> str:
    """``name`` with ``suffix`` before its extension, shortened to fit MAX_NAME_BYTES."""
    stem, extension = posixpath.splitext(name)
    if len(extension) > 16:  # not an extension, just a dot in the name
        stem, extension = name, ""
    budget = MAX_NAME_BYTES - len(f"{suffix}{extension}".encode())
    stem = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    return f"{stem}{suffix}{extension}"


def _path(element: etree._Element) -> str:
    path: str = element.getroottree().getpath(element)
    return path


def _shown(raw: str) -> str:
    """A sender's name as it may appear in a finding."""
    return "".join(char if char.isprintable() else "?" for char in raw[:100])


class AttachmentCollector:
    """Gathers one invoice's files in the order found: names made safe and
    unique, at most ``max_files`` files and ``max_bytes`` bytes in all; what is
    left out becomes a warning in ``findings``."""

    def __init__(self, max_files: int = MAX_EMBEDDED_FILES, max_bytes: int = MAX_EMBEDDED_BYTES) -> None:
        self.files: list[EmbeddedFile] = []
        self.findings: list[Finding] = []
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._bytes = 0
        # Case-folded: a case-insensitive file system would merge "A.pdf" and "a.pdf".
        self._taken: set[str] = set()
        self._count_reported = False

    def add_pdf_files(self, attached: AttachedFiles) -> None:
        """The files attached to a PDF, as read by pdf_attachments.read_attached_files."""
        for file in attached.files:
            what = f"PDF attachment '{_shown(file.name)}'"
            if self._admit(len(file.data), file.name or "PDF", what):
                self._add(file.name, file.subtype, file.data)
        for name, why in attached.skipped:
            what = f"PDF attachment '{_shown(name)}'" if name else "PDF attachment"
            self._warn(name or "PDF", f"{what} is not extracted: {why}")

    def add_from_tree(self, root: etree._Element, fmt: str) -> None:
        """The base64 files embedded in a parsed UBL or CII document."""
        tag = _BINARY_OBJECTS.get(fmt)
        if tag is None:
            return
        # Wherever they are: BG-24 (AdditionalDocumentReference) is the usual
        # place, but the buyer receives every embedded file. One walk in C
        # over the parsed tree; nothing else runs for an invoice without any.
        for element in root.iter(tag):
            self._add_binary_object(element)

    def _add_binary_object(self, element: etree._Element) -> None:
        raw_name = element.get("filename") or ""
        what = f"embedded file '{_shown(raw_name)}'" if raw_name else "embedded file"
        try:
            # itertext skips comments and processing instructions, which XML
            # allows inside. Bytes, as their translate is C while str's is
            # a lookup per character (0.4 ms on 100 KB).
            text = "".join(element.itertext()).encode("ascii").translate(None, _XML_WHITESPACE)
            malformed = False
        except UnicodeEncodeError:
            text, malformed = b"", True
        if not text:
            problem = "is not valid base64" if malformed else "is empty"
            self._warn(_path(element), f"{what} {problem}; it is not extracted")
            return
        # Checked before decoding: base64 never decodes to more than 3/4 of its length.
        if not self._admit(len(text) // 4 * 3, _path(element), what):
            return
        try:
            # Strict: only the alphabet, correct padding, nothing after it.
            # Same verdict as b64decode(validate=True), in half the time.
            data = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error:
            self._warn(_path(element), f"{what} is not valid base64; it is not extracted")
            return
        self._add(raw_name, element.get("mimeCode") or "", data)

    def _admit(self, size: int, location: str, what: str) -> bool:
        if len(self.files) >= self._max_files:
            if not self._count_reported:
                self._count_reported = True
                self._warn("", f"the invoice carries more than {self._max_files} files; the rest are not extracted")
            return False
        if self._bytes + size > self._max_bytes:
            self._warn(location, f"{what} is not extracted: the files would exceed {self._max_bytes} bytes in all")
            return False
        return True

    def _add(self, raw_name: str, declared_type: str, data: bytes) -> None:
        name = _basename(raw_name)
        media_type = _media_type(declared_type, name)
        if not _is_safe(name):
            name = f"attachment-{len(self.files) + 1}{_extension(media_type)}"
        candidate, n = name, 1
        while candidate.casefold() in self._taken:
            n += 1
            candidate = _with_suffix(name, f"-{n}")
        self._taken.add(candidate.casefold())
        self._bytes += len(data)
        self.files.append(EmbeddedFile(name=candidate, media_type=media_type, data=data))

    def _warn(self, location: str, message: str) -> None:
        self.findings.append(Finding(rule=ATTACHMENT_RULE, severity=WARNING, location=location, message=message))


def extract_attachments(data: bytes) -> list[EmbeddedFile]:
    """The files a document (UBL, CII or Factur-X PDF) carries, without validating it.

    Bytes in, list out, through the same hardened PDF reading and XML parser
    as the engine. A document that cannot be read gives what was found
    before the problem (a PDF's files when its XML is broken), else nothing.
    """
    collector = AttachmentCollector()
    try:
        if is_pdf(data):
            extraction = extract_pdf_xml(data, max_files=MAX_EMBEDDED_FILES, max_bytes=MAX_EMBEDDED_BYTES)
            collector.add_pdf_files(extraction.attached)
            xml = extraction.xml
        else:
            xml = data
        root = parse_xml(xml)
        collector.add_from_tree(root, classify_root(root))
    except DocumentRejected:
        pass
    return collector.files
