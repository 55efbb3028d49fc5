"""Ceilings measured in the same run, on the same machine and documents.

* ingest: a bare grpc.aio server (own process) that answers SubmitInvoice at
  once, driven by the same closed-loop submitter;
* Kafka: aiokafka produce -> consume of the same payloads on a throw-away
  topic, with the shared producer's settings (acks=all, idempotent, a 5 ms
  linger);
* validation: SaxonC-HE plus the official compiled schematrons (XSLT) and
  nothing else, one process per core.

A pipeline figure divided by its ceiling is a ratio that holds on a noisy,
shared machine better than either absolute does.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc
from lxml import etree

from invoicectl.bench.generator import BenchDocument
from invoicectl.bench.report import GrpcBaseline, KafkaBaseline, Latency, ValidationBaseline, rate
from invoicectl.bench.runner import Authorize, BenchError, Submitter, Tick, wait_ready
from invoicectl.config import GRPC_OPTIONS
from invoicing_common import topics
from invoicing_common.kafka import ensure_topics, producer
from invoicing_common.settings import KafkaClientSettings
from invoicing_validate.validation.artefacts import Artefacts
from invoicing_validate.validation.engine import plan_checks
from invoicing_validate.validation.formats import classify_root
from invoicing_validate.validation.summary import extract_summary

START_TIMEOUT_SECONDS = 60.0
KAFKA_TIMEOUT_SECONDS = 300.0

# --- ingest ceiling: a bare gRPC server ------------------------------------------


class _BareIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Answers at once with a response of the real size: no checks, no I/O."""

    async def SubmitInvoice(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.SubmitInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        received_at = Timestamp()
        received_at.GetCurrentTime()
        return ingest_pb2.SubmitInvoiceResponse(invoice_id=str(uuid.uuid4()), received_at=received_at)

    async def SubmitInvoices(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.SubmitInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ingest_pb2.SubmitInvoiceResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bench measures SubmitInvoice only")
        yield ingest_pb2.SubmitInvoiceResponse()  # unreachable: abort raises

    async def UploadInvoice(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.UploadInvoiceRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.SubmitInvoiceResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bench measures SubmitInvoice only")
        raise AssertionError("unreachable: abort raises")


def throwaway_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1: the bare server speaks TLS,
    as ingest does, so the ceiling includes the same transport cost."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-bare-grpc")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def _serve_bare(control: Connection, cert: bytes, key: bytes) -> None:
    limit = 32 * 1024 * 1024
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(_BareIngest(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    control.send(port)
    # Serve until the parent says stop (or goes away: recv raises EOFError).
    with contextlib.suppress(EOFError):
        await asyncio.get_running_loop().run_in_executor(None, control.recv)
    await server.stop(1.0)


def serve_bare_grpc(control: Connection, cert: bytes, key: bytes) -> None:
    """Entry point of the bare server's process."""
    asyncio.run(_serve_bare(control, cert, key))


async def grpc_baseline(
    documents: Sequence[BenchDocument], concurrency: int, authorize: Authorize, on_request: Tick
) -> GrpcBaseline:
    """The bare server checks no token; the same bearer metadata is sent so
    that the requests are the same size."""
    cert, key = throwaway_certificate()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve_bare_grpc, args=(child, cert, key), name="bench-bare-grpc", daemon=True)
    process.start()
    try:
        if not await asyncio.to_thread(parent.poll, START_TIMEOUT_SECONDS):
            raise BenchError("the bare gRPC server did not start")
        address = f"127.0.0.1:{parent.recv()}"
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc.aio.secure_channel(address, credentials, options=GRPC_OPTIONS) as channel:
            await wait_ready(channel, address)
            client = Submitter(ingest_pb2_grpc.IngestServiceStub(channel), authorize, on_request)
            t0 = time.perf_counter()
            sent = await client.closed_loop(documents, concurrency)
            elapsed = time.perf_counter() - t0
    finally:
        parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join()
    ok = [s.acked - s.start for s in sent if s.acked is not None]
    return GrpcBaseline(
        requests=len(ok),
        concurrency=concurrency,
        submissions_per_s=rate(len(ok), elapsed),
        ack_latency_ms=Latency.of_seconds(ok),
    )


# --- Kafka ceiling -------------------------------------------------------------------


async def kafka_baseline(
    kafka: KafkaClientSettings, documents: Sequence[BenchDocument], partitions: int, window: int, on_record: Tick
) -> KafkaBaseline:
    """Produce every payload (at most ``window`` unacknowledged) with ingest's
    producer settings while a group-less consumer reads them back."""
    topic = f"invoicing.bench.{uuid.uuid4().hex[:12]}"
    await ensure_topics(kafka, partitions, [topic])
    payloads = [d.data for d in documents]
    consumer = AIOKafkaConsumer(
        **kafka.kafka_client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=topics.MAX_MESSAGE_BYTES,
        max_partition_fetch_bytes=topics.MAX_MESSAGE_BYTES,
        client_id="invoicectl-bench",
    )
    sender = producer(kafka, "invoicectl-bench")
    try:
        await consumer.start()
        await sender.start()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        # A new, empty topic starts at offset 0: no need to ask the broker.
        for tp in tps:
            consumer.seek(tp, 0)

        async def consume() -> float:
            received = 0
            while received < len(payloads):
                batch = await consumer.getmany(timeout_ms=500)
                received += sum(len(records) for records in batch.values())
            return time.perf_counter()

        reading = asyncio.create_task(consume())
        in_flight = asyncio.Semaphore(window)

        def done(_future: asyncio.Future[Any]) -> None:
            in_flight.release()
            on_record()

        futures: list[asyncio.Future[Any]] = []
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            await in_flight.acquire()
            future = await sender.send(topic, value=payload, key=str(i).encode())
            future.add_done_callback(done)
            futures.append(future)
        await asyncio.gather(*futures)
        produced = time.perf_counter()
        try:
            consumed = await asyncio.wait_for(reading, KAFKA_TIMEOUT_SECONDS)
        except TimeoutError:
            message = f"the Kafka baseline did not read its records back in {KAFKA_TIMEOUT_SECONDS:.0f}s"
            raise BenchError(message) from None
    finally:
        await sender.stop()
        await consumer.stop()
        await _delete_topic(kafka, topic)
    return KafkaBaseline(
        records=len(payloads),
        payload_bytes_mean=round(sum(map(len, payloads)) / max(len(payloads), 1), 1),
        partitions=partitions,
        produce_per_s=rate(len(payloads), produced - t0),
        produce_consume_per_s=rate(len(payloads), consumed - t0),
    )


async def _delete_topic(kafka: KafkaClientSettings, topic: str) -> None:
    admin = AIOKafkaAdminClient(**kafka.kafka_client_kwargs(), client_id="invoicectl-bench")
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


# --- validation ceiling: saxonche + official XSLT --------------------------------------


def stylesheets_for(xml: bytes, in_pdf: bool) -> tuple[str, ...]:
    """The official stylesheets our engine would run on this document
    (chosen with the engine's own rules, outside any timing)."""
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    fmt = classify_root(root)
    summary, _ = extract_summary(root, fmt)
    return plan_checks(fmt, summary.profile, None, in_pdf).schematrons


class BareValidator:
    """SaxonC-HE and the compiled official schematrons, nothing else: no
    hardened parse, no XSD, no SVRL interpretation."""

    def __init__(self, artefacts: Artefacts | None = None) -> None:
        from saxonche import PySaxonProcessor

        self._processor = PySaxonProcessor(license=False)
        self._paths = (artefacts or Artefacts.locate()).xslt
        self._compiled: dict[str, Any] = {}

    def compile(self, keys: Sequence[str]) -> None:
        for key in keys:
            if key not in self._compiled:
                compiler = self._processor.new_xslt30_processor()
                self._compiled[key] = compiler.compile_stylesheet(stylesheet_file=str(self._paths[key]))

    def run(self, xml: bytes, keys: Sequence[str]) -> int:
        """Run the stylesheets on ``xml``; returns the SVRL size (so the work
        cannot be skipped)."""
        self.compile(keys)
        node = self._processor.parse_xml(xml_text=xml.decode("utf-8"))
        return sum(len(self._compiled[key].transform_to_string(xdm_node=node)) for key in keys)


_worker: BareValidator | None = None


def _init_worker(keys: Sequence[str], started: Barrier) -> None:
    global _worker
    _worker = BareValidator()
    _worker.compile(keys)
    started.wait()


def _run_chunk(chunk: Sequence[tuple[bytes, tuple[str, ...]]]) -> int:
    assert _worker is not None, "worker not initialised"
    return sum(_worker.run(xml, keys) for xml, keys in chunk)


def _ready() -> int:
    return os.getpid()


def validation_baseline(
    documents: Sequence[BenchDocument], workers: int, on_chunk: Tick, chunk_size: int = 20
) -> ValidationBaseline:
    """Documents/s of the bare official path in ``workers`` processes; the
    processes compile their stylesheets before the clock starts."""
    work = [(d.xml, stylesheets_for(d.xml, d.in_pdf)) for d in documents]
    keys = sorted({k for _, ks in work for k in ks})
    kinds: dict[str, list[str]] = {}
    for d, (_, ks) in zip(documents, work, strict=True):
        kinds.setdefault(d.kind.value, list(ks))
    context = multiprocessing.get_context("spawn")
    started = context.Barrier(workers + 1)
    chunks = [work[i : i + chunk_size] for i in range(0, len(work), chunk_size)]
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(keys, started)) as pool:
        # The pool starts its processes lazily: ask each for a trivial task, then
        # wait until every one has compiled the stylesheets.
        warmups = [pool.submit(_ready) for _ in range(workers)]
        started.wait(timeout=START_TIMEOUT_SECONDS * 5)
        for w in warmups:
            w.result()
        t0 = time.perf_counter()
        futures = [pool.submit(_run_chunk, chunk) for chunk in chunks]
        for f in futures:
            f.add_done_callback(lambda _f: on_chunk())
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t0
    per_s = rate(len(work), elapsed)
    return ValidationBaseline(
        documents=len(work),
        workers=workers,
        docs_per_s=per_s,
        docs_per_s_per_worker=round(per_s / workers, 2),
        stylesheets=kinds,
    )
