"""Helpers for tests that drive the running stack.

Tests call the services over TLS as real accounts: the demo account of
.run/env (directory-admin, and supplier and buyer of the samples' SIRENs)
by default, or accounts they create in the identity provider. They use
Kafka as the cluster's super user (KAFKA_ADMIN_*) and PostgreSQL as its
administrator (DATABASE_URL with PGPASSFILE)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from invoicing.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc
from lxml import etree

from invoicectl.accounts import AccountsAdmin
from invoicectl.kafka_follow import StatusFollower
from invoicing_common.auth.client import ClientConfig, TokenSource, secure_channel, unverified_claims
from invoicing_common.db import Database
from invoicing_common.kafka import assign_all, read_to_end
from invoicing_common.settings import KafkaClientSettings
from invoicing_status.lifecycle import PIPELINE_OUTCOMES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
UBL_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CII_RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
CII_RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# The pipeline's outcomes: an invoice's first final status.
FINAL = frozenset(s.value for s in PIPELINE_OUTCOMES)
# The samples' seller and buyer: the demo account acts for both.
SAMPLE_SELLER = "842109373"
SAMPLE_BUYER = "512345679"
Metadata = tuple[tuple[str, str], ...]


@cache
def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def client_config() -> ClientConfig:
    return ClientConfig.from_env()


@cache
def demo_tokens() -> TokenSource:
    return TokenSource.from_config(client_config())


def ca_file() -> str | None:
    return client_config().ca_file


@dataclass(frozen=True)
class Caller:
    """An account a test acts as."""

    client_id: str
    tokens: TokenSource

    def token(self) -> str:
        return self.tokens.token()

    def subject(self) -> str:
        """The account's subject (its token's ``sub``), read without verifying."""
        return str(unverified_claims(self.token())["sub"])

    def metadata(self, *extra: tuple[str, str]) -> Metadata:
        return (("authorization", f"Bearer {self.token()}"), *extra)

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = GRPC_OPTIONS) -> grpc.aio.Channel:
        return secure_channel(address, self.tokens, ca_file(), options)


def demo() -> Caller:
    return Caller(client_config().client_id, demo_tokens())


def demo_channel(address: str, options: Sequence[tuple[str, Any]] = GRPC_OPTIONS) -> grpc.aio.Channel:
    """A TLS channel whose calls carry the demo account's token."""
    return demo().channel(address, options)


def anonymous_channel(address: str, options: Sequence[tuple[str, Any]] = GRPC_OPTIONS) -> grpc.aio.Channel:
    """A TLS channel without a token (health checks, refusals)."""
    return secure_channel(address, None, ca_file(), options)


_created: list[str] = []


def new_account(
    roles: Sequence[str] = ("supplier", "buyer"), sirens: Sequence[str] = (SAMPLE_SELLER, SAMPLE_BUYER)
) -> Caller:
    """A fresh account made through the identity provider's admin API (as
    `invoicectl accounts create` does); removed at the end of the session."""
    config = client_config()
    account = AccountsAdmin(config.token_url, demo_tokens(), config.ca_file).create(
        roles, sirens, f"test-{uuid.uuid4().hex[:12]}"
    )
    _created.append(account.client_id)
    return Caller(
        account.client_id, TokenSource(config.token_url, account.client_id, account.client_secret, config.ca_file)
    )


def delete_created_accounts() -> None:
    config = client_config()
    admin = AccountsAdmin(config.token_url, demo_tokens(), config.ca_file)
    while _created:
        admin.delete(_created.pop())


class Stack:
    def __init__(self) -> None:
        needed = (
            "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "INGEST_ADDR", "STATUS_ADDR", "INVOICING_TOKEN_URL",
            "INVOICING_CLIENT_ID", "INVOICING_CLIENT_SECRET", "KAFKA_ADMIN_USERNAME", "KAFKA_ADMIN_PASSWORD_FILE",
        )  # fmt: skip
        missing = [v for v in needed if not os.environ.get(v)]
        if missing:
            pytest.fail(
                f"{', '.join(missing)} not set: run the suite with `make test` (it starts the stack), "
                "or `make up && . .run/env` first"
            )
        self.kafka = KafkaClientSettings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username=os.environ["KAFKA_ADMIN_USERNAME"],
            kafka_sasl_password_file=Path(os.environ["KAFKA_ADMIN_PASSWORD_FILE"]),
        )
        self.database_url = os.environ["DATABASE_URL"]
        self.ingest = os.environ["INGEST_ADDR"]
        self.status = os.environ["STATUS_ADDR"]
        self.route = os.environ.get("ROUTE_ADDR", "127.0.0.1:17003")
        self.validate = os.environ.get("VALIDATE_ADDR", "127.0.0.1:17002")
        self.platform_id = os.environ.get("PLATFORM_ID", "local")
        self.run_dir = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run"))

    def service_pid(self, name: str) -> int:
        """The pid of a running service's main process: the stack's pid file,
        or (make test-images) the container's, which tests/containers.py
        exports as INVOICING_<NAME>_PID."""
        exported = os.environ.get(f"INVOICING_{name.upper()}_PID")
        if exported:
            return int(exported)
        return int((self.run_dir / "pids" / f"{name}.pid").read_text())

    def kafka_fields(self) -> dict[str, Any]:
        """The cluster admin's Kafka settings, as keyword arguments of any
        settings class (ServiceSettings, a service's own)."""
        return {name: getattr(self.kafka, name) for name in KafkaClientSettings.model_fields}

    def in_process_settings(self, name: str) -> dict[str, Any]:
        """Settings for service ``name`` built inside the test process: the
        stack's TLS files and token issuer, and the test's own (admin)
        Kafka principal and database role, whose credentials this process
        holds."""
        own = {k.lower(): v for k, v in self.service_env(name).items() if k.startswith(("GRPC_TLS_", "OIDC_"))}
        return {**own, **self.kafka_fields(), "database_url": self.database_url}

    def service_env(self, name: str) -> dict[str, str]:
        """The configuration the stack gave service ``name`` (its own Kafka
        principal, database role, TLS files and token issuer), to start
        another instance of it the same way."""
        lines = (self.run_dir / "services" / f"{name}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line)


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


def invoice_from(seller: str, sample: str = "ubl-invoice-valid.xml") -> tuple[bytes, str]:
    """A fresh sample invoice (see unique_invoice) whose seller is the
    company ``seller`` (a SIREN): BT-30, the seller's address and the SIREN
    inside its VAT number (BT-31) are all replaced."""
    from stdnum.fr import siren as fr_siren

    doc, number = unique_invoice(sample)
    vat = f"FR{fr_siren.to_tva(SAMPLE_SELLER)}"
    doc = doc.replace(f">{SAMPLE_SELLER}<".encode(), f">{seller}<".encode())
    return doc.replace(f">{vat}<".encode(), f">FR{fr_siren.to_tva(seller)}<".encode()), number


def submitter() -> Metadata:
    """Metadata of a fresh account (supplier and buyer of the samples), so
    that content-based retry detection, scoped per account, never links
    one test's documents to another's."""
    return new_account().metadata()


async def submit(
    ingest_addr: str, document: bytes, filename: str, key: str = "", metadata: Metadata | None = None
) -> ingest_pb2.SubmitInvoiceResponse:
    """SubmitInvoice as the demo account, or with ``metadata`` (which must
    then carry its own authorization)."""
    async with anonymous_channel(ingest_addr) as ingest:
        stub = ingest_pb2_grpc.IngestServiceStub(ingest)
        request = ingest_pb2.SubmitInvoiceRequest(document=document, filename=filename, idempotency_key=key)
        reply: ingest_pb2.SubmitInvoiceResponse = await stub.SubmitInvoice(
            request, metadata=metadata or demo().metadata(), timeout=60
        )
        return reply


@dataclass(frozen=True)
class UploadFile:
    filename: str
    data: bytes
    media_type: str = ""


def upload_requests(
    files: Sequence[UploadFile], key: str = "", chunk: int = 1024 * 1024
) -> AsyncIterator[ingest_pb2.UploadInvoiceRequest]:
    """An UploadInvoice stream: each file's header, then its chunks."""

    async def messages() -> AsyncIterator[ingest_pb2.UploadInvoiceRequest]:
        for index, f in enumerate(files):
            header = ingest_pb2.UploadFile(filename=f.filename, media_type=f.media_type)
            yield ingest_pb2.UploadInvoiceRequest(file=header, idempotency_key=key if index == 0 else "")
            for start in range(0, len(f.data), chunk):
                yield ingest_pb2.UploadInvoiceRequest(chunk=f.data[start : start + chunk])

    return messages()


async def upload(
    ingest_addr: str,
    files: Sequence[UploadFile] | AsyncIterator[ingest_pb2.UploadInvoiceRequest],
    caller: Caller | None = None,
    key: str = "",
) -> ingest_pb2.SubmitInvoiceResponse:
    """UploadInvoice as ``caller`` (the demo account by default)."""
    requests = files if not isinstance(files, Sequence) else upload_requests(files, key)
    async with (caller or demo()).channel(ingest_addr) as ingest:
        stub = ingest_pb2_grpc.IngestServiceStub(ingest)
        reply: ingest_pb2.SubmitInvoiceResponse = await stub.UploadInvoice(requests, timeout=300)
        return reply


async def download(
    ingest_addr: str, invoice_id: str, attachment: str = "", caller: Caller | None = None
) -> tuple[Any, bytes]:
    """GetInvoiceDocument: the file's reference and its bytes."""
    async with (caller or demo()).channel(ingest_addr) as ingest:
        stub = ingest_pb2_grpc.DocumentServiceStub(ingest)
        call = stub.GetInvoiceDocument(
            ingest_pb2.GetInvoiceDocumentRequest(invoice_id=invoice_id, attachment=attachment), timeout=120
        )
        ref, parts = None, []
        async for message in call:
            if message.HasField("document"):
                ref = message.document
            else:
                parts.append(message.chunk)
        return ref, b"".join(parts)


async def tamper_with_chunks(database_url: str, sha256: str, new_data: str, where: str = "TRUE") -> None:
    """Set ``data = <new_data>`` (an SQL expression) on the archived chunks of
    the file ``sha256`` matching ``where``, as the database's superuser and
    past the archive's guards: what a disk fault or an intruder could do."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                f"UPDATE archive.chunks SET data = {new_data} WHERE ({where})"
                " AND document_id = (SELECT id FROM archive.documents WHERE sha256 = $1)",
                sha256,
            )
    finally:
        await conn.close()


async def get_invoice(status_addr: str, invoice_id: str, caller: Caller | None = None) -> status_pb2.GetInvoiceResponse:
    async with (caller or demo()).channel(status_addr) as status:
        stub = status_pb2_grpc.StatusServiceStub(status)
        reply: status_pb2.GetInvoiceResponse = await stub.GetInvoice(
            status_pb2.GetInvoiceRequest(invoice_id=invoice_id), timeout=30
        )
        return reply


async def collect_until_final(
    follower: StatusFollower, invoice_ids: set[str], timeout: float = 60.0
) -> dict[str, list[events_pb2.StatusEvent]]:
    """Status events of ``invoice_ids`` until each reached 201, 203, 213 or 501.

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


async def records_for_key(kafka: KafkaClientSettings, topic: str, key: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` with ``key``, reading each partition up to its
    end offset at call time: a finite, deterministic read."""
    consumer = AIOKafkaConsumer(**kafka.kafka_client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
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


@contextlib.asynccontextmanager
async def scratch_database(
    database_url: str, prefix: str, package: str, *, generic_plans: bool = False
) -> AsyncIterator[Database]:
    """A Database on a throw-away schema migrated with ``package``'s
    migrations (e.g. "invoicing_status"), dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    db = Database(database_url, schema=schema, migrations=files(package) / "migrations", generic_plans=generic_plans)
    await db.start()
    try:
        yield db
    finally:
        async with db.pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await db.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_serving(addr: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the gRPC health check of a process the test started says SERVING."""
    deadline = time.monotonic() + timeout
    async with anonymous_channel(addr) as health:
        stub = health_pb2_grpc.HealthStub(health)
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


def run_stack(command: str, *args: str, env: dict[str, str] | None = None) -> None:
    """`deploy/local/stack.py COMMAND [ARGS]` (e.g. up, stop validate, restart-services)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "local" / "stack.py"), command, *args],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
