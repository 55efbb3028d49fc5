"""invoicectl's file transfers: uploads go header first in chunks of at
most 1 MiB with the hash announced; downloads land under their name only
when size and hash match, and leave nothing behind otherwise; names from
the server cannot escape the chosen directory."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from invoicing.v1 import common_pb2, ingest_pb2

from invoicectl import transfer
from invoicectl.render import document_ref_json
from invoicectl.transfer import (
    CHUNK_BYTES,
    DestinationExists,
    FileSink,
    LocalFile,
    ProtocolError,
    SourceError,
    StreamSink,
    VerificationError,
    WriteError,
    default_filename,
    open_sink,
    prepare,
    receive_document,
    safe_filename,
    upload_requests,
)
from invoicing_common.grpc_streams import send_stream

MiB = 1024 * 1024


def _file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    # Not one repeated byte, so a chunk out of order would change the hash.
    path.write_bytes(bytes(i % 251 for i in range(size)))
    return path


def _ref(data: bytes, filename: str = "invoice.xml", **overrides: Any) -> common_pb2.DocumentRef:
    fields: dict[str, Any] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "media_type": "application/xml",
        "filename": filename,
        "origin": common_pb2.FILE_ORIGIN_INVOICE,
    }
    return common_pb2.DocumentRef(**(fields | overrides))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- upload ---------------------------------------------------------------


def test_each_file_goes_header_first_then_chunks_of_at_most_one_mib(tmp_path: Path) -> None:
    invoice = LocalFile.probe(_file(tmp_path, "big.xml", 2 * MiB + 5))
    attachment = LocalFile.probe(_file(tmp_path, "spec.pdf", 10), media_type="application/pdf")

    messages = list(upload_requests([invoice, attachment], idempotency_key="k-1"))

    parts = [m.WhichOneof("part") for m in messages]
    assert parts == ["file", "chunk", "chunk", "chunk", "file", "chunk"]
    assert all(len(m.chunk) <= CHUNK_BYTES for m in messages)
    first, second = messages[0].file, messages[4].file
    assert (first.filename, first.media_type, first.sha256) == ("big.xml", "", invoice.sha256)
    assert (second.filename, second.media_type) == ("spec.pdf", "application/pdf")
    # The key belongs to the first message only.
    assert [m.idempotency_key for m in messages] == ["k-1"] + [""] * 5
    sent = b"".join(m.chunk for m in messages[1:4])
    assert hashlib.sha256(sent).hexdigest() == invoice.sha256 == hashlib.sha256(invoice.path.read_bytes()).hexdigest()
    assert len(sent) == invoice.size


def test_an_empty_file_is_a_header_without_chunks(tmp_path: Path) -> None:
    empty = LocalFile.probe(_file(tmp_path, "empty.xml", 0))
    messages = list(upload_requests([empty]))
    assert [m.WhichOneof("part") for m in messages] == ["file"]
    assert messages[0].file.sha256 == hashlib.sha256(b"").hexdigest()


def test_progress_counts_every_byte_sent(tmp_path: Path) -> None:
    local = LocalFile.probe(_file(tmp_path, "big.xml", 3 * MiB + 1))
    counted: list[int] = []
    list(upload_requests([local], on_sent=counted.append))
    assert sum(counted) == local.size
    assert max(counted) <= CHUNK_BYTES


def test_a_file_changed_after_hashing_stops_the_stream(tmp_path: Path) -> None:
    path = _file(tmp_path, "a.xml", 100)
    local = LocalFile.probe(path)
    path.write_bytes(b"x" * 100)  # same size, other bytes
    with pytest.raises(SourceError, match="changed"):
        list(upload_requests([local]))


def test_a_file_that_grew_after_hashing_stops_before_sending_more(tmp_path: Path) -> None:
    path = _file(tmp_path, "a.xml", 100)
    local = LocalFile.probe(path)
    path.write_bytes(b"x" * 200)
    sent: list[ingest_pb2.UploadInvoiceRequest] = []
    with pytest.raises(SourceError, match="grew"):
        for message in upload_requests([local]):
            sent.append(message)
    assert sum(len(m.chunk) for m in sent) == 0


def test_small_invoices_go_whole_big_ones_and_attachments_streamed(tmp_path: Path) -> None:
    small = _file(tmp_path, "small.xml", 10)
    big = _file(tmp_path, "big.xml", 101)
    note = _file(tmp_path, "note.txt", 3)

    whole = prepare(small, threshold=100)
    assert whole.data == small.read_bytes() and whole.files == ()

    streamed = prepare(big, threshold=100)
    assert streamed.data is None
    assert [f.filename for f in streamed.files] == ["big.xml"]

    with_attachment = prepare(small, [note], threshold=100)
    assert with_attachment.data is None
    assert [(f.filename, f.media_type) for f in with_attachment.files] == [
        ("small.xml", ""),
        ("note.txt", "text/plain"),
    ]
    assert with_attachment.total_bytes == 13


def test_unknown_attachment_types_are_left_to_the_server() -> None:
    assert transfer.guess_media_type("scan.pdf") == "application/pdf"
    assert transfer.guess_media_type("blob.zz-unknown") == ""


class _FakeUpload:
    """Stands for ``stub.UploadInvoice.future``: consumes the requests on
    another thread, as gRPC does, and records how the call ended."""

    def __init__(self, refuse_after: int | None = None) -> None:
        self.written: list[ingest_pb2.UploadInvoiceRequest] = []
        self.half_closed = False
        self.cancelled = threading.Event()
        self.timeout: float | None = None
        self._refuse_after = refuse_after
        self._done = threading.Event()
        self._callbacks: list[Callable[[Any], None]] = []

    def __call__(
        self, requests: Iterator[ingest_pb2.UploadInvoiceRequest], timeout: float, metadata: object = ()
    ) -> _FakeUpload:
        self.timeout = timeout
        threading.Thread(target=self._consume, args=(requests,)).start()
        return self

    def _consume(self, requests: Iterator[ingest_pb2.UploadInvoiceRequest]) -> None:
        for request in requests:
            if self.cancelled.is_set() or len(self.written) == self._refuse_after:
                break
            self.written.append(request)
        else:
            self.half_closed = not self.cancelled.is_set()
        self._finish()

    def _finish(self) -> None:
        if not self._done.is_set():
            self._done.set()
            for callback in self._callbacks:
                callback(self)

    def cancel(self) -> bool:
        self.cancelled.set()
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._callbacks.append(fn)

    def result(self) -> ingest_pb2.SubmitInvoiceResponse:
        if self._refuse_after is not None:
            raise RuntimeError("refused")
        if self.cancelled.is_set():
            raise RuntimeError("cancelled")
        return ingest_pb2.SubmitInvoiceResponse(invoice_id="inv-1")


async def test_an_upload_is_half_closed_then_answered() -> None:
    upload = _FakeUpload()
    reply = await send_stream(upload, iter([ingest_pb2.UploadInvoiceRequest(chunk=b"a")]), timeout=9)
    assert reply.invoice_id == "inv-1"
    assert upload.half_closed and not upload.cancelled.is_set()
    assert upload.timeout == 9


async def test_a_failing_source_cancels_the_call_before_it_is_closed(tmp_path: Path) -> None:
    path = _file(tmp_path, "a.xml", 100)
    local = LocalFile.probe(path)
    path.write_bytes(b"x" * 100)
    upload = _FakeUpload()
    with pytest.raises(SourceError, match="changed"):
        await send_stream(upload, upload_requests([local]), timeout=9)
    assert upload.cancelled.is_set() and not upload.half_closed


async def test_a_refusal_is_the_calls_own_answer() -> None:
    upload = _FakeUpload(refuse_after=1)
    with pytest.raises(RuntimeError, match="refused"):
        await send_stream(upload, iter([ingest_pb2.UploadInvoiceRequest(chunk=b"a")] * 3), timeout=9)
    assert len(upload.written) == 1


# --- download -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("invoice.xml", "invoice.xml"),
        ("../../etc/passwd", "passwd"),
        ("/etc/cron.d/job", "job"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\docs\\facture.pdf", "facture.pdf"),
        ("..", ""),
        (".", ""),
        ("", ""),
        ("dir/", ""),
        (".bashrc", "bashrc"),
        ("a\x00b\n\r\tc.xml", "abc.xml"),
        ("  spaced name.pdf  ", "spaced name.pdf"),
        ("facture été.xml", "facture été.xml"),
    ],
)
def test_names_from_the_server_stay_in_the_directory(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_long_names_are_cut_to_255_bytes_keeping_the_extension() -> None:
    name = safe_filename("é" * 300 + ".pdf")
    assert name.endswith(".pdf")
    assert len(name.encode()) <= 255


def test_a_document_without_a_usable_name_is_named_after_the_invoice() -> None:
    ref = _ref(b"x", filename="../", media_type="application/pdf")
    assert default_filename(ref, "inv-1") == "inv-1.pdf"
    assert default_filename(_ref(b"x", filename="", media_type=""), "../inv-2") == "inv-2"


def test_a_verified_download_lands_under_its_name(tmp_path: Path) -> None:
    data = b"<Invoice/>" * 1000
    sink = FileSink(tmp_path / "invoice.xml", _ref(data))
    with sink:
        sink.write(data[:4000])
        sink.write(data[4000:])
        sink.commit()
    assert (tmp_path / "invoice.xml").read_bytes() == data
    assert _leftovers(tmp_path) == ["invoice.xml"]


@pytest.mark.parametrize(
    ("received", "message"),
    [
        (b"<Invoice/>!", "sha256"),  # same size, other bytes
        (b"<Invoice/", "received 9 bytes"),  # cut short
    ],
)
def test_a_download_that_does_not_match_leaves_nothing(tmp_path: Path, received: bytes, message: str) -> None:
    sink = FileSink(tmp_path / "invoice.xml", _ref(b"<Invoice/>."))
    with pytest.raises(VerificationError, match=message), sink:
        sink.write(received)
        sink.commit()
    assert _leftovers(tmp_path) == []


def test_more_bytes_than_announced_stop_the_download_at_once(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "invoice.xml", _ref(b"abc"))
    with pytest.raises(VerificationError, match="more than"), sink:
        sink.write(b"abcd")
    assert _leftovers(tmp_path) == []


def test_a_reference_without_a_hash_cannot_be_verified(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="sha256"):
        FileSink(tmp_path / "invoice.xml", _ref(b"abc", sha256=""))
    assert _leftovers(tmp_path) == []


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "invoice.xml"
    target.write_bytes(b"mine")
    with pytest.raises(DestinationExists):
        FileSink(target, _ref(b"new"))
    assert target.read_bytes() == b"mine"

    with FileSink(target, _ref(b"new"), overwrite=True) as sink:
        sink.write(b"new")
        sink.commit()
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == ["invoice.xml"]


def test_a_file_created_during_the_download_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "invoice.xml"
    sink = FileSink(target, _ref(b"new"))
    target.write_bytes(b"arrived meanwhile")
    with pytest.raises(DestinationExists), sink:
        sink.write(b"new")
        sink.commit()
    assert target.read_bytes() == b"arrived meanwhile"
    assert _leftovers(tmp_path) == ["invoice.xml"]


def test_stdout_gets_the_bytes_only_once_verified() -> None:
    stream = io.BytesIO()
    with StreamSink(_ref(b"abc"), stream) as sink:
        sink.write(b"abc")
        assert stream.getvalue() == b""
        sink.commit()
    assert stream.getvalue() == b"abc"

    stream = io.BytesIO()
    with pytest.raises(VerificationError), StreamSink(_ref(b"abc"), stream) as sink:
        sink.write(b"abd")
        sink.commit()
    assert stream.getvalue() == b""


def test_out_chooses_the_destination(tmp_path: Path) -> None:
    ref = _ref(b"x", filename="../../evil.xml")
    (tmp_path / "into").mkdir()
    cases = {"": tmp_path / "evil.xml", "into": tmp_path / "into" / "evil.xml", "named.xml": tmp_path / "named.xml"}
    for out, expected in cases.items():
        sink = open_sink(out, ref, "inv-1", cwd=tmp_path)
        assert isinstance(sink, FileSink)
        assert sink.destination == expected
        sink.discard()
    assert isinstance(open_sink("-", ref, "inv-1", stdout=io.BytesIO()), StreamSink)
    assert _leftovers(tmp_path) == ["into"]


async def _stream(
    *messages: ingest_pb2.GetInvoiceDocumentResponse, fail: Exception | None = None
) -> AsyncIterator[Any]:
    for message in messages:
        yield message
    if fail is not None:
        raise fail


def _chunks(data: bytes) -> list[ingest_pb2.GetInvoiceDocumentResponse]:
    return [ingest_pb2.GetInvoiceDocumentResponse(chunk=data[i : i + 4]) for i in range(0, len(data), 4)]


async def test_a_stream_is_received_and_committed(tmp_path: Path) -> None:
    data = b"<Invoice>0123456789</Invoice>"
    ref = _ref(data)
    counted: list[int] = []
    received = await receive_document(
        _stream(ingest_pb2.GetInvoiceDocumentResponse(document=ref), *_chunks(data)),
        lambda r: open_sink("", r, "inv-1", cwd=tmp_path),
        counted.append,
    )
    assert received.where == str(tmp_path / "invoice.xml")
    assert received.document == ref
    assert (tmp_path / "invoice.xml").read_bytes() == data
    assert sum(counted) == len(data)


async def test_a_stream_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    # What DATA_LOSS looks like to the client: chunks, then the call's error.
    data = b"<Invoice>0123456789</Invoice>"

    class DataLoss(Exception):
        pass

    with pytest.raises(DataLoss):
        await receive_document(
            _stream(ingest_pb2.GetInvoiceDocumentResponse(document=_ref(data)), *_chunks(data)[:2], fail=DataLoss()),
            lambda r: open_sink("", r, "inv-1", cwd=tmp_path),
        )
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [ingest_pb2.GetInvoiceDocumentResponse(chunk=b"abc")],
        [ingest_pb2.GetInvoiceDocumentResponse(document=_ref(b"abc"))] * 2,
    ],
)
async def test_a_stream_out_of_contract_leaves_nothing(
    tmp_path: Path, messages: list[ingest_pb2.GetInvoiceDocumentResponse]
) -> None:
    with pytest.raises(ProtocolError):
        await receive_document(_stream(*messages), lambda r: open_sink("", r, "inv-1", cwd=tmp_path))
    assert _leftovers(tmp_path) == []


async def test_an_unwritable_destination_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="cannot write"):
        await receive_document(
            _stream(ingest_pb2.GetInvoiceDocumentResponse(document=_ref(b"abc"))),
            lambda r: open_sink(str(tmp_path / "missing" / "x.xml"), r, "inv-1", cwd=tmp_path),
        )


def test_document_references_in_json_name_their_origin() -> None:
    ref = _ref(b"abc", filename="spec.pdf", media_type="application/pdf", origin=common_pb2.FILE_ORIGIN_EMBEDDED)
    assert document_ref_json(ref) == {
        "sha256": hashlib.sha256(b"abc").hexdigest(),
        "size_bytes": 3,
        "media_type": "application/pdf",
        "filename": "spec.pdf",
        "origin": "embedded",
    }
    assert document_ref_json(common_pb2.DocumentRef(origin=42))["origin"] == "42"  # type: ignore[arg-type]
