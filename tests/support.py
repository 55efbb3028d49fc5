"""Helpers for tests that drive the running stack."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from invoicing.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc
from lxml import etree

from invoicectl.kafka_follow import StatusFollower
from invoicing_common.kafka import assign_all, read_to_end

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
UBL_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CII_RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
CII_RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
FINAL = {201, 203, 213}


class Stack:
    def __init__(self) -> None:
        missing = [
            v
            for v in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "INGEST_ADDR", "STATUS_ADDR")
            if not os.environ.get(v)
        ]
        if missing:
            pytest.fail(
                f"{', '.join(missing)} not set: run the suite with `make test` (it starts the stack), "
                "or `make up && . .run/env` first"
            )
        self.kafka = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        self.database_url = os.environ["DATABASE_URL"]
        self.ingest = os.environ["INGEST_ADDR"]
        self.status = os.environ["STATUS_ADDR"]
        self.route = os.environ.get("ROUTE_ADDR", "127.0.0.1:17003")
        self.validate = os.environ.get("VALIDATE_ADDR", "127.0.0.1:17002")
        self.platform_id = os.environ.get("PLATFORM_ID", "local")


def unique_invoice(sample: str, number: str | None = None) -> tuple[bytes, str]:
    """A sample with a fresh invoice number (BT-1), so each test's invoice is
    new to the pipeline; returns (document, invoice number)."""
    number = number or f"T-{uuid.uuid4().hex[:12]}"
    root = etree.fromstring((SAMPLES / sample).read_bytes(), etree.XMLParser(resolve_entities=False))
    if root.tag.startswith(f"{{{CII_RSM}}}"):
        node = root.find(f"{{{CII_RSM}}}ExchangedDocument/{{{CII_RAM}}}ID")
    else:
        node = root.find(f"{{{UBL_CBC}}}ID")
    assert node is not None, f"{sample} has no invoice number element"
    node.text = number
    # A unique comment: two calls never give the same bytes, so only an
    # explicit resubmission of the same document counts as a retry.
    root.append(etree.Comment(f" test {uuid.uuid4().hex} "))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8"), number


def submitter() -> tuple[tuple[str, str], ...]:
    """Metadata naming a fresh submitter, so content-based retry detection
    never links one test's documents to another's."""
    return (("x-submitter", f"test-{uuid.uuid4().hex}"),)


async def submit(
    ingest_addr: str, document: bytes, filename: str, key: str = "",
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> ingest_pb2.SubmitInvoiceResponse:  # fmt: skip
    async with grpc.aio.insecure_channel(ingest_addr, options=GRPC_OPTIONS) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.SubmitInvoiceRequest(document=document, filename=filename, idempotency_key=key)
        reply: ingest_pb2.SubmitInvoiceResponse = await stub.SubmitInvoice(
            request, metadata=metadata or submitter(), timeout=60
        )
        return reply


async def get_invoice(status_addr: str, invoice_id: str) -> status_pb2.GetInvoiceResponse:
    async with grpc.aio.insecure_channel(status_addr, options=GRPC_OPTIONS) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        reply: status_pb2.GetInvoiceResponse = await stub.GetInvoice(
            status_pb2.GetInvoiceRequest(invoice_id=invoice_id), timeout=30
        )
        return reply


async def collect_until_final(
    follower: StatusFollower, invoice_ids: set[str], timeout: float = 60.0
) -> dict[str, list[events_pb2.StatusEvent]]:
    """Status events of ``invoice_ids`` until each reached 201, 203 or 213.

    Bounded by ``timeout``: an invoice that never gets there fails the test
    with what was seen, rather than hanging it.
    """
    seen: dict[str, list[events_pb2.StatusEvent]] = {i: [] for i in invoice_ids}
    pending = set(invoice_ids)

    async def consume() -> None:
        async for event in follower.events():
            if event.invoice_id in seen:
                seen[event.invoice_id].append(event)
                if event.status_code in FINAL:
                    pending.discard(event.invoice_id)
                    if not pending:
                        return

    try:
        await asyncio.wait_for(consume(), timeout)
    except TimeoutError:
        summary = {i: [e.status_code for e in seen[i]] for i in pending}
        raise AssertionError(f"no final status within {timeout}s for: {summary}") from None
    return seen


async def records_for_key(bootstrap: str, topic: str, key: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` with ``key``, reading each partition up to its
    end offset at call time: a finite, deterministic read."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = await assign_all(consumer, topic)
        found: list[ConsumerRecord] = []
        async for batch in read_to_end(consumer, tps):
            for records in batch.values():
                found.extend(r for r in records if r.key == key.encode())
        return found
    finally:
        await consumer.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_serving(addr: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the gRPC health check of a process the test started says SERVING."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"service exited early with {proc.returncode}"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)  # polling a readiness condition, bounded by the deadline
    raise AssertionError(f"{addr} not SERVING within {timeout}s")


def run_stack(command: str, env: dict[str, str] | None = None) -> None:
    """`deploy/local/stack.py COMMAND` (e.g. up, stop-services, restart-services)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "local" / "stack.py"), command],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
