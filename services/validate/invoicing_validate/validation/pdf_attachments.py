"""Finding the invoice XML among a PDF's attachments, and proving it is the only one.

The whole PDF is delivered to the buyer, whose software may take the invoice
from any attachment under a Factur-X/ZUGFeRD name, found through the
/EmbeddedFiles name tree or through /AF. Validating one of several would let
an unchecked invoice (another seller, other amounts) travel with it, so every
such attachment is read and all must hold the same bytes.

Every attached file, the invoice XML included, can also be listed
(read_attached_files) so that the pipeline archives what the buyer receives.

Every stream is decoded through decode_stream: only filters whose output
qpdf bounds (formats.extract_pdf_xml sets its limits first) or that
shrink their input, so a compression bomb costs a finding, not the worker's
memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pikepdf

from .model import FATAL, DocumentRejected, Finding
from .parsing import MAX_XML_BYTES

# Names under which Factur-X 1.0, ZUGFeRD 2.x and XRechnung-in-PDF embed the
# invoice; compared case-insensitively since producers disagree on case.
EMBEDDED_XML_NAMES: Final = ("factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml")
# Order-X PDFs use the same convention. Never validated as the invoice here,
# but software reading "the" structured XML of a PDF may pick it up, so it
# must not differ from the invoice either.
_RIVAL_XML_NAMES: Final = (*EMBEDDED_XML_NAMES, "order-x.xml")
# A file specification may name its file under any of these keys and keep a
# stream under the same keys of /EF; readers differ in which they prefer.
_NAME_KEYS: Final = ("/UF", "/F", "/DOS", "/Mac", "/Unix")
_STREAM_KEYS: Final = ("/F", "/UF", "/DOS", "/Mac", "/Unix")
# The attachment structures are attacker-shaped, so walking them is bounded;
# going over a bound rejects rather than stops, as whatever lies beyond it
# would be delivered unchecked.
MAX_NAME_TREE_NODES: Final = 1000
MAX_NAME_TREE_DEPTH: Final = 20
MAX_FILESPECS: Final = 1000
# Identical copies are allowed, so every copy is decoded. Decoding one stream
# is bounded by qpdf's limits, but its work can be large while its
# output is small, so the number of streams is bounded as well as their total
# size. Real Factur-X PDFs hold one stream, reached from the tree and /AF.
MAX_XML_STREAMS: Final = 4
MAX_DECODED_TOTAL: Final = 2 * MAX_XML_BYTES
AMBIGUOUS_RULE: Final = "FACTURX-AMBIGUOUS"
# Filters an embedded file may use. qpdf bounds what Flate and RunLength
# decode to (formats.extract_pdf_xml sets the limit) and the ASCII filters shrink;
# LZW has no such bound in qpdf, and image codecs have no business here.
_DECODABLE_FILTERS: Final = frozenset(
    {"/FlateDecode", "/Fl", "/RunLengthDecode", "/RL", "/ASCIIHexDecode", "/AHx", "/ASCII85Decode", "/A85"}
)
MAX_STREAM_FILTERS: Final = 4


def _reject(message: str, rule: str = "FORMAT", location: str = "") -> DocumentRejected:
    return DocumentRejected(Finding(rule=rule, severity=FATAL, location=location, message=message))


@dataclass(frozen=True)
class InvoiceAttachment:
    name: str
    xml: bytes
    # Every invoice XML stream decoded to find it, by stream identity, so
    # that listing the attached files does not decode them again.
    decoded: Mapping[object, bytes] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class _Filespec:
    # Every name the attachment goes by: its name-tree key and its own keys.
    names: tuple[str, ...]
    spec: Any


def _text(value: Any) -> str:
    return str(value).strip()


def _own_names(spec: Any) -> list[str]:
    if not isinstance(spec, pikepdf.Dictionary):
        return []
    return [_text(spec[key]) for key in _NAME_KEYS if spec.get(key) is not None]


class StreamNotDecoded(Exception):
    """An embedded stream this module will not or cannot decode; the message says why."""


class StreamTooLarge(StreamNotDecoded):
    """An embedded stream that decodes to more than qpdf's limit allows."""


def decode_stream(stream: pikepdf.Stream) -> bytes:
    """The decoded bytes of an embedded stream, through bounded filters only."""
    filters = stream.get("/Filter")
    names = list(filters) if isinstance(filters, pikepdf.Array) else [] if filters is None else [filters]
    if len(names) > MAX_STREAM_FILTERS:
        raise StreamNotDecoded(f"it has {len(names)} filters, more than the {MAX_STREAM_FILTERS} accepted")
    for name in names:
        if not isinstance(name, pikepdf.Name) or str(name) not in _DECODABLE_FILTERS:
            raise StreamNotDecoded(f"its filter {str(name)[:40]!r} is not one an embedded file may use")
    try:
        return stream.read_bytes()
    except pikepdf.DataDecodingError as exc:
        if "memory limit exceeded" in str(exc):
            raise StreamTooLarge("it decodes to more than the accepted size") from None
        raise StreamNotDecoded("its data could not be decoded") from None
    except pikepdf.PdfError:
        raise StreamNotDecoded("its data could not be read") from None


def _too_many_files() -> DocumentRejected:
    return _reject(f"PDF lists more than {MAX_FILESPECS} embedded files; they cannot all be checked")


def _name_tree_filespecs(node: Any) -> list[_Filespec]:
    found: list[_Filespec] = []
    stack: list[tuple[Any, int]] = [(node, 0)]
    visited = 0
    while stack:
        current, depth = stack.pop()
        visited += 1
        if visited > MAX_NAME_TREE_NODES or depth > MAX_NAME_TREE_DEPTH:
            raise _reject(
                f"PDF embedded-files name tree has more than {MAX_NAME_TREE_NODES} nodes"
                f" or {MAX_NAME_TREE_DEPTH} levels; it cannot be checked"
            )
        if not isinstance(current, pikepdf.Dictionary):
            continue
        names = current.get("/Names")
        if isinstance(names, pikepdf.Array):
            for i in range(0, len(names) - 1, 2):
                if len(found) >= MAX_FILESPECS:
                    raise _too_many_files()
                spec = names[i + 1]
                found.append(_Filespec((_text(names[i]), *_own_names(spec)), spec))
        kids = current.get("/Kids")
        if isinstance(kids, pikepdf.Array):
            stack.extend((kid, depth + 1) for kid in kids)
    return found


def _all_filespecs(pdf: pikepdf.Pdf) -> list[_Filespec]:
    catalog = pdf.Root
    found: list[_Filespec] = []
    names = catalog.get("/Names")
    embedded = names.get("/EmbeddedFiles") if isinstance(names, pikepdf.Dictionary) else None
    if embedded is not None:
        found.extend(_name_tree_filespecs(embedded))
    # PDF/A-3 also lists associated files in /AF; some producers only do that.
    af = catalog.get("/AF")
    if isinstance(af, pikepdf.Array):
        if len(af) > MAX_FILESPECS:
            raise _too_many_files()
        for spec in af:
            found.append(_Filespec(tuple(_own_names(spec)), spec))
    return found


def _xml_name(names: tuple[str, ...]) -> str | None:
    """The name to report for an attachment that holds (or rivals) the invoice."""
    for wanted in (EMBEDDED_XML_NAMES, _RIVAL_XML_NAMES):
        for name in names:
            if name.lower() in wanted:
                return name
    return None


def _embedded_streams(spec: Any) -> list[tuple[object, pikepdf.Stream]]:
    """(identity, stream) of each stream the file specification embeds."""
    ef = spec.get("/EF") if isinstance(spec, pikepdf.Dictionary) else None
    streams: list[tuple[object, pikepdf.Stream]] = []
    if isinstance(ef, pikepdf.Dictionary):
        for key in _STREAM_KEYS:
            stream = ef.get(key)
            if isinstance(stream, pikepdf.Stream):
                # The same stream is usually reached twice (/EmbeddedFiles
                # and /AF); its object number says so without decoding it
                # again. A stream is always an indirect object.
                streams.append((stream.objgen, stream))
    return streams


def _streams(name: str, spec: Any) -> list[tuple[object, pikepdf.Stream]]:
    streams = _embedded_streams(spec)
    if not streams:
        raise _reject(f"PDF file specification '{name}' has no embedded stream")
    return streams


def _decode(name: str, stream: pikepdf.Stream) -> bytes:
    try:
        data = decode_stream(stream)
    except StreamTooLarge:
        raise _reject(f"PDF embedded file '{name}' decodes to more than the accepted size", rule="PARSE") from None
    except StreamNotDecoded as exc:
        raise _reject(f"PDF embedded file '{name}' could not be decoded: {exc}") from None
    if len(data) > MAX_XML_BYTES:
        raise _reject(f"embedded '{name}' is larger than the {MAX_XML_BYTES} bytes accepted", rule="PARSE")
    return data


def read_invoice_attachment(pdf: pikepdf.Pdf) -> InvoiceAttachment:
    """The one invoice XML of an opened PDF, or raise a finding."""
    filespecs = _all_filespecs(pdf)
    candidates = [(name, f.spec) for f in filespecs if (name := _xml_name(f.names)) is not None]
    if not any(name.lower() in EMBEDDED_XML_NAMES for name, _ in candidates):
        listed = sorted({n for f in filespecs for n in f.names if n})[:10]
        raise _reject(
            "PDF has no embedded factur-x.xml or zugferd-invoice.xml"
            + (f" (embedded files: {', '.join(listed)})" if listed else "")
        )
    # Each stream once, however many times it is reached, in first-reach order.
    streams: dict[object, tuple[str, pikepdf.Stream]] = {}
    reached: list[tuple[str, object]] = []
    for name, spec in candidates:
        for identity, stream in _streams(name, spec):
            streams.setdefault(identity, (name, stream))
            reached.append((name, identity))
    if len(streams) > MAX_XML_STREAMS:
        raise _reject(
            f"the PDF carries {len(streams)} invoice XML attachment streams, more than the {MAX_XML_STREAMS}"
            " that are compared: exactly one invoice XML is allowed",
            rule=AMBIGUOUS_RULE,
        )
    decoded: dict[object, bytes] = {}
    total = 0
    for identity, (name, stream) in streams.items():
        decoded[identity] = _decode(name, stream)
        total += len(decoded[identity])
        if total > MAX_DECODED_TOTAL:
            raise _reject(
                f"the PDF's invoice XML attachments decode to more than {MAX_DECODED_TOTAL} bytes in total",
                rule="PARSE",
            )
    # Distinct contents, each with the name of the first attachment holding it.
    contents: dict[bytes, str] = {}
    chosen: InvoiceAttachment | None = None
    for name, identity in reached:
        xml = decoded[identity]
        contents.setdefault(xml, name)
        if chosen is None and name.lower() in EMBEDDED_XML_NAMES:
            chosen = InvoiceAttachment(name=name, xml=xml, decoded=decoded)
    if len(contents) > 1:
        listed_names = ", ".join(contents.values())
        raise _reject(
            f"the PDF carries {len(contents)} different invoice XML attachments ({listed_names}):"
            " exactly one is allowed",
            rule=AMBIGUOUS_RULE,
            location=listed_names,
        )
    if chosen is None:  # cannot happen: a candidate under an invoice name was read above
        raise _reject("PDF has no readable embedded invoice XML")
    return chosen


@dataclass(frozen=True)
class AttachedFile:
    """A file attached to the PDF, under the name and /Subtype the PDF gives it (unchecked)."""

    name: str
    subtype: str  # without the leading slash: "text/xml"; "" when absent
    data: bytes


@dataclass(frozen=True)
class AttachedFiles:
    files: tuple[AttachedFile, ...] = ()
    # (name, why) of each attached file that was left out.
    skipped: tuple[tuple[str, str], ...] = ()


def _subtype(stream: pikepdf.Stream) -> str:
    value = stream.get("/Subtype")
    if value is None:
        return ""
    text = _text(value)
    return text[1:] if text.startswith("/") else text


def read_attached_files(
    pdf: pikepdf.Pdf, max_files: int, max_bytes: int, decoded: Mapping[object, bytes] | None = None
) -> AttachedFiles:
    """Every file attached to an opened PDF, each stream once, in the order they are listed.

    Called after read_invoice_attachment accepted the PDF, so the name tree
    is within its bounds; ``decoded`` holds the streams it already decoded
    (``InvoiceAttachment.decoded``). A file that cannot be decoded, or would
    take the total over ``max_bytes``, is skipped rather than rejecting the invoice: the
    invoice itself was checked, this is only its archive. At most
    ``max_files`` streams are decoded, as each decoding is work even when
    its output is small.
    """
    files: list[AttachedFile] = []
    skipped: list[tuple[str, str]] = []
    seen: set[object] = set()
    # Identical copies under one name (allowed for the invoice XML) are one file.
    contents: set[tuple[str, bytes]] = set()
    total = 0
    already = decoded or {}
    for filespec in _all_filespecs(pdf):
        # The file's own names (/UF first, the Unicode one) before its name-tree key.
        name = next((n for n in (*_own_names(filespec.spec), *filespec.names) if n), "")
        streams = _embedded_streams(filespec.spec)
        if not streams:
            skipped.append((name, "it has no embedded stream"))
        for identity, stream in streams:
            if identity in seen:
                continue
            if len(seen) >= max_files:
                skipped.append(("", f"the PDF attaches more than {max_files} files; the rest are not extracted"))
                return AttachedFiles(tuple(files), tuple(skipped))
            seen.add(identity)
            data = already.get(identity)
            if data is None:
                try:
                    data = decode_stream(stream)
                except StreamNotDecoded as exc:
                    skipped.append((name, str(exc)))
                    continue
            key = (name.casefold(), data)
            if key in contents:
                continue
            if total + len(data) > max_bytes:
                skipped.append((name, f"the attachments would exceed {max_bytes} bytes in total"))
                continue
            contents.add(key)
            total += len(data)
            files.append(AttachedFile(name=name, subtype=_subtype(stream), data=data))
    return AttachedFiles(tuple(files), tuple(skipped))
