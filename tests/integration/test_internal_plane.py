"""The internal plane refuses whoever has no business there: Kafka clients
without credentials, a service principal outside its own topics and
groups, PostgreSQL logins without a password or outside their schema. The
stock tools work with the credentials the stack writes (kcat, psql,
grpcurl), as docs/security.md shows."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError  # type: ignore[import-untyped]
from pydantic import SecretStr

from invoicing_common import topics
from invoicing_common.kafka import assign_all
from invoicing_common.settings import KafkaClientSettings
from tests.support import ROOT, Stack, demo

pytestmark = pytest.mark.stack


def _tool(name: str) -> str:
    found = shutil.which(name) or next((str(p) for p in [ROOT / ".cache" / "bin" / name] if p.exists()), None)
    assert found, f"{name} is not installed: `make install` installs it (scripts/install_tools.sh)"
    return found


def _run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=60, env=env or dict(os.environ), check=False
    )


def _principal(stack: Stack, name: str) -> KafkaClientSettings:
    return KafkaClientSettings(
        kafka_bootstrap_servers=stack.kafka.kafka_bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=name,
        kafka_sasl_password_file=stack.run_dir / "secrets" / f"kafka-{name}",
    )


def test_kcat_needs_credentials_and_the_operators_reads_but_does_not_write(stack: Stack) -> None:
    kcat = _tool("kcat")
    bootstrap = stack.kafka.kafka_bootstrap_servers
    anonymous = _run(kcat, "-b", bootstrap, "-C", "-t", topics.STATUS, "-o", "beginning", "-e", "-c", "1", "-m", "5")
    assert anonymous.returncode != 0
    assert "ERROR" in anonymous.stderr
    config = str(stack.run_dir / "kcat.conf")
    read = _run(kcat, "-F", config, "-C", "-t", topics.STATUS, "-o", "beginning", "-e", "-c", "1", "-f", "%k\n")
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.strip()) == 36  # an invoice id: the key of a status event
    write = _run(kcat, "-F", config, "-P", "-t", topics.RECEIVED, stdin="forged\n")
    assert write.returncode != 0 and "authorization failed" in write.stderr.lower()


async def test_a_service_principal_reaches_only_its_own_topics_and_groups(stack: Stack) -> None:
    ingest = _principal(stack, "ingest")
    # ingest writes `received`, and reads nothing.
    consumer = AIOKafkaConsumer(**ingest.kafka_client_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        with pytest.raises(RuntimeError, match="not found"):
            # The topic is invisible to it: metadata lists only what it may describe.
            await assign_all(consumer, topics.STATUS)
    finally:
        await consumer.stop()
    # validate may not write the status topic, nor join status's group.
    validate = _principal(stack, "validate")
    producer = AIOKafkaProducer(**validate.kafka_client_kwargs(), acks="all")
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(topics.STATUS, b"forged", key=str(uuid.uuid4()).encode())
    finally:
        await producer.stop()
    intruder = AIOKafkaConsumer(
        topics.RECEIVED, **validate.kafka_client_kwargs(), group_id="invoicing-status", enable_auto_commit=False
    )
    with pytest.raises(GroupAuthorizationFailedError):
        await intruder.start()
        await intruder.getone()
    await intruder.stop()
    # And a wrong password gets nowhere.
    wrong = KafkaClientSettings(
        kafka_bootstrap_servers=stack.kafka.kafka_bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="ingest",
        kafka_sasl_password=SecretStr("not-the-password"),
    )
    stranger = AIOKafkaConsumer(**wrong.kafka_client_kwargs(), request_timeout_ms=5000)
    with pytest.raises(Exception):  # noqa: B017 - aiokafka raises its own auth error types
        await stranger.start()
    await stranger.stop()


def _pg(url_user: str, stack: Stack) -> dict[str, str]:
    host_part = stack.database_url.split("@", 1)[1]
    return {"dsn": f"postgresql://{url_user}@{host_part}"}


def test_psql_without_a_password_is_refused(stack: Stack) -> None:
    psql = _tool("psql")
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSFILE", "PGPASSWORD")}
    env["PGPASSFILE"] = "/dev/null"
    for user in ("invoicing", "status", "postgres"):
        done = _run(psql, "-w", _pg(user, stack)["dsn"], "-c", "select 1", env=env)
        assert done.returncode != 0, user
        assert "password" in done.stderr or "authentication" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("role", "own", "others"),
    [
        ("ingest", "ingest.receipts", ("status.invoices", "directory.entries")),
        # Validate reads documents from the archive ingest owns, and nothing else.
        ("validate", "archive.documents", ("ingest.receipts", "status.invoices", "directory.entries")),
        # Route reads documents to deliver them to other platforms (below);
        # status never touches document bytes.
        ("route", "directory.entries", ("status.invoices", "ingest.receipts")),
        ("status", "status.invoices", ("ingest.receipts", "directory.entries", "archive.chunks")),
    ],
)
async def test_each_service_role_reaches_its_own_schema_only(
    stack: Stack, role: str, own: str, others: tuple[str, ...]
) -> None:
    passfile = stack.run_dir / "secrets" / f"pgpass-{role}"
    conn = await asyncpg.connect(_pg(role, stack)["dsn"], passfile=str(passfile))
    try:
        assert await conn.fetchval(f"SELECT count(*) >= 0 FROM {own}")
        for table in others:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetchval(f"SELECT count(*) FROM {table}")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("CREATE SCHEMA intruder")
    finally:
        await conn.close()


async def test_route_reads_the_archive_and_cannot_change_it(stack: Stack) -> None:
    passfile = stack.run_dir / "secrets" / "pgpass-route"
    conn = await asyncpg.connect(_pg("route", stack)["dsn"], passfile=str(passfile))
    try:
        for table in ("archive.documents", "archive.chunks"):
            assert await conn.fetchval(f"SELECT count(*) >= 0 FROM {table}")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table} WHERE false")
    finally:
        await conn.close()


def test_grpcurl_lists_and_calls_with_a_token_and_is_refused_without(stack: Stack) -> None:
    grpcurl = _tool("grpcurl")
    ca = os.environ["INVOICING_CA_FILE"]
    header = f"authorization: Bearer {demo().token()}"
    listed = _run(grpcurl, "-cacert", ca, "-H", header, stack.status, "list")
    assert listed.returncode == 0, listed.stderr
    assert "invoicing.v1.StatusService" in listed.stdout.split()
    method = "invoicing.v1.StatusService/ListInvoices"
    called = _run(grpcurl, "-cacert", ca, "-H", header, "-d", '{"page_size": 1}', stack.status, method)
    assert called.returncode == 0, called.stderr
    refused = _run(grpcurl, "-cacert", ca, "-d", '{"page_size": 1}', stack.status, method)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stdout + refused.stderr
    plaintext = _run(grpcurl, "-plaintext", "-max-time", "5", stack.status, "list")
    assert plaintext.returncode != 0


def test_secrets_stay_in_the_run_folder_readable_by_their_owner_only(stack: Stack) -> None:
    secrets = stack.run_dir / "secrets"
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    private = [
        *secrets.iterdir(), stack.run_dir / "env", stack.run_dir / "kcat.conf",
        *(stack.run_dir / "tls").glob("*.key"), stack.run_dir / "tls" / "server-bundle.pem",
        stack.run_dir / "kafka" / "server.properties", stack.run_dir / "kafka" / "admin.properties",
    ]  # fmt: skip
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, path
    # And none of them is tracked by git.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    values = {p.read_text().strip() for p in secrets.iterdir() if not p.name.startswith("pgpass")}
    for name in tracked:
        if name and (ROOT / name.decode()).is_file():
            text = (ROOT / name.decode()).read_bytes()
            assert not any(v.encode() in text for v in values if len(v) >= 16), name
    assert Path(os.environ["INVOICING_CA_FILE"]).is_relative_to(stack.run_dir)
