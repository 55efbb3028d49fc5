"""Moving files to and from the document archive: `submit` of large
invoices and attachments (IngestService.UploadInvoice) and `download`
(DocumentService.GetInvoiceDocument).

Both directions stream in chunks of at most 1 MiB and never hold a whole
file in memory. Both check SHA-256 end to end: an upload announces each
file's hash (computed in a first pass over the local file) so the server
refuses bytes that do not match, and a download lands under its final name
only once its size and hash match the reference the server sent first.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from invoicing.v1 import common_pb2, ingest_pb2
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MiB = 1024 * 1024
# The contract's bound on one chunk message, both ways.
CHUNK_BYTES = 1 * MiB
# Above this an invoice goes over UploadInvoice: a SubmitInvoice message
# must stay under gRPC's default 4 MiB receive limit, whatever a server's
# own setting is, with room for the rest of the message.
UPLOAD_THRESHOLD_BYTES = 3 * MiB
# Smaller transfers end before a bar would tell anyone anything.
PROGRESS_MIN_BYTES = 4 * MiB
_MAX_NAME_BYTES = 255  # a file name's limit on common file systems
_MAX_KEPT_SUFFIX = 16


class SourceError(Exception):
    """A local file to send could not be read, or changed while it was sent."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class DestinationExists(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists")
        self.path = path


class VerificationError(Exception):
    """The bytes received are not the ones the server's reference describes."""


class WriteError(Exception):
    """The download could not be written where it was going."""

    def __init__(self, where: str, exc: OSError) -> None:
        super().__init__(f"cannot write {where}: {exc.strerror or exc}")


class ProtocolError(Exception):
    """The server's stream did not follow the contract (reference first, once)."""


# --- upload ---------------------------------------------------------------


def guess_media_type(filename: str) -> str:
    """The media type an attachment's name suggests; empty when unknown, as
    the server then guesses (from the same name) itself."""
    media_type, _ = mimetypes.guess_type(filename, strict=False)
    return media_type or ""


@dataclass(frozen=True)
class LocalFile:
    """A file to upload, as its first read found it."""

    path: Path
    filename: str
    media_type: str
    size: int
    sha256: str

    @classmethod
    def probe(cls, path: Path, media_type: str = "") -> LocalFile:
        """Hash the file in one streaming pass. Raises OSError."""
        with path.open("rb") as stream:
            digest = hashlib.file_digest(stream, "sha256")
            size = stream.tell()
        return cls(path=path, filename=path.name, media_type=media_type, size=size, sha256=digest.hexdigest())


@dataclass(frozen=True)
class Outgoing:
    """One invoice of a `submit`: sent whole (``data``) over SubmitInvoice(s),
    or streamed (``files``: the invoice, then its attachments) over
    UploadInvoice."""

    path: Path
    data: bytes | None = None
    files: tuple[LocalFile, ...] = ()

    @property
    def total_bytes(self) -> int:
        return len(self.data) if self.data is not None else sum(f.size for f in self.files)


def prepare(path: Path, attachments: Sequence[Path] = (), threshold: int = UPLOAD_THRESHOLD_BYTES) -> Outgoing:
    """Decide how an invoice travels and read what must be read before any
    call, so that an unreadable file stops `submit` before it sends
    anything. Raises OSError."""
    if not attachments and path.stat().st_size <= threshold:
        return Outgoing(path=path, data=path.read_bytes())
    # The invoice's media type is found from its content by the server.
    files = [LocalFile.probe(path)]
    files += [LocalFile.probe(a, guess_media_type(a.name)) for a in attachments]
    return Outgoing(path=path, files=tuple(files))


def upload_requests(
    files: Sequence[LocalFile], idempotency_key: str = "", on_sent: Callable[[int], None] | None = None
) -> Iterator[ingest_pb2.UploadInvoiceRequest]:
    """The UploadInvoice stream: per file a header, then its chunks.

    The file is read again as it is sent; if it no longer has the size and
    hash announced in its header, SourceError is raised after its last
    chunk, before the stream is closed, so that the caller can cancel the
    call and the server stores nothing."""
    for index, local in enumerate(files):
        header = ingest_pb2.UploadFile(filename=local.filename, media_type=local.media_type, sha256=local.sha256)
        yield ingest_pb2.UploadInvoiceRequest(file=header, idempotency_key=idempotency_key if index == 0 else "")
        digest = hashlib.sha256()
        sent = 0
        try:
            with local.path.open("rb") as stream:
                while chunk := stream.read(CHUNK_BYTES):
                    sent += len(chunk)
                    if sent > local.size:
                        raise SourceError(local.path, "grew while being sent")
                    digest.update(chunk)
                    yield ingest_pb2.UploadInvoiceRequest(chunk=chunk)
                    if on_sent is not None:
                        on_sent(len(chunk))
        except OSError as exc:
            raise SourceError(local.path, f"cannot read: {exc.strerror or exc}") from exc
        if sent != local.size or digest.hexdigest() != local.sha256:
            raise SourceError(local.path, "changed while being sent")


# --- download -------------------------------------------------------------


def safe_filename(name: str) -> str:
    """A name from the server made safe to create in a chosen directory:
    its last path component (either separator), without control
    characters or leading dots (no `..`, no hidden files), at most 255
    bytes with its extension kept. Empty when nothing usable remains."""
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".").strip()
    if len(base.encode()) <= _MAX_NAME_BYTES:
        return base
    suffix = Path(base).suffix
    if len(suffix) > _MAX_KEPT_SUFFIX:
        suffix = ""
    stem = base[: len(base) - len(suffix)]
    while len((stem + suffix).encode()) > _MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + suffix


def default_filename(ref: common_pb2.DocumentRef, invoice_id: str) -> str:
    """Where a download goes when not told: the archived name, made safe,
    else the invoice id with the extension of the media type."""
    name = safe_filename(ref.filename)
    if name:
        return name
    media_type = ref.media_type.split(";")[0].strip()
    extension = (mimetypes.guess_extension(media_type) or "") if media_type else ""
    return safe_filename(invoice_id + extension) or "document" + extension


class VerifiedSink:
    """Receives a document's bytes; `commit` checks them against the
    reference and only then makes them visible. `discard` (or leaving the
    `with` block on an exception) leaves nothing behind."""

    label = ""

    def __init__(self, expected: common_pb2.DocumentRef) -> None:
        if len(expected.sha256) != 64:
            raise VerificationError(f"the server announced no usable sha256 ({expected.sha256!r})")
        if expected.size_bytes < 0:
            raise VerificationError(f"the server announced a negative size ({expected.size_bytes})")
        self._expected_sha256 = expected.sha256.lower()
        self._expected_size = expected.size_bytes
        self._digest = hashlib.sha256()
        self._received = 0

    def write(self, chunk: bytes) -> None:
        self._received += len(chunk)
        # Stop at once rather than fill a disk for a server that overruns.
        if self._received > self._expected_size:
            raise VerificationError(f"received more than the {self._expected_size} bytes announced")
        self._digest.update(chunk)
        self._store(chunk)

    def commit(self) -> None:
        if self._received != self._expected_size:
            raise VerificationError(f"received {self._received} bytes, {self._expected_size} announced")
        actual = self._digest.hexdigest()
        if actual != self._expected_sha256:
            raise VerificationError(f"sha256 {actual} does not match the announced {self._expected_sha256}")
        self._publish()

    def discard(self) -> None:
        raise NotImplementedError

    def _store(self, chunk: bytes) -> None:
        raise NotImplementedError

    def _publish(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> VerifiedSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()


class FileSink(VerifiedSink):
    """Writes to a temporary file beside the destination (same file system,
    so the final rename is atomic), then renames it into place."""

    def __init__(self, destination: Path, expected: common_pb2.DocumentRef, *, overwrite: bool = False) -> None:
        super().__init__(expected)
        if not overwrite and (destination.exists() or destination.is_symlink()):
            raise DestinationExists(destination)
        self.destination = destination
        self.label = str(destination)
        self._overwrite = overwrite
        self._temp = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.part")
        # O_EXCL: never write through a file or link that is already there;
        # mode 0o666 lets the umask decide, as for any file the user creates.
        try:
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            # Named after the destination: the temporary name means nothing to the user.
            raise OSError(exc.errno, exc.strerror, str(destination)) from exc
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")

    def _store(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def _publish(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if self._overwrite:
            os.replace(self._temp, self.destination)
            return
        try:
            # link() fails if the name is taken, even by a file created
            # since the check above: no overwrite, without a race.
            os.link(self._temp, self.destination)
        except FileExistsError as exc:
            raise DestinationExists(self.destination) from exc
        except OSError:
            # A file system without hard links: check, then rename.
            if self.destination.exists() or self.destination.is_symlink():
                raise DestinationExists(self.destination) from None
            os.replace(self._temp, self.destination)
        else:
            self._temp.unlink()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._temp.unlink(missing_ok=True)


class StreamSink(VerifiedSink):
    """For `--out -`: spools to an anonymous temporary file and copies to
    the stream only once verified, so a reader of the stream never gets
    bytes that turn out damaged or cut short."""

    label = "-"

    def __init__(self, expected: common_pb2.DocumentRef, stream: IO[bytes]) -> None:
        super().__init__(expected)
        self._stream = stream
        self._spool: IO[bytes] | None = tempfile.TemporaryFile()  # noqa: SIM115 - closed by discard

    def _store(self, chunk: bytes) -> None:
        assert self._spool is not None
        self._spool.write(chunk)

    def _publish(self) -> None:
        assert self._spool is not None
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._stream, CHUNK_BYTES)
        self._stream.flush()

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def open_sink(
    out: str,
    ref: common_pb2.DocumentRef,
    invoice_id: str,
    *,
    overwrite: bool = False,
    stdout: IO[bytes] | None = None,
    cwd: Path | None = None,
) -> VerifiedSink:
    """The sink `--out` asks for: "-" the stream ``stdout``; an existing
    directory, the document's safe name in it; any other path, that path as
    given; nothing, the document's safe name in ``cwd``."""
    if out == "-":
        if stdout is None:
            raise ValueError("--out - needs a stream")
        return StreamSink(ref, stdout)
    here = cwd if cwd is not None else Path.cwd()
    if not out:
        return FileSink(here / default_filename(ref, invoice_id), ref, overwrite=overwrite)
    chosen = Path(out)
    if not chosen.is_absolute():
        chosen = here / chosen
    if chosen.is_dir():
        chosen = chosen / default_filename(ref, invoice_id)
    return FileSink(chosen, ref, overwrite=overwrite)


@dataclass(frozen=True)
class Received:
    document: common_pb2.DocumentRef
    where: str


async def receive_document(
    responses: AsyncIterable[ingest_pb2.GetInvoiceDocumentResponse],
    make_sink: Callable[[common_pb2.DocumentRef], VerifiedSink],
    on_received: Callable[[int], None] | None = None,
) -> Received:
    """Read a GetInvoiceDocument stream into the sink ``make_sink`` opens
    for its reference, and commit it. Any failure (the call's own error,
    DATA_LOSS included, or a mismatch) discards what was received; the
    sink's own I/O failures come as WriteError."""
    ref: common_pb2.DocumentRef | None = None
    sink: VerifiedSink | None = None
    try:
        async for message in responses:
            part = message.WhichOneof("part")
            if part == "document":
                if ref is not None:
                    raise ProtocolError("the server sent a second document reference")
                ref = common_pb2.DocumentRef()
                ref.CopyFrom(message.document)
                sink = make_sink(ref)
            elif part == "chunk":
                if sink is None:
                    raise ProtocolError("the server sent bytes before the document reference")
                sink.write(message.chunk)
                if on_received is not None:
                    on_received(len(message.chunk))
        if ref is None or sink is None:
            raise ProtocolError("the server's stream ended without a document reference")
        sink.commit()
        return Received(document=ref, where=sink.label)
    except BaseException as exc:
        if sink is not None:
            sink.discard()
        # Only the sink does file I/O here: the call reports its own errors.
        if isinstance(exc, OSError):
            raise WriteError(sink.label if sink is not None else str(exc.filename or "the download"), exc) from exc
        raise


# --- progress -------------------------------------------------------------


class ByteProgress:
    """A byte-counting bar on ``console`` (stderr) for one transfer, shown
    only when enabled (a terminal) and the transfer is big enough to be
    worth watching; transient, so nothing stays in the terminal after."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self._console = console
        self._enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, label: str, total: int) -> None:
        if not self._enabled or total <= PROGRESS_MIN_BYTES or self._progress is not None:
            return
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, size: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, size)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
