"""The local stack: Apache Kafka (KRaft), PostgreSQL 15 and the four services.

    python deploy/local/stack.py up       start what is not running, wait until ready
    python deploy/local/stack.py down     stop what `up` started, by pid
    python deploy/local/stack.py status   show what runs
    python deploy/local/stack.py restart-services
                                          restart the four services with the current environment
    python deploy/local/stack.py stop-services
                                          stop the four services, keep Kafka and PostgreSQL (`up` restarts them)
    python deploy/local/stack.py test -- [pytest args]
                                          up, run the whole suite, then stop
                                          whatever this command started

Everything lives under .run/ (git-ignored; STACK_RUN_DIR moves it): data, logs, pid files and
.run/env, the endpoints as shell assignments. When KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL are already set, no broker or database is started and those are
used instead.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# STACK_RUN_DIR lets two stacks (e.g. with other *_PORT values) run side by side.
RUN = Path(os.environ.get("STACK_RUN_DIR", ROOT / ".run")).resolve()
PIDS = RUN / "pids"
LOGS = RUN / "logs"
CACHE = ROOT / ".cache"
KAFKA_POM = ROOT / "deploy" / "local" / "kafka" / "pom.xml"
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.4.0")
KAFKA_PORT = int(os.environ.get("KAFKA_PORT", "19092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("KAFKA_CONTROLLER_PORT", "19093"))
PG_PORT = int(os.environ.get("PG_PORT", "15432"))
TOPIC_PARTITIONS = int(os.environ.get("TOPIC_PARTITIONS", "6"))
PLATFORM_ID = os.environ.get("PLATFORM_ID", "local")
STARTUP_TIMEOUT = float(os.environ.get("STACK_STARTUP_TIMEOUT", "180"))


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    addr_var: str

    @property
    def metrics_port(self) -> int:
        # Prometheus scrape port: the gRPC port + 100 unless set explicitly.
        return int(os.environ.get(f"{self.name.upper()}_METRICS_PORT", str(self.port + 100)))


SERVICES = (
    ServiceSpec("ingest", "invoicing_ingest", int(os.environ.get("INGEST_PORT", "17001")), "INGEST_ADDR"),
    ServiceSpec("validate", "invoicing_validate", int(os.environ.get("VALIDATE_PORT", "17002")), "VALIDATE_ADDR"),
    ServiceSpec("route", "invoicing_route", int(os.environ.get("ROUTE_PORT", "17003")), "ROUTE_ADDR"),
    ServiceSpec("status", "invoicing_status", int(os.environ.get("STATUS_PORT", "17004")), "STATUS_ADDR"),
)


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


def stop(name: str, timeout: float = 45.0) -> None:
    pid = running_pid(name)
    if pid is None:
        return
    say(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reap(pid):
            break
        time.sleep(0.1)
    else:
        say(f"{name} did not stop within {timeout:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while not _reap(pid):
            time.sleep(0.1)
    _pid_file(name).unlink(missing_ok=True)


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


def start_kafka() -> None:
    if running_pid("kafka") is not None:
        say(f"kafka already running on 127.0.0.1:{KAFKA_PORT}")
        return
    if port_open(KAFKA_PORT):
        raise SystemExit(f"port {KAFKA_PORT} is taken by another process; set KAFKA_PORT")
    classpath = kafka_classpath()
    home = RUN / "kafka"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT},CONTROLLER://127.0.0.1:{KAFKA_CONTROLLER_PORT}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{KAFKA_PORT}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                f"num.partitions={TOPIC_PARTITIONS}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Invoices travel inline; room for a 5 MiB document and more.
                "message.max.bytes=33554432",
                "replica.fetch.max.bytes=33554432",
                "auto.create.topics.enable=false",
                "",
            ]
        )
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
        cluster_id = subprocess.run(
            ["java", "-cp", java_cp, "kafka.tools.StorageTool", "random-uuid"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        subprocess.run(
            ["java", "-cp", java_cp, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            check=True, capture_output=True,
        )  # fmt: skip
    say(f"starting kafka {KAFKA_VERSION} on 127.0.0.1:{KAFKA_PORT}")
    spawn(
        "kafka",
        ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={log4j}",
         "-cp", java_cp, "kafka.Kafka", str(props)],
        env=dict(os.environ),
    )  # fmt: skip


def kafka_ready(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    host, _, port = bootstrap.split(",")[0].rpartition(":")
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
        say("initdb (PostgreSQL 15)")
        shutil.rmtree(data, ignore_errors=True)
        home.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(home, user)
        argv = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "invoicing", "--auth=trust", "-E", "UTF8",
                "--no-locale", "--no-sync"]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, user=user, group=user, extra_groups=[] if user else None)
    sock.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(sock, user)
    say(f"starting postgres on 127.0.0.1:{PG_PORT}")
    spawn(
        "postgres",
        [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(PG_PORT), "-h", "127.0.0.1", "-k", str(sock),
         "-c", "max_connections=200", "-c", "fsync=on", "-c", "shared_buffers=256MB"],
        env=dict(os.environ),
        user=user,
    )  # fmt: skip


def postgres_ready(url: str) -> bool:
    import asyncpg  # type: ignore[import-untyped]

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def ensure_database(admin_url: str, name: str) -> None:
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


# --- services ------------------------------------------------------------------


def service_ready(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not port_open(port):
        return False
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_service(spec: ServiceSpec, env: dict[str, str]) -> None:
    if running_pid(spec.name) is not None:
        say(f"{spec.name} already running on 127.0.0.1:{spec.port}")
        return
    if port_open(spec.port):
        raise SystemExit(f"port {spec.port} is taken by another process; set {spec.name.upper()}_PORT")
    say(f"starting {spec.name} on 127.0.0.1:{spec.port}")
    spawn(
        spec.name,
        [str(VENV_BIN / "python"), "-m", spec.module],
        env={**env, "GRPC_PORT": str(spec.port), "METRICS_PORT": str(spec.metrics_port)},
    )


# --- commands ------------------------------------------------------------------


def endpoints() -> dict[str, str]:
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"))
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{KAFKA_PORT}")
        if external
        else f"127.0.0.1:{KAFKA_PORT}",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "")
        if external
        else f"postgresql://invoicing@127.0.0.1:{PG_PORT}/invoicing",
        "TOPIC_PARTITIONS": str(TOPIC_PARTITIONS),
        "PLATFORM_ID": PLATFORM_ID,
        "STACK_EXTERNAL_INFRA": "1" if external else "0",
        "STACK_RUN_DIR": str(RUN),
    }
    for spec in SERVICES:
        values[spec.addr_var] = f"127.0.0.1:{spec.port}"
        values[f"{spec.name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{spec.metrics_port}"
    return values


def write_env(values: dict[str, str]) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `make up`; source it: . .run/env"]
    lines += [f"export {k}='{v}'" for k, v in values.items()]
    (RUN / "env").write_text("\n".join(lines) + "\n")


ALL_PARTS = ("kafka", "postgres", *(s.name for s in SERVICES))


def up() -> list[str]:
    """Start what is not running; returns the names started by this call.
    If start-up fails, what this call started is stopped again: a failed
    `make up` or `make test` leaves no process behind."""
    before = {name for name in ALL_PARTS if running_pid(name)}
    try:
        _up()
    except BaseException:
        started = [name for name in ALL_PARTS if name not in before and running_pid(name)]
        if started:
            say(f"start-up failed; stopping what it started: {', '.join(started)}")
            down(started)
        raise
    after = {name for name in ALL_PARTS if running_pid(name)}
    return sorted(after - before)


def _up() -> None:
    values = endpoints()
    if values["STACK_EXTERNAL_INFRA"] == "1":
        say("KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are set: using them, starting no broker or database")
    else:
        start_kafka()
        start_postgres()
        wait_until(
            "postgres", lambda: postgres_ready(f"postgresql://invoicing@127.0.0.1:{PG_PORT}/postgres"), "postgres"
        )
        ensure_database(f"postgresql://invoicing@127.0.0.1:{PG_PORT}/postgres", "invoicing")
        wait_until("kafka", lambda: kafka_ready(values["KAFKA_BOOTSTRAP_SERVERS"]), "kafka")
    wait_until("database", lambda: postgres_ready(values["DATABASE_URL"]))
    sys.path.insert(0, str(ROOT / "libs" / "common"))
    from invoicing_common.kafka import ensure_topics

    created = asyncio.run(ensure_topics(values["KAFKA_BOOTSTRAP_SERVERS"], TOPIC_PARTITIONS))
    if created:
        say(f"created topics ({TOPIC_PARTITIONS} partitions): {', '.join(created)}")
    env = {**os.environ, **values}
    for spec in SERVICES:
        start_service(spec, env)
    for spec in SERVICES:
        wait_until(f"{spec.name} health", lambda port=spec.port: service_ready(port), spec.name)  # type: ignore[misc]
        say(f"{spec.name} SERVING on 127.0.0.1:{spec.port}")
    write_env(values)
    say(f"ready; endpoints written to {RUN / 'env'}")


def down(names: list[str] | None = None) -> None:
    order = [*(s.name for s in reversed(SERVICES)), "kafka", "postgres"]
    for name in order:
        if names is None or name in names:
            stop(name)
    if names is None:
        (RUN / "env").unlink(missing_ok=True)


def restart_services() -> None:
    """Stop the four services and start them again with this process's
    environment (e.g. to point OTEL_EXPORTER_OTLP_ENDPOINT somewhere)."""
    for spec in reversed(SERVICES):
        stop(spec.name)
    up()


def status() -> int:
    for name in ALL_PARTS:
        pid = running_pid(name)
        say(f"{name:9} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


@contextlib.contextmanager
def _started_for_tests() -> Iterator[dict[str, str]]:
    started = up()
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


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        up()
        return 0
    if command == "down":
        down()
        return 0
    if command == "status":
        return status()
    if command == "restart-services":
        restart_services()
        return 0
    if command == "stop-services":
        for spec in reversed(SERVICES):
            stop(spec.name)
        return 0
    if command == "test":
        rest = argv[2:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        return test(rest)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
