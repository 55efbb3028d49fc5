"""Hardened XML parsing: the only way document bytes become a tree.

Invoices arrive from outside, so the parser is configured so that content
can never make us read a file, open a connection or expand entities:
no DTD is loaded or validated, entities are not resolved, the network is
off, libxml2 keeps its default resource limits (huge_tree=False) and
XInclude is never processed (lxml only does it on an explicit call). A
DOCTYPE has no legitimate use in UBL or CII, so any is refused outright.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import ctypes.util
import functools
import re
import threading
from typing import Any, Final

from lxml import etree

from .model import FATAL, DocumentRejected, Finding

MAX_XML_BYTES: Final = 20 * 1024 * 1024
# Real invoices nest about 10 deep; libxml2 itself stops at 256 without
# huge_tree, we stop a little earlier with a clearer message.
MAX_DEPTH: Final = 200
# The prolog (declaration, comments, PIs, DOCTYPE) is looked for in this
# many leading bytes only; a DOCTYPE hidden further still fails after parsing.
_PROLOG_SCAN_BYTES: Final = 64 * 1024

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parser objects must not be shared between threads.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            dtd_validation=False,
            load_dtd=False,
            huge_tree=False,
            remove_blank_text=False,
            recover=False,
        )
        _local.parser = parser
    return parser


def _reject(message: str, rule: str = "PARSE") -> DocumentRejected:
    return DocumentRejected(Finding(rule=rule, severity=FATAL, location="", message=message))


def _decode_head(data: bytes) -> str:
    head = data[:_PROLOG_SCAN_BYTES]
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            return head[len(bom) :].decode(codec, errors="replace")
    # UTF-16 without BOM still starts with "<" next to a NUL byte.
    if head[:2] == b"<\x00":
        return head.decode("utf-16-le", errors="replace")
    if head[:2] == b"\x00<":
        return head.decode("utf-16-be", errors="replace")
    # Every other encoding XML allows is ASCII-compatible for markup.
    return head.decode("latin-1")


_PROLOG_ITEM = re.compile(r"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)


def _prolog_has_doctype(head: str) -> bool:
    pos = 0
    while True:
        match = _PROLOG_ITEM.match(head, pos)
        if match is None or match.end() == pos:
            break
        pos = match.end()
    return head.startswith("<!DOCTYPE", pos)


def looks_like_xml(data: bytes) -> bool:
    """Cheap sniff used to word the finding for things that are not XML."""
    head = _decode_head(data).lstrip("\ufeff \t\r\n")
    return head.startswith("<")


def _depth_exceeds(root: etree._Element, limit: int) -> bool:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_xml(data: bytes, what: str = "document") -> etree._Element:
    """Parse untrusted bytes, or raise DocumentRejected with a PARSE finding."""
    if not data:
        raise _reject(f"empty {what}")
    if len(data) > MAX_XML_BYTES:
        raise _reject(
            f"{what} is {len(data)} bytes, larger than the {MAX_XML_BYTES} bytes accepted",
            rule="PARSE",
        )
    head = _decode_head(data)
    if not head.lstrip("\ufeff \t\r\n").startswith("<"):
        raise _reject(f"{what} is not XML (it does not start with '<')", rule="FORMAT")
    if _prolog_has_doctype(head):
        raise _reject(f"{what} has a DOCTYPE declaration; DTDs and entities are not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        message = str(exc)
        if "Excessive depth" in message:
            raise _reject(f"{what} is nested deeper than {MAX_DEPTH} elements") from None
        raise _reject(f"{what} is not well-formed XML: {message}") from None
    except (ValueError, etree.LxmlError) as exc:
        raise _reject(f"{what} could not be parsed: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _reject(f"{what} has a DOCTYPE declaration; DTDs and entities are not allowed")
    if _depth_exceeds(root, MAX_DEPTH):
        raise _reject(f"{what} is nested deeper than {MAX_DEPTH} elements")
    return root


def parse_trusted_output(text: str) -> etree._Element:
    """Parse XML we produced ourselves (SVRL) with the same hardened parser.

    The SVRL echoes document content (values in messages), so it gets the
    same treatment, minus the depth walk: SVRL is flat by construction.
    """
    # Encoded first: lxml refuses str input that carries an XML declaration.
    return etree.fromstring(text.encode("utf-8"), _parser())


# Below this, freed trees are small and the allocator reuses their memory.
RELEASE_ABOVE_CHARS: Final = 1024 * 1024


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_freed_memory() -> None:
    """Hand memory that a large freed lxml tree leaves in glibc's heap back
    to the system. Saxon allocates its own heap elsewhere and cannot reuse
    it, so without this a large document costs both trees at once."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


def serialise_for_xslt(root: etree._Element) -> str:
    """Canonical-enough text of the parsed tree for Saxon.

    Saxon gets our re-serialisation, never the original bytes: it has no
    DOCTYPE (refused above) and is always UTF-8, so Saxon's own parser has
    nothing to resolve.
    """
    text: str = etree.tostring(root, encoding="unicode")
    return text
