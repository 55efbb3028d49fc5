"""Prepare the compose deployment's files: TLS and secrets under .run/compose/.

    .venv/bin/python deploy/compose/prepare.py          (as root, for rootful podman)

Nothing secret is committed: the CA, the server certificate and the random
passwords are made here on first run (deploy/local/pki.py and
deploy/local/credentials.py, the local stack's own helpers) and kept, so a
second run changes nothing but renews what is close to expiry. Each
container gets a folder of its own, owned by the user it runs as, holding
only what it needs; compose.yaml bind-mounts them read-only:

    .run/compose/kafka/           the broker and its provisioning job (uid 10010)
    .run/compose/postgres/        the superuser's password (read by the root entrypoint)
    .run/compose/topics-init/     Kafka's super user password, for `invoicectl topics apply` (uid 10001)
    .run/compose/db-init/         PostgreSQL passwords, for provision_db.py (uid 10001)
    .run/compose/services/NAME/   one service's TLS key, Kafka password and passfile (uid 10001)
    .run/compose/env              endpoints for invoicectl / grpcurl on the host (source it)

The OIDC issuer's CA: OIDC_CA_FILE when set (the issuer given by OIDC_ISSUER
to compose), else this deployment's own CA.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import kafka_security  # noqa: E402
import pki  # noqa: E402
from credentials import Secrets, write_private  # noqa: E402

RUN = ROOT / ".run" / "compose"
SECRETS = Secrets(RUN / "secrets")
# The users the images run as (deploy/container/Containerfile*).
APP_UID = 10001
KAFKA_UID = 10010
# Host networking: these must match compose.yaml.
KAFKA_PORT = 29092
KAFKA_CONTROLLER_PORT = 29093
KAFKA_TLS_PORT = 29094
PG_PORT = 25432
PG_ADMIN = "invoicing"
PG_DATABASE = "invoicing"
SERVICE_PORTS = {"ingest": 27001, "validate": 27002, "route": 27003, "status": 27004}
# Services with a database role (route's schema is `directory`, made by provision_db.py).
DATABASE_SERVICES = ("ingest", "validate", "route", "status")
KAFKA_CERT_PRINCIPALS = ("operator",)
# Where compose.yaml mounts .run/compose/kafka in the Kafka containers.
KAFKA_CONFIG_DIR = Path("/etc/kafka")


def say(message: str) -> None:
    print(f"[compose-prepare] {message}", flush=True)


def own(path: Path, uid: int) -> None:
    """Give ``path`` to the container user ``uid`` (rootful podman maps ids 1:1)."""
    if os.geteuid() == 0:
        os.chown(path, uid, uid)


def private_folder(path: Path, uid: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    own(path, uid)
    return path


def put(path: Path, text: str, uid: int) -> None:
    write_private(path, text)
    own(path, uid)


def cluster_id() -> str:
    """A KRaft cluster id (a UUID in URL-safe base64), made once."""
    path = SECRETS.folder / "kafka-cluster-id"
    if not path.exists():
        while True:
            value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not value.startswith("-"):
                break
        write_private(path, value + "\n")
    return path.read_text().strip()


def prepare_kafka(tls: pki.TlsFiles) -> None:
    folder = private_folder(RUN / "kafka", KAFKA_UID)
    admin_password = SECRETS.get("kafka-admin")
    bundle, ca = KAFKA_CONFIG_DIR / "server-bundle.pem", KAFKA_CONFIG_DIR / "ca.pem"
    properties = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{KAFKA_CONTROLLER_PORT}",
        *kafka_security.server_properties(
            KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_TLS_PORT, admin_password, bundle, ca, KAFKA_CERT_PRINCIPALS
        ),
        "log.dirs=/var/lib/kafka/data",
        "num.partitions=6",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=6",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "message.max.bytes=33554432",
        "replica.fetch.max.bytes=33554432",
        "auto.create.topics.enable=false",
        "",
    ]
    put(folder / "server.properties", "\n".join(properties), KAFKA_UID)
    put(folder / "admin-password", admin_password, KAFKA_UID)
    put(folder / "cluster-id", cluster_id() + "\n", KAFKA_UID)
    put(folder / "server-bundle.pem", tls.server_bundle.read_text(), KAFKA_UID)
    put(folder / "ca.pem", tls.ca_cert.read_text(), KAFKA_UID)
    # The provisioning job (Provision.java): the admin client, then the list.
    bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    put(folder / "admin.properties", kafka_security.client_properties(bootstrap, "admin", admin_password), KAFKA_UID)
    principals = kafka_security.load_principals()
    commands = [f"keep {kafka_security.ADMIN}"]
    commands += [f"scram {name} {SECRETS.get(f'kafka-{name}')}" for name in principals]
    commands += kafka_security.acl_lines(principals)
    put(folder / "provision.txt", "\n".join(commands) + "\n", KAFKA_UID)


def pgpass_line(user: str, password: str) -> str:
    return f"127.0.0.1:{PG_PORT}:{PG_DATABASE}:{user}:{password}\n"


def prepare_postgres() -> None:
    folder = private_folder(RUN / "postgres", 0)
    put(folder / "admin-password", SECRETS.get("postgres-admin") + "\n", 0)
    init = private_folder(RUN / "db-init", APP_UID)
    put(init / "admin-password", SECRETS.get("postgres-admin"), APP_UID)
    for name in DATABASE_SERVICES:
        put(init / f"{name}-password", SECRETS.get(f"postgres-{name}"), APP_UID)
    topics = private_folder(RUN / "topics-init", APP_UID)
    put(topics / "kafka-admin-password", SECRETS.get("kafka-admin"), APP_UID)


def prepare_services(tls: pki.TlsFiles) -> None:
    oidc_ca = Path(os.environ.get("OIDC_CA_FILE") or tls.ca_cert)
    for name in SERVICE_PORTS:
        folder = private_folder(RUN / "services" / name, APP_UID)
        put(folder / "server.pem", tls.server_cert.read_text(), APP_UID)
        put(folder / "server.key", tls.server_key.read_text(), APP_UID)
        put(folder / "ca.pem", tls.ca_cert.read_text(), APP_UID)
        put(folder / "oidc-ca.pem", oidc_ca.read_text(), APP_UID)
        put(folder / "kafka-password", SECRETS.get(f"kafka-{name}"), APP_UID)
        if name in DATABASE_SERVICES:
            put(folder / "pgpass", pgpass_line(name, SECRETS.get(f"postgres-{name}")), APP_UID)


def write_env(tls: pki.TlsFiles) -> None:
    """What a shell on the host needs to reach the deployment (like .run/env)."""
    operator = pki.client_files(RUN / "tls", "operator")
    values = {
        "INGEST_ADDR": f"127.0.0.1:{SERVICE_PORTS['ingest']}",
        "VALIDATE_ADDR": f"127.0.0.1:{SERVICE_PORTS['validate']}",
        "ROUTE_ADDR": f"127.0.0.1:{SERVICE_PORTS['route']}",
        "STATUS_ADDR": f"127.0.0.1:{SERVICE_PORTS['status']}",
        "INVOICING_CA_FILE": str(tls.ca_cert),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": kafka_security.MECHANISM,
        "KAFKA_SASL_USERNAME": "operator",
        "KAFKA_SASL_PASSWORD_FILE": str(SECRETS.path("kafka-operator")),
        "KAFKA_ADMIN_USERNAME": kafka_security.ADMIN,
        "KAFKA_ADMIN_PASSWORD_FILE": str(SECRETS.path("kafka-admin")),
        "KAFKA_TLS_BOOTSTRAP": f"127.0.0.1:{KAFKA_TLS_PORT}",
        "KAFKA_OPERATOR_CERT_FILE": str(operator.cert),
        "KAFKA_OPERATOR_KEY_FILE": str(operator.key),
        "DATABASE_URL": f"postgresql://{PG_ADMIN}@127.0.0.1:{PG_PORT}/{PG_DATABASE}",
        "PGPASSFILE": str(SECRETS.folder / "pgpass-admin"),
    }
    write_private(SECRETS.folder / "pgpass-admin", pgpass_line(PG_ADMIN, SECRETS.get("postgres-admin")))
    lines = ["# Written by deploy/compose/prepare.py: . .run/compose/env"]
    lines += [f"export {key}='{value}'" for key, value in values.items()]
    write_private(RUN / "env", "\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if "--clean" in argv:
        # The data lives in podman volumes (`podman-compose down -v`); this
        # removes the certificates and passwords.
        shutil.rmtree(RUN, ignore_errors=True)
        say(f"removed {RUN}")
        return 0
    if os.geteuid() != 0:
        say("not root: files keep your uid; rootless podman maps it to root in the container, not to the")
        say("image users (10001, 10010): run `podman unshare chown` on .run/compose or run this as root")
    RUN.mkdir(parents=True, exist_ok=True)
    RUN.chmod(0o755)
    tls = pki.ensure(RUN / "tls", clients=KAFKA_CERT_PRINCIPALS)
    prepare_kafka(tls)
    prepare_postgres()
    prepare_services(tls)
    write_env(tls)
    say(f"TLS files and secrets ready under {RUN.relative_to(ROOT)}/ (endpoints: . {(RUN / 'env').relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
