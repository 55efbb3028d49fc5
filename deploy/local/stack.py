"""The local stack: Apache Kafka (KRaft), PostgreSQL 15, Keycloak (the OpenID
Connect provider) and the four services, every connection authenticated.

    python deploy/local/stack.py up       start what is not running, wait until ready
    python deploy/local/stack.py down     stop what `up` started, by pid
    python deploy/local/stack.py status   show what runs (and whether each service is SERVING)
    python deploy/local/stack.py restart-services
                                          restart the services (B's too when it runs) with the
                                          current environment
    python deploy/local/stack.py infra    Kafka, PostgreSQL and Keycloak only, provisioned (for services
                                          run in containers: make deploy-local)
    python deploy/local/stack.py stop NAME...
                                          stop these parts only (e.g. validate, to run it elsewhere;
                                          peer-validate for platform B's)
    python deploy/local/stack.py stop-services
                                          stop the services (both platforms'), keep Kafka and
                                          PostgreSQL (`up` restarts them)
    python deploy/local/stack.py test -- [pytest args]
                                          up, run the whole suite, then stop
                                          whatever this command started
    python deploy/local/stack.py test-images -- [pytest args]
                                          the same with the services run from the
                                          project's image (make test-images)

PLATFORMS=2 (`make up PLATFORMS=2`) also runs a second platform, `peer`, beside the first
(`local`): its four services as parts peer-ingest, peer-validate, peer-route and peer-status on
the ports + 10, its database `invoicing_peer`, its topics prefixed `peer.`, on the same Kafka,
PostgreSQL and Keycloak; .run/platforms-local.toml and .run/platforms-peer.toml tell each how
to reach the other (deploy/local/platform_pair.py, docs/deploy.md).

Everything lives under .run/ (git-ignored; STACK_RUN_DIR moves it): data, logs, pid files,
secrets/ (random passwords, made on first start), tls/ (a local CA and the server certificate),
services/<name>.env (each service's configuration) and .run/env, the endpoints and the demo
account's credentials as shell assignments. When KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are
already set, no broker or database is started and those (with KAFKA_SECURITY_PROTOCOL and
KAFKA_SASL_* from the environment) are used instead. docs/security.md describes each layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import kafka_security
import keycloak
import pki
from credentials import Secrets, write_private
from platform_pair import PEER, PeerEntry, Platform, platform_a, registry_text

ROOT = Path(__file__).resolve().parents[2]
# STACK_RUN_DIR lets two stacks (e.g. with other *_PORT values) run side by side.
RUN = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run")).resolve()
PIDS = RUN / "pids"
LOGS = RUN / "logs"
SECRETS = Secrets(RUN / "secrets")
TLS_DIR = RUN / "tls"
SERVICE_ENV_DIR = RUN / "services"
CACHE = ROOT / ".cache"
KAFKA_POM = ROOT / "deploy" / "local" / "kafka" / "pom.xml"
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.4.0")
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("KAFKA_CONTROLLER_PORT", "19093"))
# TLS with client certificates (mTLS), for librdkafka tools such as kcat.
KAFKA_TLS_PORT = int(os.environ.get("KAFKA_TLS_PORT", "19094"))
# Principals that authenticate to Kafka with a client certificate.
KAFKA_CERT_PRINCIPALS = ("operator",)
# KAFKA_BROKERS=3: a three-node KRaft cluster (each node broker and
# controller; node i listens on the ports above + 100 * (i - 1)), topics
# with replication factor 3 and min.insync.replicas 2. The default: one.
KAFKA_BROKERS = int(os.environ.get("KAFKA_BROKERS", "1"))
if KAFKA_BROKERS not in (1, 3):
    raise SystemExit(f"KAFKA_BROKERS={KAFKA_BROKERS}: 1 (the default) or 3")
PG_PORT = int(os.environ.get("PG_PORT", "15432"))
KEYCLOAK_PORT = int(os.environ.get("KEYCLOAK_PORT", "18443"))
# ARCHIVE_STORE=s3 without an endpoint of its own: a local S3 API server
# (moto's, from the dev requirements) holds the archive's bytes.
S3_PORT = int(os.environ.get("S3_PORT", "19300"))
S3_BUCKET = "invoicing-archive"
KEYCLOAK_MANAGEMENT_PORT = int(os.environ.get("KEYCLOAK_MANAGEMENT_PORT", "18444"))
PG_ADMIN = "invoicing"
PG_DATABASE = "invoicing"
TOPIC_PARTITIONS = int(os.environ.get("TOPIC_PARTITIONS", "6"))
PLATFORM_ID = os.environ.get("PLATFORM_ID", "local")
# 1: one platform (PLATFORM_ID); 2: platform `peer` too (platform_pair.py).
PLATFORMS = os.environ.get("PLATFORMS") or "1"
if PLATFORMS not in ("1", "2"):
    raise SystemExit(f"PLATFORMS={PLATFORMS}: 1 (the default) or 2")
LOCAL = platform_a(PLATFORM_ID, PG_DATABASE)
STARTUP_TIMEOUT = float(os.environ.get("STACK_STARTUP_TIMEOUT", "180"))


@dataclass(frozen=True)
class ServiceSpec:
    # ingest, validate, route or status: also its Kafka principal and
    # database role, which both platforms share.
    service: str
    module: str
    # Platform A's port; another platform's is offset from it.
    base_port: int
    # The PostgreSQL schema this service's login role owns (None: no database).
    schema: str | None
    platform: Platform = LOCAL

    @property
    def name(self) -> str:
        """The stack's part: pid file, log, `stop NAME` (peer-ingest for B)."""
        return self.platform.part_prefix + self.service

    @property
    def port(self) -> int:
        return self.base_port + self.platform.port_offset

    @property
    def env_name(self) -> str:
        """INGEST, or PEER_INGEST: the stem of its variables."""
        return f"{self.platform.env_prefix}{self.service}".upper()

    @property
    def addr_var(self) -> str:
        return f"{self.env_name}_ADDR"

    @property
    def metrics_port(self) -> int:
        # Prometheus scrape port: the gRPC port + 100 unless set explicitly.
        return int(os.environ.get(f"{self.env_name}_METRICS_PORT", str(self.port + 100)))

    @property
    def health_port(self) -> int:
        # Plaintext grpc.health.v1 only (the kubelet's probes): the gRPC port + 200.
        return int(os.environ.get(f"{self.env_name}_HEALTH_PORT", str(self.port + 200)))

    def on(self, platform: Platform) -> ServiceSpec:
        """The same service of another platform."""
        return replace(self, platform=platform)


SERVICES = (
    ServiceSpec("ingest", "invoicing_ingest", int(os.environ.get("INGEST_PORT", "17001")), "ingest"),
    ServiceSpec("validate", "invoicing_validate", int(os.environ.get("VALIDATE_PORT", "17002")), "validate"),
    ServiceSpec("route", "invoicing_route", int(os.environ.get("ROUTE_PORT", "17003")), "directory"),
    ServiceSpec("status", "invoicing_status", int(os.environ.get("STATUS_PORT", "17004")), "status"),
)
# Platform B's: started only with PLATFORMS=2.
PEER_SERVICES = tuple(spec.on(PEER) for spec in SERVICES)


def say(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# --- processes ---------------------------------------------------------------


def _pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def running_pid(name: str) -> int | None:
    path = _pid_file(name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)
        return None
    except PermissionError:
        pass  # alive, owned by another user (postgres)
    # A zombie child is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            path.unlink(missing_ok=True)
            return None
    return pid


# What the servers (Kafka, PostgreSQL, Keycloak) get from the environment of
# `make up`: nothing else. A shell that sourced .run/env holds the demo
# account's secret and the paths of the administrators' passwords.
_SERVER_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "JAVA_HOME")


def server_environment(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _SERVER_ENVIRONMENT} | extra


def spawn(name: str, argv: list[str], env: dict[str, str], user: str | None = None) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT if user is None else "/",
        # Own session: a Ctrl-C in the terminal must not kill the stack.
        start_new_session=True,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )
    log.close()
    _pid_file(name).write_text(str(proc.pid))
    return proc.pid


# Parts whose launcher script starts the real server as a child: their
# whole process group (the session spawn() made) is signalled.
GROUP_STOPPED = {"keycloak"}


def stop(name: str, timeout: float = 45.0) -> None:
    stop_together([name], timeout)


def stop_together(names: list[str], timeout: float = 45.0) -> None:
    """SIGTERM to each at once, then wait for all (SIGKILL past ``timeout``).
    The nodes of a Kafka cluster stop together: one left alone waits for a
    controller quorum that has gone."""
    running = {name: pid for name in names if (pid := running_pid(name)) is not None}

    def signal_it(name: str, sig: signal.Signals) -> None:
        pid = running[name]
        with contextlib.suppress(ProcessLookupError):
            if name in GROUP_STOPPED:
                os.killpg(pid, sig)  # the group spawn() created for this pid
            else:
                os.kill(pid, sig)

    def stopped(name: str) -> bool:
        pid = running[name]
        return _reap(pid) and not (name in GROUP_STOPPED and _group_alive(pid))

    for name, pid in running.items():
        say(f"stopping {name} (pid {pid})")
        signal_it(name, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = set(running)
    while waiting and time.monotonic() < deadline:
        waiting = {name for name in waiting if not stopped(name)}
        if waiting:
            time.sleep(0.1)
    for name in sorted(waiting):
        say(f"{name} did not stop within {timeout:.0f}s; sending SIGKILL")
        signal_it(name, signal.SIGKILL)
        while not stopped(name):
            time.sleep(0.1)
    for name in running:
        _pid_file(name).unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> bool:
    """True once ``pid`` is gone (reaping it if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
    return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(what: str, check: Callable[[], bool], name: str | None = None) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        if name is not None and running_pid(name) is None:
            tail = _log_tail(name)
            raise SystemExit(f"{what}: process exited during start-up; last log lines:\n{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise SystemExit(f"{what} not ready after {STARTUP_TIMEOUT:.0f}s; see {LOGS / ((name or what) + '.log')}")


def _log_tail(name: str, lines: int = 30) -> str:
    path = LOGS / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- Kafka ---------------------------------------------------------------------


def kafka_classpath() -> Path:
    """Resolve the broker's jars from Maven Central into the cache, once."""
    target = CACHE / "kafka" / KAFKA_VERSION
    marker = target / ".complete"
    if marker.exists():
        return target
    say(f"resolving Apache Kafka {KAFKA_VERSION} broker jars from Maven Central (once)")
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KAFKA_POM), f"-Dkafka.version={KAFKA_VERSION}",
         "dependency:copy-dependencies", f"-DoutputDirectory={target}", "-DincludeScope=runtime"],
        check=True,
    )  # fmt: skip
    marker.touch()
    return target


def _kafka_passwords() -> dict[str, str]:
    return {name: SECRETS.get(f"kafka-{name}") for name in kafka_security.load_principals()}


@dataclass(frozen=True)
class KafkaNode:
    number: int  # node.id, from 1

    @property
    def name(self) -> str:
        return "kafka" if self.number == 1 else f"kafka-{self.number}"

    def _port(self, first: int) -> int:
        return first + 100 * (self.number - 1)

    @property
    def port(self) -> int:
        return self._port(KAFKA_PORT)

    @property
    def controller_port(self) -> int:
        return self._port(KAFKA_CONTROLLER_PORT)

    @property
    def tls_port(self) -> int:
        return self._port(KAFKA_TLS_PORT)

    @property
    def data(self) -> Path:
        return RUN / "kafka" / ("data" if self.number == 1 else f"data-{self.number}")

    @property
    def properties(self) -> Path:
        return RUN / "kafka" / ("server.properties" if self.number == 1 else f"server-{self.number}.properties")


def kafka_nodes() -> list[KafkaNode]:
    """The nodes of the local cluster: as many as it was formatted with
    (so `make down` stops them all), or KAFKA_BROKERS for a new one."""
    formatted = RUN / "kafka" / "brokers"
    if formatted.exists():
        count = int(formatted.read_text())
    elif (KafkaNode(1).data / "meta.properties").exists():
        count = 1  # made before the three-broker option
    else:
        count = KAFKA_BROKERS
    return [KafkaNode(i) for i in range(1, count + 1)]


def kafka_bootstrap() -> str:
    return ",".join(f"127.0.0.1:{node.port}" for node in kafka_nodes())


def kafka_replication(brokers: int | None = None) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of the local cluster."""
    return (3, 2) if (brokers or len(kafka_nodes())) >= 3 else (1, 1)


def start_kafka(tls: pki.TlsFiles) -> None:
    home = RUN / "kafka"
    formatted = home / "brokers"
    nodes = kafka_nodes()
    if len(nodes) != KAFKA_BROKERS and "KAFKA_BROKERS" in os.environ:
        raise SystemExit(
            f"the local Kafka cluster was made with {len(nodes)} broker(s), not "
            f"KAFKA_BROKERS={KAFKA_BROKERS}; `make clean` removes it (and every local invoice)"
        )
    home.mkdir(parents=True, exist_ok=True)
    # Written first: each node's settings (voters, replication) follow it.
    formatted.write_text(f"{len(nodes)}\n")
    cluster_id = ""
    for node in nodes:
        cluster_id = start_kafka_node(tls, node, nodes, cluster_id)


def start_kafka_node(tls: pki.TlsFiles, node: KafkaNode, nodes: list[KafkaNode], cluster_id: str) -> str:
    """Start one node (formatting its storage first, with ``cluster_id``
    or a new one); returns the cluster id."""
    home = RUN / "kafka"
    id_file = home / "cluster-id"
    if id_file.exists():
        cluster_id = id_file.read_text().strip()
    if running_pid(node.name) is not None:
        say(f"{node.name} already running on 127.0.0.1:{node.port}")
        return cluster_id
    for port, name in ((node.port, "KAFKA_PORT"), (node.tls_port, "KAFKA_TLS_PORT")):
        if port_open(port):
            raise SystemExit(f"port {port} is taken by another process; set {name}")
    classpath = kafka_classpath()
    data = node.data
    home.mkdir(parents=True, exist_ok=True)
    if (data / "meta.properties").exists() and not (home / "sasl").exists():
        raise SystemExit(
            f"{data} was formatted without authentication by an earlier version of the stack; "
            "`make clean` removes it (and every local invoice)"
        )
    admin_password = SECRETS.get("kafka-admin")
    props = node.properties
    replication, min_isr = kafka_replication(len(nodes))
    voters = ",".join(f"{n.number}@127.0.0.1:{n.controller_port}" for n in nodes)
    write_private(
        props,
        "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.number}",
                f"controller.quorum.voters={voters}",
                *kafka_security.server_properties(
                    node.port,
                    node.controller_port,
                    node.tls_port,
                    admin_password,
                    tls.server_bundle,
                    tls.ca_cert,
                    KAFKA_CERT_PRINCIPALS,
                ),
                f"log.dirs={data}",
                f"num.partitions={TOPIC_PARTITIONS}",
                f"default.replication.factor={replication}",
                f"min.insync.replicas={min_isr}",
                f"offsets.topic.replication.factor={replication}",
                "offsets.topic.num.partitions=6",
                f"transaction.state.log.replication.factor={replication}",
                f"transaction.state.log.min.isr={min_isr}",
                # With several nodes, a dead one is fenced (its partitions
                # led elsewhere) after 3 s rather than 9 s: loopback only.
                *(["broker.session.timeout.ms=3000", "broker.heartbeat.interval.ms=500"] if len(nodes) > 1 else []),
                "group.initial.rebalance.delay.ms=0",
                # Invoices travel inline; room for a 5 MiB document and more.
                "message.max.bytes=33554432",
                "replica.fetch.max.bytes=33554432",
                "auto.create.topics.enable=false",
                "",
            ]
        ),
    )
    log4j = home / "log4j2.properties"
    log4j.write_text(
        "status=warn\nappender.out.type=Console\nappender.out.name=OUT\n"
        "appender.out.layout.type=PatternLayout\nappender.out.layout.pattern=[%d] %p %m (%c)%n\n"
        "rootLogger.level=WARN\nrootLogger.appenderRef.out.ref=OUT\n"
        "logger.kafka.name=kafka\nlogger.kafka.level=WARN\n"
    )
    java_cp = f"{classpath}/*"
    if not (data / "meta.properties").exists():
        if not cluster_id:
            cluster_id = subprocess.run(
                ["java", "-cp", java_cp, "kafka.tools.StorageTool", "random-uuid"],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            id_file.write_text(cluster_id + "\n")
        # The super user's SCRAM credential must exist before the broker
        # starts (its own connections use it); the other principals are
        # added through the Admin API once it runs (kafka_security.provision).
        # StorageTool takes it on its command line only: this one-off,
        # local command is the one place a password shows in a process list.
        subprocess.run(
            ["java", "-cp", java_cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
             "--add-scram", f"{kafka_security.MECHANISM}=[name={kafka_security.ADMIN},password={admin_password}]"],
            check=True, capture_output=True,
        )  # fmt: skip
        (home / "sasl").touch()
    say(f"starting {node.name} {KAFKA_VERSION} on 127.0.0.1:{node.port} (SASL/SCRAM, ACLs)")
    # The parallel collector rather than G1: it spares the broker G1's write
    # barriers and concurrent threads (about 0.6 ms of the broker's CPU per
    # invoice at half load), and on a heap this small its young collections
    # are rare and short (one per 1200 invoices or so, 25 to 30 ms):
    # docs/performance-history.md, eleventh round. Its heap on transparent huge
    # pages (where the kernel grants them on request, "madvise"): 6 to 7 %
    # less of the broker's CPU in three alternating pairs, for about 60 MB
    # more resident (thirteenth round), likely from fewer TLB misses over a
    # heap of short-lived request buffers.
    spawn(
        node.name,
        ["java", "-Xms256m", "-Xmx768m", "-XX:+UseParallelGC", "-XX:+UseTransparentHugePages",
         f"-Dlog4j2.configurationFile={log4j}", "-cp", java_cp, "kafka.Kafka", str(props)],
        env=server_environment(),
    )  # fmt: skip
    return cluster_id


def kafka_admin_settings(bootstrap: str) -> Any:
    """The super user's client settings (topics, ACLs, tests)."""
    sys.path.insert(0, str(ROOT / "libs" / "common"))
    from invoicing_common.settings import KafkaClientSettings

    return KafkaClientSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=kafka_security.ADMIN,
        kafka_sasl_password_file=SECRETS.path("kafka-admin"),
    )


def kafka_ready(settings: Any) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(**settings.kafka_client_kwargs(), request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    for address in settings.kafka_bootstrap_servers.split(","):
        host, _, port = address.rpartition(":")
        if not port_open(int(port), host or "127.0.0.1"):
            return False
    return asyncio.run(probe())


# --- PostgreSQL ----------------------------------------------------------------


def _pg_user() -> str | None:
    # PostgreSQL refuses to run as root; run it as the `postgres` account then.
    return "postgres" if os.geteuid() == 0 else None


def _reachable_by(user: str, path: Path) -> bool:
    """Can ``user`` traverse every folder down to ``path``?"""
    probe = subprocess.run(["test", "-x", str(path)], user=user, group=user, extra_groups=[], check=False)
    return probe.returncode == 0


def _postgres_home(user: str | None) -> Path:
    """`.run/postgres`, unless the repo sits under a folder the `postgres`
    account may not enter (e.g. a mode-0700 `mktemp -d`): then a folder in
    the temp directory, named after the run folder, with `.run/postgres`
    pointing at it."""
    home = RUN / "postgres"
    RUN.mkdir(parents=True, exist_ok=True)
    if user is None or home.is_symlink() or _reachable_by(user, RUN):
        return home.resolve() if home.is_symlink() else home
    outside = Path(tempfile.gettempdir()) / f"invoicing-postgres-{zlib.crc32(str(RUN).encode()):08x}"
    outside.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(outside, user)
    home.symlink_to(outside, target_is_directory=True)
    say(f"{RUN} is not reachable by the {user} account; PostgreSQL data goes to {outside} (linked from {home})")
    return outside


def start_postgres() -> None:
    if running_pid("postgres") is not None:
        say(f"postgres already running on 127.0.0.1:{PG_PORT}")
        return
    if port_open(PG_PORT):
        raise SystemExit(f"port {PG_PORT} is taken by another process; set PG_PORT")
    user = _pg_user()
    home = _postgres_home(user)
    data = home / "data"
    sock = home / "sock"
    if not (data / "PG_VERSION").exists():
        say("initdb (PostgreSQL 15, scram-sha-256 password authentication)")
        shutil.rmtree(data, ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(home, user)
        # initdb runs as the server's account and reads the superuser's
        # password from a file: a short-lived copy only that account reads.
        pwfile = home / "initdb-password"
        write_private(pwfile, SECRETS.get("postgres-admin") + "\n")
        if user is not None:
            shutil.chown(pwfile, user)
        argv = [str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_ADMIN, f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                "-E", "UTF8", "--no-locale", "--no-sync"]  # fmt: skip
        try:
            subprocess.run(
                argv, check=True, capture_output=True, user=user, group=user, extra_groups=[] if user else None
            )
        finally:
            pwfile.unlink(missing_ok=True)
    elif "trust" in _hba_methods(data / "pg_hba.conf"):
        raise SystemExit(
            f"{data} was created with trust authentication by an earlier version of the stack; "
            "`make clean` removes it (and every local invoice)"
        )
    sock.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(sock, user)
    say(f"starting postgres on 127.0.0.1:{PG_PORT}")
    spawn(
        "postgres",
        [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(PG_PORT), "-h", "127.0.0.1", "-k", str(sock),
         "-c", "max_connections=200", "-c", "fsync=on", "-c", "shared_buffers=256MB",
         "-c", "password_encryption=scram-sha-256"],
        env=server_environment(),
        user=user,
    )  # fmt: skip


def _hba_methods(path: Path) -> set[str]:
    """The authentication methods of pg_hba.conf's rules."""
    methods = set()
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            # local DATABASE USER METHOD; host* DATABASE USER ADDRESS METHOD
            at = 3 if fields[:1] == ["local"] else 4
            if len(fields) > at:
                methods.add(fields[at])
    return methods


def postgres_ready(url: str, password: str | None = None) -> bool:
    import asyncpg  # type: ignore[import-untyped]

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, password=password, timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def pgpass_lines(user: str, password: str, databases: list[str]) -> str:
    # Any port of loopback: the fault-injection suite's latency proxy too.
    return "".join(f"127.0.0.1:*:{database}:{user}:{password}\n" for database in databases)


async def provision_archive(conn: Any) -> None:
    """The document archive's schema and grants (invoicing_common.archive.grants)."""
    from invoicing_common.archive.grants import grant_archive

    await grant_archive(conn)


def provision_database(databases: list[str]) -> None:
    """Each platform's database (`invoicing`, and `invoicing_peer` with
    PLATFORMS=2) and one login role per service, shared by the platforms,
    owning its own schema in each and nothing else. Nobody else may
    connect (no PUBLIC grant). Idempotent: passwords are (re)set from
    .run/secrets at each start."""
    import asyncpg

    admin_password = SECRETS.get("postgres-admin")
    roles = {spec.service: SECRETS.get(f"postgres-{spec.service}") for spec in SERVICES if spec.schema is not None}

    async def provision() -> None:
        conn = await asyncpg.connect(f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/postgres", password=admin_password)
        try:
            for database in databases:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
                    await conn.execute(f'CREATE DATABASE "{database}"')
            for role, password in roles.items():
                if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
                # format() quotes the password as a literal on the server.
                statement = await conn.fetchval(
                    "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password
                )
                await conn.execute(statement)
        finally:
            await conn.close()
        for database in databases:
            await provision_schemas(database)
        # One passfile per role, a line per database: both platforms' services log in alike.
        for role, password in roles.items():
            write_private(SECRETS.folder / f"pgpass-{role}", pgpass_lines(role, password, databases))
        write_private(SECRETS.folder / "pgpass-admin", pgpass_lines(PG_ADMIN, admin_password, databases))

    async def provision_schemas(database: str) -> None:
        conn = await asyncpg.connect(f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/{database}", password=admin_password)
        try:
            await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
            await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            for spec in SERVICES:
                if spec.schema is None:
                    continue
                role = spec.service
                # TEMPORARY: session-private tables (route's bulk import stages rows in one).
                await conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"')
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{spec.schema}" AUTHORIZATION "{role}"')
                await conn.execute(f'ALTER SCHEMA "{spec.schema}" OWNER TO "{role}"')
            await provision_archive(conn)
        finally:
            await conn.close()

    asyncio.run(provision())


# --- Keycloak ------------------------------------------------------------------


def start_keycloak(tls: pki.TlsFiles) -> None:
    if running_pid("keycloak") is not None:
        say(f"keycloak already running on https://127.0.0.1:{KEYCLOAK_PORT}")
        return
    for port in (KEYCLOAK_PORT, KEYCLOAK_MANAGEMENT_PORT):
        if port_open(port):
            raise SystemExit(f"port {port} is taken by another process; set KEYCLOAK_PORT / KEYCLOAK_MANAGEMENT_PORT")
    home = keycloak.resolve(CACHE, say)
    data = RUN / "keycloak"
    data.mkdir(parents=True, exist_ok=True)
    say(f"starting keycloak {keycloak.VERSION} on https://127.0.0.1:{KEYCLOAK_PORT}")
    spawn(
        "keycloak",
        keycloak.command(home, data, tls.server_chain, tls.server_key, KEYCLOAK_PORT, KEYCLOAK_MANAGEMENT_PORT),
        env=server_environment(**keycloak.environment(SECRETS.get("keycloak-admin"))),
    )


# --- services ------------------------------------------------------------------


def service_ready(port: int, ca_file: Path) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not port_open(port):
        return False
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


# Never inherited by a service from the shell that ran `make up` (which may
# have sourced .run/env): each gets its own credentials (a stray PGPASSWORD
# would win over its passfile), and none gets another's or the CLI's. A
# topic prefix left in the shell (to use platform B's) must not move A's.
_NOT_INHERITED = (
    "PGPASSWORD", "PGPASSFILE", "DATABASE_URL", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SASL_USERNAME", "KAFKA_SECURITY_PROTOCOL", "KAFKA_ADMIN_USERNAME", "KAFKA_ADMIN_PASSWORD_FILE",
    "INVOICING_CLIENT_ID", "INVOICING_CLIENT_SECRET", "INVOICING_TOKEN_URL", "KEYCLOAK_ADMIN_PASSWORD_FILE",
    "INVOICING_TOPIC_PREFIX",
)  # fmt: skip


# --- platforms -------------------------------------------------------------------


def platform_count() -> int:
    """2 with PLATFORMS=2, or while a service of platform B runs: a plain
    `up` (`make test`, `restart-services`) then keeps B's topics, ACLs and
    registry rather than revoking what its running services use."""
    if PLATFORMS == "2" or any(running_pid(spec.name) for spec in PEER_SERVICES):
        return 2
    return 1


def stack_platforms(count: int) -> list[Platform]:
    return [LOCAL, PEER][:count]


def stack_services(count: int) -> tuple[ServiceSpec, ...]:
    return SERVICES + (PEER_SERVICES if count == 2 else ())


def service_of(service: str, platform: Platform) -> ServiceSpec:
    return next(spec for spec in SERVICES if spec.service == service).on(platform)


def registry_file(platform: Platform) -> Path:
    """Its PLATFORMS_FILE: the other platform, as it sees it."""
    return RUN / f"platforms-{platform.id}.toml"


def archive_bucket(platform: Platform) -> str:
    return S3_BUCKET if platform == LOCAL else f"{S3_BUCKET}-{platform.id}"


def write_registries(values: dict[str, str]) -> None:
    """.run/platforms-local.toml (knows `peer`) and .run/platforms-peer.toml
    (knows `local`): each calls the other with its own account."""
    for this, other in ((LOCAL, PEER), (PEER, LOCAL)):
        entry = PeerEntry(
            platform=other,
            ingest=f"127.0.0.1:{service_of('ingest', other).port}",
            exchange=f"127.0.0.1:{service_of('status', other).port}",
            ca_file=Path(values["INVOICING_CA_FILE"]),
            token_url=values["INVOICING_TOKEN_URL"],
            client_id=this.client_id,
            client_secret_file=SECRETS.path(f"keycloak-{this.client_id}"),
            caller_client_id=other.client_id,
        )
        # It names a secret file, not the secret; private all the same.
        write_private(registry_file(this), registry_text(entry))


def service_environment(spec: ServiceSpec, values: dict[str, str]) -> dict[str, str]:
    """What one service is configured with: endpoints, its own Kafka
    principal and database role, the TLS files and the token issuer.
    Secrets are passed as file paths. Written to .run/services/NAME.env so
    that tests can start more instances configured the same way."""
    platform = spec.platform
    env = {
        "GRPC_PORT": str(spec.port),
        "METRICS_PORT": str(spec.metrics_port),
        "GRPC_HEALTH_PORT": str(spec.health_port),
        "PLATFORM_ID": platform.id,
        "KAFKA_BOOTSTRAP_SERVERS": values["KAFKA_BOOTSTRAP_SERVERS"],
        "GRPC_TLS_CERT_FILE": str(TLS_DIR / "server.pem"),
        "GRPC_TLS_KEY_FILE": str(TLS_DIR / "server.key"),
        "OIDC_ISSUER": values["OIDC_ISSUER"],
        "OIDC_AUDIENCE": keycloak.AUDIENCE,
        "OIDC_CA_FILE": values["INVOICING_CA_FILE"],
        # Streamed uploads arrive in 1 MiB chunks. glibc raises its mmap
        # threshold after the first such chunk is freed, and later ones come
        # from fragmented heap arenas: a just-started ingest then grew by
        # 67-95 MiB for a 100 MiB upload (3 of 5 runs); with the threshold
        # fixed, under 64 MiB every time (docs/operations.md).
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "262144"),
    }
    if platform.topic_prefix:
        # Its consumer groups are its service name: prefixed like its topics.
        env["INVOICING_TOPIC_PREFIX"] = platform.topic_prefix
        env["OTEL_SERVICE_NAME"] = platform.service_name(spec.service)
    if values.get("PLATFORMS") == "2":
        env["PLATFORMS_FILE"] = str(registry_file(platform))
    # Route's delivery stage reads documents from the archive too.
    if spec.service in ("ingest", "validate", "route") and local_s3():
        env |= {
            "ARCHIVE_STORE": "s3",
            "ARCHIVE_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
            "ARCHIVE_S3_BUCKET": archive_bucket(platform),
            "ARCHIVE_S3_ACCESS_KEY_ID": "local",
            "ARCHIVE_S3_SECRET_ACCESS_KEY_FILE": str(SECRETS.path("s3-local")),
        }
    if spec.service == "ingest":
        # Downloads ask status who may read an invoice (with the caller's token).
        env["STATUS_ADDRESS"] = f"127.0.0.1:{service_of('status', platform).port}"
        env["STATUS_CA_FILE"] = values["INVOICING_CA_FILE"]
    if values["STACK_EXTERNAL_INFRA"] == "1":
        # An external cluster and database: the caller's settings, shared.
        env["DATABASE_URL"] = values["DATABASE_URL"]
        for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                     "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE", "PGPASSWORD", "PGPASSFILE"):  # fmt: skip
            if name in os.environ:
                env[name] = os.environ[name]
        return env
    env |= {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": kafka_security.MECHANISM,
        "KAFKA_SASL_USERNAME": spec.service,
        "KAFKA_SASL_PASSWORD_FILE": str(SECRETS.path(f"kafka-{spec.service}")),
    }
    if spec.schema is not None:
        # The fault-injection suite puts a latency proxy in front of the
        # database by pointing the services at another port.
        port = os.environ.get("STACK_SERVICE_DATABASE_PORT", str(PG_PORT))
        env["DATABASE_URL"] = f"postgresql://{spec.service}@127.0.0.1:{port}/{platform.database}"
        env["PGPASSFILE"] = str(SECRETS.folder / f"pgpass-{spec.service}")
    return env


def write_service_environment(spec: ServiceSpec, values: dict[str, str]) -> dict[str, str]:
    own = service_environment(spec, values)
    SERVICE_ENV_DIR.mkdir(parents=True, exist_ok=True)
    (SERVICE_ENV_DIR / f"{spec.name}.env").write_text("".join(f"{k}={v}\n" for k, v in own.items()))
    return own


def start_service(spec: ServiceSpec, values: dict[str, str]) -> None:
    if running_pid(spec.name) is not None:
        say(f"{spec.name} already running on 127.0.0.1:{spec.port}")
        return
    if port_open(spec.port):
        hint = f"set {spec.service.upper()}_PORT" + (" (platform B's is it + 10)" if spec.platform != LOCAL else "")
        raise SystemExit(f"port {spec.port} is taken by another process; {hint}")
    own = write_service_environment(spec, values)
    inherited = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    say(f"starting {spec.name} on 127.0.0.1:{spec.port}")
    spawn(spec.name, [str(VENV_BIN / "python"), "-m", spec.module], env={**inherited, **own})


# --- commands ------------------------------------------------------------------


def endpoints(count: int | None = None) -> dict[str, str]:
    """What .run/env exports: where everything is, and the credentials of
    the demo account (OAuth2 client), the Kafka `operator` principal and
    the database administrator. Secrets stay in files under .run/secrets,
    except the demo client's secret, which the CLI reads from here. With
    two platforms, platform B's too (PEER_*)."""
    count = platform_count() if count is None else count
    # A shell that sourced .run/env has both set, and says STACK_EXTERNAL_INFRA=0.
    external = os.environ.get("STACK_EXTERNAL_INFRA") == "1" or (
        "STACK_EXTERNAL_INFRA" not in os.environ
        and bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"))
    )
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{KAFKA_PORT}")
        if external
        else kafka_bootstrap(),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "")
        if external
        else f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/{PG_DATABASE}",
        "TOPIC_PARTITIONS": str(TOPIC_PARTITIONS),
        "PLATFORM_ID": PLATFORM_ID,
        "STACK_EXTERNAL_INFRA": "1" if external else "0",
        "STACK_RUN_DIR": str(RUN),
        "INVOICING_CA_FILE": str(TLS_DIR / "ca.pem"),
        "OIDC_ISSUER": keycloak.issuer(KEYCLOAK_PORT),
        "KEYCLOAK_URL": keycloak.base_url(KEYCLOAK_PORT),
        "INVOICING_TOKEN_URL": keycloak.token_url(KEYCLOAK_PORT),
        "INVOICING_CLIENT_ID": keycloak.DEMO_CLIENT_ID,
        "INVOICING_CLIENT_SECRET": SECRETS.get("keycloak-demo-client"),
        # Keycloak's master-realm administrator: tests that need a second realm.
        "KEYCLOAK_ADMIN_PASSWORD_FILE": str(SECRETS.path("keycloak-admin")),
    }
    if not external:
        values |= {
            "PGPASSFILE": str(SECRETS.folder / "pgpass-admin"),
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": kafka_security.MECHANISM,
            "KAFKA_SASL_USERNAME": "operator",
            "KAFKA_SASL_PASSWORD_FILE": str(SECRETS.path("kafka-operator")),
            # `invoicectl dlq replay`, which writes the pipeline's topics.
            "KAFKA_REPLAY_SASL_USERNAME": "replayer",
            "KAFKA_REPLAY_SASL_PASSWORD_FILE": str(SECRETS.path("kafka-replayer")),
            # The cluster's super user: tests and provisioning only.
            "KAFKA_ADMIN_USERNAME": kafka_security.ADMIN,
            "KAFKA_ADMIN_PASSWORD_FILE": str(SECRETS.path("kafka-admin")),
        }
    if count == 2:
        values |= {
            "PLATFORMS": "2",
            "PEER_PLATFORM_ID": PEER.id,
            # INVOICING_TOPIC_PREFIX=$PEER_TOPIC_PREFIX points the CLI at B's topics.
            "PEER_TOPIC_PREFIX": PEER.topic_prefix,
            "PEER_DATABASE_URL": f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/{PEER.database}",
        }
    for spec in stack_services(count):
        values[spec.addr_var] = f"127.0.0.1:{spec.port}"
        values[f"{spec.env_name}_METRICS_ADDR"] = f"127.0.0.1:{spec.metrics_port}"
        values[f"{spec.env_name}_HEALTH_ADDR"] = f"127.0.0.1:{spec.health_port}"
    return values


def write_env(values: dict[str, str]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `make up`; source it: . .run/env (it holds the demo account's secret: keep it private)"]
    lines += [f"export {k}='{v}'" for k, v in values.items()]
    write_private(RUN / "env", "\n".join(lines) + "\n")


def all_parts() -> tuple[str, ...]:
    """Every part `status`, `stop` and `down` know: platform B's services
    when PLATFORMS=2 or when they have a pid file."""
    peers = [spec.name for spec in PEER_SERVICES if PLATFORMS == "2" or _pid_file(spec.name).exists()]
    return (*(n.name for n in kafka_nodes()), "postgres", "keycloak", "s3", *(s.name for s in SERVICES), *peers)


def local_s3() -> bool:
    return os.environ.get("ARCHIVE_STORE") == "s3" and not os.environ.get("ARCHIVE_S3_ENDPOINT_URL")


def start_s3(buckets: list[str]) -> None:
    """The local object store for ARCHIVE_STORE=s3, with each platform's archive bucket."""
    import httpx

    if running_pid("s3") is None:
        if port_open(S3_PORT):
            raise SystemExit(f"port {S3_PORT} is taken by another process; set S3_PORT")
        say(f"starting s3 (moto server) on 127.0.0.1:{S3_PORT}")
        spawn("s3", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)], server_environment())
    wait_until("s3", lambda: port_open(S3_PORT), "s3")
    for bucket in buckets:
        # Creating a bucket that exists answers 409 and changes nothing.
        httpx.put(f"http://127.0.0.1:{S3_PORT}/{bucket}", timeout=10)


def up(services: bool = True, count: int | None = None) -> list[str]:
    """Start what is not running; returns the names started by this call.
    If start-up fails, what this call started is stopped again: a failed
    `make up` or `make test` leaves no process behind. Without services:
    Kafka, PostgreSQL and Keycloak only, provisioned, for services run
    elsewhere (containers: `make deploy-local`). ``count``: the platforms
    (None: platform_count())."""
    before = {name for name in all_parts() if running_pid(name)}
    try:
        _up(services, platform_count() if count is None else count)
    except BaseException:
        started = [name for name in all_parts() if name not in before and running_pid(name)]
        if started:
            say(f"start-up failed; stopping what it started: {', '.join(started)}")
            down(started)
        raise
    after = {name for name in all_parts() if running_pid(name)}
    return sorted(after - before)


def _up(services: bool, count: int) -> None:
    values = endpoints(count)
    platforms = stack_platforms(count)
    if count == 2 and values["STACK_EXTERNAL_INFRA"] == "1":
        raise SystemExit("PLATFORMS=2 needs the stack's own Kafka and PostgreSQL (it provisions B's database)")
    tls = pki.ensure(TLS_DIR, clients=KAFKA_CERT_PRINCIPALS)
    sys.path.insert(0, str(ROOT / "libs" / "common"))
    from invoicing_common.kafka import admin as topic_admin
    from invoicing_common.settings import KafkaClientSettings

    # Keycloak takes longest to start: first, so it boots while the rest does.
    start_keycloak(tls)
    if local_s3():
        start_s3([archive_bucket(p) for p in platforms])
    if values["STACK_EXTERNAL_INFRA"] == "1":
        say("KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are set: using them, starting no broker or database")
        kafka_admin = KafkaClientSettings()
        wait_until("database", lambda: postgres_ready(values["DATABASE_URL"]))
        wait_until("kafka", lambda: kafka_ready(kafka_admin))
    else:
        start_kafka(tls)
        start_postgres()
        admin_password = SECRETS.get("postgres-admin")
        wait_until(
            "postgres",
            lambda: postgres_ready(f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/postgres", admin_password),
            "postgres",
        )
        provision_database([p.database for p in platforms])
        kafka_admin = kafka_admin_settings(values["KAFKA_BOOTSTRAP_SERVERS"])
        wait_until("kafka", lambda: kafka_ready(kafka_admin), "kafka")
        if kafka_security.provision(
            kafka_classpath(), RUN / "kafka", values["KAFKA_BOOTSTRAP_SERVERS"], SECRETS.get("kafka-admin"),
            _kafka_passwords(), prefixes=[p.topic_prefix for p in platforms],
        ):  # fmt: skip
            say(f"kafka principals and ACLs applied from {kafka_security.PRINCIPALS_FILE.relative_to(ROOT)}")
        operator = pki.client_files(TLS_DIR, "operator")
        write_private(
            RUN / "kcat.conf",
            kafka_security.kcat_properties(f"127.0.0.1:{KAFKA_TLS_PORT}", tls.ca_cert, operator.cert, operator.key),
        )
    # The services create no topic: they are provisioned from deploy/kafka/topics.toml,
    # once per platform, with its prefix.
    replication, min_isr = (1, 1) if values["STACK_EXTERNAL_INFRA"] == "1" else kafka_replication()
    for platform in platforms:
        specs = topic_admin.load(
            partitions=TOPIC_PARTITIONS,
            replication_factor=replication if replication > 1 else None,
            min_insync_replicas=min_isr if min_isr > 1 else None,
            prefix=platform.topic_prefix,
        )
        steps = asyncio.run(topic_admin.apply(kafka_admin, specs))
        for step in steps:
            if step.action != "unchanged":
                say(f"topic {step.topic}: {step.action} {step.detail}".rstrip())
    wait_until("keycloak", lambda: keycloak.ready(KEYCLOAK_MANAGEMENT_PORT, tls.ca_cert), "keycloak")
    if keycloak.ensure_realm(
        KEYCLOAK_PORT, tls.ca_cert, SECRETS.get("keycloak-admin"), values["INVOICING_CLIENT_SECRET"]
    ):
        say(f"keycloak realm {keycloak.REALM} created from {keycloak.REALM_TEMPLATE.relative_to(ROOT)}")
    # Both platform accounts, whatever PLATFORMS says: the realm is the same
    # for one platform or two, and a realm made before them gets them here.
    accounts = {p.client_id: SECRETS.get(f"keycloak-{p.client_id}") for p in (LOCAL, PEER)}
    for client_id in keycloak.ensure_platform_clients(
        KEYCLOAK_PORT, tls.ca_cert, SECRETS.get("keycloak-admin"), accounts
    ):
        say(f"keycloak platform account {client_id} created")
    if count == 2:
        write_registries(values)
    chosen = stack_services(count)
    if services:
        for spec in chosen:
            start_service(spec, values)
        for spec in chosen:
            wait_until(f"{spec.name} health", partial(service_ready, spec.port, tls.ca_cert), spec.name)
            say(f"{spec.name} SERVING on 127.0.0.1:{spec.port} (TLS)")
    else:
        # What the services would be given, for whoever runs them instead.
        for spec in chosen:
            write_service_environment(spec, values)
    write_env(values)
    say(f"ready; endpoints written to {RUN / 'env'}")


def _service_steps() -> list[list[str]]:
    """Both platforms' services, last stage first; one service of each
    platform stopped together."""
    return [[peer.name, spec.name] for spec, peer in zip(reversed(SERVICES), reversed(PEER_SERVICES), strict=True)]


def down(names: list[str] | None = None) -> None:
    steps = [
        *_service_steps(),
        ["keycloak"],
        [n.name for n in kafka_nodes()],
        ["postgres"],
        ["s3"],
    ]
    for step in steps:
        chosen = [name for name in step if names is None or name in names]
        if chosen:
            stop_together(chosen)
    if names is None:
        (RUN / "env").unlink(missing_ok=True)


def stop_services() -> None:
    for step in _service_steps():
        stop_together(step)


def restart_services() -> None:
    """Stop the services (both platforms') and start them again with this
    process's environment (e.g. to point OTEL_EXPORTER_OTLP_ENDPOINT somewhere)."""
    count = platform_count()  # before B's services stop: they are restarted too
    stop_services()
    up(count=count)


def status() -> int:
    """What runs; for a running service, whether its health says SERVING."""
    parts = all_parts()
    specs = {spec.name: spec for spec in (*SERVICES, *PEER_SERVICES)}
    ca_file = TLS_DIR / "ca.pem"
    width = max(len(name) for name in parts)
    for name in parts:
        pid = running_pid(name)
        state = f"running, pid {pid}" if pid else "stopped"
        if pid and name in specs and ca_file.exists():
            state += ", SERVING" if service_ready(specs[name].port, ca_file) else ", not serving"
        say(f"{name:{width}} {state}")
    return 0


@contextlib.contextmanager
def _started_for_tests(services: bool = True) -> Iterator[dict[str, str]]:
    started = up(services)
    try:
        yield endpoints()
    finally:
        if started:
            say(f"stopping what this run started: {', '.join(started)}")
            down(started)
            if set(started) >= {"kafka", "postgres"}:
                (RUN / "env").unlink(missing_ok=True)


def test(pytest_args: list[str]) -> int:
    with _started_for_tests() as values:
        env = {**os.environ, **values}
        return subprocess.call([str(VENV_BIN / "pytest"), *pytest_args], env=env, cwd=ROOT)


def test_images(pytest_args: list[str]) -> int:
    """The suite against the services run from the project's image
    (tests/containers.py starts them with testcontainers): the stack's own
    service processes would hold their ports, so they are stopped first."""
    for spec in reversed(SERVICES):
        stop(spec.name)
    with _started_for_tests(services=False) as values:
        env = {**os.environ, **values}
        return subprocess.call([str(VENV_BIN / "pytest"), "-p", "tests.containers", *pytest_args], env=env, cwd=ROOT)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        up()
        return 0
    if command == "infra":
        up(services=False)
        return 0
    if command == "down":
        down()
        return 0
    if command == "status":
        return status()
    if command == "restart-services":
        restart_services()
        return 0
    if command == "stop":
        unknown = sorted(set(argv[2:]) - set(all_parts()))
        if unknown or not argv[2:]:
            raise SystemExit(f"stop: name parts of the stack ({', '.join(all_parts())}); unknown: {unknown}")
        for name in argv[2:]:
            stop(name)
        return 0
    if command == "stop-services":
        stop_services()
        return 0
    if command in ("test", "test-images"):
        rest = argv[2:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        return test(rest) if command == "test" else test_images(rest)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
