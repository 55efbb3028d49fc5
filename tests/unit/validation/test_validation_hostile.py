"""Hostile input: every case must end in a finding, never an exception, fast,
without reading local files, opening connections or eating memory."""

from __future__ import annotations

import resource
import socket
import time
import zlib
from collections.abc import Callable, Iterator

import pytest

from invoicing_validate.validation import ValidationReport, Validator
from tests.unit.validation.pdf_support import Attachment, build_pdf, embedded_file, pdf_with_attachments

ReadSample = Callable[[str], bytes]

MAX_SECONDS = 2.0
MAX_EXTRA_RSS_BYTES = 256 * 1024 * 1024
# A file every Linux machine has, whose content we can recognise if leaked.
LOCAL_FILE = "/etc/passwd"
CBC = b"urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CBC_ID_WITH_ENTITY = b'<cbc:ID xmlns:cbc="' + CBC + b'">&x;</cbc:ID></Invoice>'


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local TCP port that records whether anything connected to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _url(sock: socket.socket, path: str) -> bytes:
    host, port = sock.getsockname()
    return f"http://{host}:{port}/{path}".encode()


def _assert_no_connection(sock: socket.socket) -> None:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return
    conn.close()
    pytest.fail("the validator opened a connection because of document content")


def _max_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _check(validator: Validator, data: bytes) -> ValidationReport:
    before = _max_rss_bytes()
    start = time.perf_counter()
    report = validator.validate(data)
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f}s"
    assert _max_rss_bytes() - before < MAX_EXTRA_RSS_BYTES
    assert not report.valid
    assert report.findings, "a rejected document must carry a finding"
    assert all(f.severity in ("fatal", "warning") for f in report.findings)
    assert "root:x:" not in repr(report)
    return report


def _only_rule(report: ValidationReport) -> str:
    rules = {f.rule for f in report.findings}
    assert len(rules) == 1, report.findings
    return rules.pop()


def _billion_laughs() -> bytes:
    entities = [b'<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        refs = (b"&lol%d;" % (i - 1)) * 10
        entities.append(b'<!ENTITY lol%d "%s">' % (i, refs))
    return (
        b'<?xml version="1.0"?>\n<!DOCTYPE Invoice [' + b"".join(entities) + b"]>\n"
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&lol9;</Invoice>'
    )


def test_billion_laughs(validator: Validator) -> None:
    assert _only_rule(_check(validator, _billion_laughs())) == "PARSE"


def test_quadratic_blowup(validator: Validator) -> None:
    data = (
        b'<!DOCTYPE Invoice [<!ENTITY a "' + b"A" * 50_000 + b'">]>'
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">' + b"&a;" * 50_000 + b"</Invoice>"
    )
    report = _check(validator, data)
    assert _only_rule(report) == "PARSE"
    assert "DOCTYPE" in report.findings[0].message


def test_external_entity_file(validator: Validator) -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE Invoice [<!ENTITY x SYSTEM "file://'
        + LOCAL_FILE.encode()
        + b'">]><Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'
        + CBC_ID_WITH_ENTITY
    )
    assert _only_rule(_check(validator, data)) == "PARSE"


def test_external_entity_network(validator: Validator, listener: socket.socket) -> None:
    data = (
        b'<!DOCTYPE Invoice [<!ENTITY x SYSTEM "' + _url(listener, "x") + b'">]>'
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&x;</Invoice>'
    )
    assert _only_rule(_check(validator, data)) == "PARSE"
    _assert_no_connection(listener)


def test_external_dtd(validator: Validator, listener: socket.socket) -> None:
    data = (
        b'<?xml version="1.0"?><!DOCTYPE Invoice SYSTEM "' + _url(listener, "invoice.dtd") + b'">'
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>'
    )
    assert _only_rule(_check(validator, data)) == "PARSE"
    _assert_no_connection(listener)


def test_parameter_entities(validator: Validator, listener: socket.socket) -> None:
    data = (
        b'<!DOCTYPE Invoice [<!ENTITY % remote SYSTEM "' + _url(listener, "evil.dtd") + b'">'
        b'<!ENTITY % file SYSTEM "file://' + LOCAL_FILE.encode() + b'">%remote;]>'
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>'
    )
    assert _only_rule(_check(validator, data)) == "PARSE"
    _assert_no_connection(listener)


def test_doctype_after_comment_and_pi(validator: Validator) -> None:
    data = (
        b'<?xml version="1.0"?><!-- hello --><?pi x?>\n<!DOCTYPE Invoice []>'
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>'
    )
    assert _only_rule(_check(validator, data)) == "PARSE"


def test_xinclude_is_not_processed(validator: Validator, read_sample: ReadSample, listener: socket.socket) -> None:
    include = (
        b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="'
        + LOCAL_FILE.encode()
        + b'" parse="text"/><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="'
        + _url(listener, "x.xml")
        + b'"/>'
    )
    data = read_sample("ubl-invoice-valid.xml").replace(
        b"<cbc:BuyerReference>SERV-ACHATS-17</cbc:BuyerReference>",
        b"<cbc:BuyerReference>SERV-ACHATS-17</cbc:BuyerReference>" + include,
    )
    report = _check(validator, data)
    # The include elements are just unknown elements to the schema.
    assert "XSD" in report.rules()
    assert report.summary.buyer_reference == "SERV-ACHATS-17"
    _assert_no_connection(listener)


def test_schema_location_url_is_not_fetched(
    validator: Validator, read_sample: ReadSample, listener: socket.socket
) -> None:
    data = read_sample("ubl-invoice-invalid-rules.xml").replace(
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"',
        b'<Invoice xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2 '
        + _url(listener, "evil.xsd")
        + b'" xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"',
    )
    report = _check(validator, data)
    assert "BR-CO-10" in report.rules()
    _assert_no_connection(listener)


def test_deep_nesting(validator: Validator) -> None:
    data = b"<a>" * 100_000 + b"</a>" * 100_000
    report = _check(validator, data)
    assert _only_rule(report) == "PARSE"
    assert "nested deeper" in report.findings[0].message


def test_nesting_just_over_our_limit(validator: Validator) -> None:
    data = (
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'
        + b"<x>" * 210
        + b"</x>" * 210
        + b"</Invoice>"
    )
    report = _check(validator, data)
    assert _only_rule(report) == "PARSE"
    assert "nested deeper than 200" in report.findings[0].message


def test_huge_text_node(validator: Validator) -> None:
    data = (
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"><x>'
        + b"A" * (30 * 1024 * 1024)
        + b"</x></Invoice>"
    )
    report = _check(validator, data)
    assert _only_rule(report) == "PARSE"
    assert "larger than" in report.findings[0].message


def test_empty(validator: Validator) -> None:
    report = _check(validator, b"")
    assert _only_rule(report) == "FORMAT"
    assert report.findings[0].message == "empty document"


def test_whitespace_only(validator: Validator) -> None:
    assert _only_rule(_check(validator, b"  \n\t ")) == "FORMAT"


def test_truncated(validator: Validator, read_sample: ReadSample) -> None:
    data = read_sample("ubl-invoice-valid.xml")
    report = _check(validator, data[: len(data) // 2])
    assert _only_rule(report) == "PARSE"
    assert "not well-formed" in report.findings[0].message


def test_not_xml(validator: Validator) -> None:
    report = _check(validator, b"\x00\x01\x02binary\xff\xfe garbage")
    assert _only_rule(report) == "FORMAT"


def test_json_is_not_xml(validator: Validator) -> None:
    report = _check(validator, b'{"invoice": 1}')
    assert _only_rule(report) == "FORMAT"
    assert "not XML" in report.findings[0].message


def test_utf16_non_invoice(validator: Validator) -> None:
    data = '<?xml version="1.0" encoding="UTF-16"?><note>é</note>'.encode("utf-16")
    report = _check(validator, data)
    assert _only_rule(report) == "FORMAT"
    assert "'note'" in report.findings[0].message


def test_utf16_with_doctype(validator: Validator) -> None:
    data = '<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'.encode("utf-16")
    assert _only_rule(_check(validator, data)) == "PARSE"


def test_mislabelled_encoding(validator: Validator) -> None:
    data = '<?xml version="1.0" encoding="UTF-8"?><x>é</x>'.encode("utf-16-le")
    report = _check(validator, data)
    assert report.findings[0].rule in ("PARSE", "FORMAT")


def test_garbage_pdf(validator: Validator) -> None:
    data = b"%PDF-1.7\n" + bytes(range(256)) * 4000 + b"\n%%EOF"
    report = _check(validator, data)
    assert _only_rule(report) == "FORMAT"
    assert report.format == "facturx-pdf"


def test_truncated_pdf(validator: Validator, blank_pdf: bytes) -> None:
    report = _check(validator, blank_pdf[: len(blank_pdf) // 3])
    assert _only_rule(report) in ("FORMAT", "PARSE")


def test_pdf_without_xml(validator: Validator, blank_pdf: bytes) -> None:
    assert _only_rule(_check(validator, blank_pdf)) == "FORMAT"


def _pdf_with_embedded(stream: bytes, extra: bytes = b"") -> bytes:
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R"
            b" /Names << /EmbeddedFiles << /Names [(factur-x.xml) 4 0 R] >> >> /AF [4 0 R] >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
            b"<< /Type /Filespec /F (factur-x.xml) /UF (factur-x.xml) /AFRelationship /Data /EF << /F 5 0 R >> >>",
            embedded_file(stream, extra),
        ]
    )


def test_compression_bomb_in_pdf(validator: Validator) -> None:
    # 256 MiB of zeros deflate to about 250 KiB.
    compressor = zlib.compressobj(9)
    chunk = b"\0" * (1024 * 1024)
    compressed = b"".join(compressor.compress(chunk) for _ in range(256)) + compressor.flush()
    data = _pdf_with_embedded(compressed, b" /Filter /FlateDecode")
    report = _check(validator, data)
    assert _only_rule(report) == "PARSE"
    assert "size" in report.findings[0].message


def test_hand_built_pdf_is_read(validator: Validator, read_sample: ReadSample) -> None:
    # Same builder as the bomb, with a sane stream: proves the bomb test
    # fails for the right reason.
    xml = read_sample("cii-invoice-valid.xml")
    report = validator.validate(_pdf_with_embedded(zlib.compress(xml), b" /Filter /FlateDecode"))
    assert report.valid, report.findings


def test_pdf_with_hostile_embedded_xml(validator: Validator) -> None:
    report = _check(validator, _pdf_with_embedded(_billion_laughs()))
    assert _only_rule(report) == "PARSE"
    assert "embedded XML" in report.findings[0].message


def test_pdf_with_unsupported_filter(validator: Validator) -> None:
    data = _pdf_with_embedded(b"garbage", b" /Filter /NoSuchDecode")
    report = _check(validator, data)
    assert report.findings[0].rule in ("FORMAT", "PARSE")


def test_pdf_with_lzw_is_refused(validator: Validator) -> None:
    # PDF/A forbids LZW, and qpdf does not bound what it decodes to.
    report = _check(validator, _pdf_with_embedded(b"\x80\x0b\x60\x50\x22\x0c\x0c\x85\x01", b" /Filter /LZWDecode"))
    assert _only_rule(report) == "FORMAT"
    assert "'/LZWDecode' is not one an embedded file may use" in report.findings[0].message


def test_pdf_stream_with_many_filters_is_refused(validator: Validator) -> None:
    report = _check(validator, _pdf_with_embedded(b"3c782f3e", b" /Filter [" + b"/AHx " * 30 + b"]"))
    assert _only_rule(report) == "FORMAT"
    assert "30 filters, more than the 4 accepted" in report.findings[0].message


def test_compression_bomb_behind_a_predictor(validator: Validator) -> None:
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    params = b" /Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 1 >>"
    report = _check(validator, _pdf_with_embedded(bomb, params))
    assert _only_rule(report) == "PARSE"
    assert "more than the accepted size" in report.findings[0].message


def test_pdf_nested_past_the_parser_limit(validator: Validator) -> None:
    nested = b"<< /Type /EmbeddedFile /X " + b"[" * 100_000 + b"]" * 100_000 + b" /Length 1 >>\nstream\nx\nendstream"
    data = _pdf_with_embedded(b"").replace(embedded_file(b""), nested)
    report = _check(validator, data)
    assert _only_rule(report) == "FORMAT"


def test_unreadable_pdf_message_names_no_memory_address(validator: Validator) -> None:
    # The PDF library names its input by a Python object's address; the sender gets the reason only.
    report = _check(validator, b"%PDF-1.7\n" + b"1 0 obj << /A [0 0] >> endobj\n" * 1000)
    [finding] = report.findings
    assert finding.message.startswith("not a readable PDF: ")
    assert "0x" not in finding.message and "BytesIO" not in finding.message


def test_pdf_with_cyclic_name_tree(validator: Validator) -> None:
    data = build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles 3 0 R >> >>",
            b"<< /Type /Pages /Kids [] /Count 0 >>",
            b"<< /Kids [3 0 R 3 0 R] >>",
        ]
    )
    assert _only_rule(_check(validator, data)) == "FORMAT"


def test_many_hostile_documents_in_a_row_leave_validator_usable(validator: Validator, read_sample: ReadSample) -> None:
    for payload in (b"", b"<", _billion_laughs(), b"%PDF-1.4 junk", b"<a>" * 300):
        validator.validate(payload)
    assert validator.validate(read_sample("ubl-invoice-valid.xml")).valid


def _spec(name: bytes, stream: int) -> bytes:
    return b"<< /Type /Filespec /F (" + name + b") /EF << /F %d 0 R >> >>" % stream


def _invoice_beyond_a_deep_tree(xml: bytes) -> bytes:
    # The validated invoice at the root of the name tree, another one 25 levels down.
    chain = [b"<< /Names [(factur-x.xml) 4 0 R] /Kids [9 0 R] >>"]
    chain += [b"<< /Kids [%d 0 R] >>" % (10 + i) for i in range(24)]
    chain.append(b"<< /Names [(factur-x.xml) 6 0 R] >>")
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles 8 0 R >> >>",
            b"<< /Type /Pages /Kids [] /Count 0 >>",
            b"<< >>",
            _spec(b"factur-x.xml", 5),
            embedded_file(xml),
            _spec(b"factur-x.xml", 7),
            embedded_file(xml.replace(b"842109373", b"732829320")),
            *chain,
        ]
    )


def _invoice_beyond_many_files(xml: bytes) -> bytes:
    # 1000 harmless entries first, the unchecked invoice as the 1001st.
    filler = b" ".join(b"(note-%04d.txt) 6 0 R" % i for i in range(1000))
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names [(factur-x.xml) 4 0 R "
            + filler
            + b" (factur-x.xml) 8 0 R] >> >> >>",
            b"<< /Type /Pages /Kids [] /Count 0 >>",
            b"<< >>",
            _spec(b"factur-x.xml", 5),
            embedded_file(xml),
            _spec(b"note.txt", 7),
            embedded_file(b"note"),
            _spec(b"factur-x.xml", 9),
            embedded_file(xml.replace(b"842109373", b"732829320")),
        ]
    )


@pytest.mark.parametrize("build", [_invoice_beyond_a_deep_tree, _invoice_beyond_many_files])
def test_attachments_beyond_the_walk_limits_reject(
    validator: Validator, read_sample: ReadSample, build: Callable[[bytes], bytes]
) -> None:
    # Stopping the walk quietly would validate the first invoice and deliver the other unchecked.
    report = _check(validator, build(read_sample("cii-invoice-valid.xml")))
    assert _only_rule(report) == "FORMAT"
    assert "cannot" in report.findings[0].message


def test_many_copies_of_the_invoice_are_not_all_decoded(validator: Validator, read_sample: ReadSample) -> None:
    xml = read_sample("cii-invoice-valid.xml")
    report = _check(validator, pdf_with_attachments([Attachment("factur-x.xml", xml)] * 5))
    assert _only_rule(report) == "FACTURX-AMBIGUOUS"
    assert "5 invoice XML attachment streams" in report.findings[0].message


def test_copies_decoding_past_the_total_are_refused(validator: Validator) -> None:
    # Three identical copies of 15 MiB each: each is within the per-stream limit, together they are not.
    big = b"<x>" + b" " * (15 * 1024 * 1024) + b"</x>"
    pdf = pdf_with_attachments([Attachment("factur-x.xml", big, deflate=True)] * 3)
    report = _check(validator, pdf)
    assert _only_rule(report) == "PARSE"
    assert "in total" in report.findings[0].message
