"""Hand-built PDFs for the container tests: every object is spelled out, so a
test can place attachments exactly where a hostile producer would."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass


def build_pdf(objects: Sequence[bytes]) -> bytes:
    """A PDF of these objects (numbered from 1, the first is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def pdf_string(text: str) -> bytes:
    """A PDF literal string."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def embedded_file(data: bytes, extra: bytes = b"") -> bytes:
    """The body of an /EmbeddedFile stream object; ``extra`` goes into its dictionary."""
    return (
        b"<< /Type /EmbeddedFile /Subtype /text#2Fxml"
        + extra
        + b" /Length %d >>\nstream\n" % len(data)
        + data
        + b"\nendstream"
    )


@dataclass(frozen=True)
class Attachment:
    """One embedded file, and where the catalog lists it."""

    name: str
    data: bytes
    in_tree: bool = True  # in the /EmbeddedFiles name tree
    in_af: bool = True  # in the catalog's /AF array
    tree_key: str | None = None  # the name-tree key, when not the file name
    uf_data: bytes | None = None  # a second stream, under /EF /UF
    deflate: bool = False


def pdf_with_attachments(attachments: Sequence[Attachment]) -> bytes:
    """A one-page PDF whose catalog lists these attachments, each with its own filespec."""
    objects: list[bytes] = [
        b"",  # the catalog, written last
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
    ]
    tree: list[bytes] = []
    af: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    for attachment in attachments:
        ef = b"/F %d 0 R" % add(_stream(attachment.data, attachment.deflate))
        if attachment.uf_data is not None:
            ef += b" /UF %d 0 R" % add(_stream(attachment.uf_data, attachment.deflate))
        name = pdf_string(attachment.name)
        spec = add(
            b"<< /Type /Filespec /F " + name + b" /UF " + name + b" /AFRelationship /Data /EF << " + ef + b" >> >>"
        )
        if attachment.in_tree:
            key = pdf_string(attachment.tree_key if attachment.tree_key is not None else attachment.name)
            tree.append(key + b" %d 0 R" % spec)
        if attachment.in_af:
            af.append(b"%d 0 R" % spec)
    objects[0] = (
        b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names ["
        + b" ".join(tree)
        + b"] >> >> /AF ["
        + b" ".join(af)
        + b"] >>"
    )
    return build_pdf(objects)


def _stream(data: bytes, deflate: bool) -> bytes:
    if deflate:
        return embedded_file(zlib.compress(data), b" /Filter /FlateDecode")
    return embedded_file(data)
