"""Kafka's authentication and authorisation in the local stack.

Clients authenticate with SASL/SCRAM-SHA-512, one principal per service
plus `operator` (deploy/kafka/principals.toml), and the broker's
StandardAuthorizer refuses whatever no ACL allows. `admin` is the
cluster's super user: the broker's own connections and the provisioning.

A second listener takes TLS with client certificates (mTLS): the
certificate's common name is the principal, under the same ACLs. It is
how librdkafka tools reach the cluster: kcat from Debian's packages is
built on librdkafka 2.0, whose SCRAM exchange Kafka 4 refuses (fixed in
librdkafka 2.6.1).

Platforms sharing the cluster (`make up PLATFORMS=2`) share the principals
too: every grant of principals.toml is made once per platform topic prefix
(INVOICING_TOPIC_PREFIX), for its topics and its consumer groups, which are
the services' OTEL_SERVICE_NAME and carry the same prefix.
"""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from credentials import write_private

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS_FILE = ROOT / "deploy" / "kafka" / "principals.toml"
PROVISION_SOURCE = ROOT / "deploy" / "kafka" / "Provision.java"
ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"

# What each kind of grant in principals.toml allows.
_TOPIC_OPERATIONS = {
    "read": ("READ", "DESCRIBE"),
    "write": ("WRITE", "DESCRIBE"),
    "manage": ("ALL",),
}


def load_principals(path: Path = PRINCIPALS_FILE) -> dict[str, dict[str, list[str]]]:
    data = tomllib.loads(path.read_text())
    for name, grants in data.items():
        unknown = set(grants) - {*_TOPIC_OPERATIONS, "groups"}
        if unknown:
            raise SystemExit(f"{path}: principal {name}: unknown grant(s) {', '.join(sorted(unknown))}")
    return data


def _pattern(name: str) -> tuple[str, str]:
    return ("PREFIXED", name[:-1]) if name.endswith("*") else ("LITERAL", name)


def acl_lines(principals: Mapping[str, Mapping[str, Iterable[str]]], prefixes: Sequence[str] = ("",)) -> list[str]:
    """`acl PRINCIPAL TYPE PATTERN NAME OPERATION` lines for Provision.java:
    each grant once per platform topic prefix of ``prefixes``."""
    lines: list[str] = []
    for prefix in dict.fromkeys(prefixes):
        for name, grants in principals.items():
            principal = f"User:{name}"
            for kind, operations in _TOPIC_OPERATIONS.items():
                for topic in grants.get(kind, ()):
                    pattern, resource = _pattern(prefix + topic)
                    lines += [f"acl {principal} TOPIC {pattern} {resource} {op}" for op in operations]
            for group in grants.get("groups", ()):
                pattern, resource = _pattern(prefix + group)
                lines += [f"acl {principal} GROUP {pattern} {resource} {op}" for op in ("READ", "DESCRIBE")]
    return lines


def _jaas(module: str, user: str, password: str, extra: str = "") -> str:
    return f'{module} required username="{user}" password="{password}"{extra};'


def server_properties(
    port: int,
    controller_port: int,
    tls_port: int,
    admin_password: str,
    keystore: Path,
    truststore: Path,
    certificate_principals: tuple[str, ...],
) -> list[str]:
    """The listener, SASL, TLS and authoriser lines of a combined broker and
    controller. The controller listener uses PLAIN with a static user:
    SCRAM credentials live in the metadata log the controller serves."""
    scram = _jaas("org.apache.kafka.common.security.scram.ScramLoginModule", ADMIN, admin_password)
    plain = _jaas(
        "org.apache.kafka.common.security.plain.PlainLoginModule", ADMIN, admin_password,
        f' user_{ADMIN}="{admin_password}"',
    )  # fmt: skip
    return [
        f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{tls_port},"
        f"CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{tls_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name=SASL_PLAINTEXT",
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config={scram}",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain}",
        "listener.name.ssl.ssl.client.auth=required",
        "listener.name.ssl.ssl.keystore.type=PEM",
        f"listener.name.ssl.ssl.keystore.location={keystore}",
        "listener.name.ssl.ssl.truststore.type=PEM",
        f"listener.name.ssl.ssl.truststore.location={truststore}",
        # Only the listed common names become principals (O=...,CN=operator ->
        # User:operator); any other certificate keeps its whole subject as its
        # name, which no ACL and no super user matches (CN=admin is not admin).
        "ssl.principal.mapping.rules=RULE:^(.*,)?CN=(" + "|".join(certificate_principals) + ")(,.*)?$/$2/,DEFAULT",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN}",
        "allow.everyone.if.no.acl.found=false",
    ]


def client_properties(bootstrap: str, user: str, password: str) -> str:
    """Java (and librdkafka, for kcat) client properties for ``user``."""
    return "\n".join(
        [
            f"bootstrap.servers={bootstrap}",
            "security.protocol=SASL_PLAINTEXT",
            f"sasl.mechanism={MECHANISM}",
            "sasl.jaas.config=" + _jaas("org.apache.kafka.common.security.scram.ScramLoginModule", user, password),
            "",
        ]
    )


def kcat_properties(bootstrap: str, ca_file: Path, cert_file: Path, key_file: Path) -> str:
    """librdkafka properties for the TLS listener with a client certificate."""
    return "\n".join(
        [
            f"bootstrap.servers={bootstrap}",
            "security.protocol=ssl",
            f"ssl.ca.location={ca_file}",
            f"ssl.certificate.location={cert_file}",
            f"ssl.key.location={key_file}",
            "",
        ]
    )


def provision(
    classpath: Path,
    home: Path,
    bootstrap: str,
    admin_password: str,
    passwords: Mapping[str, str],
    prefixes: Sequence[str] = ("",),
) -> bool:
    """Apply every principal's SCRAM credential and ACLs, granted for each
    topic prefix of ``prefixes`` (those of the platforms that run); skipped
    when nothing changed since the last run. Returns whether it ran. The
    list is the whole truth: the grants of a prefix left out are revoked."""
    principals = load_principals()
    missing = sorted(set(principals) - set(passwords))
    if missing:
        raise SystemExit(f"no password for Kafka principal(s) {', '.join(missing)}")
    credentials = [f"keep {ADMIN}"] + [f"scram {name} {passwords[name]}" for name in principals]
    commands = credentials + acl_lines(principals, prefixes)
    text = "\n".join(commands) + "\n"
    digest = hashlib.sha256((text + PROVISION_SOURCE.read_text()).encode()).hexdigest()
    marker = home / "provisioned"
    if marker.exists() and marker.read_text() == digest:
        return False
    admin_props = home / "admin.properties"
    write_private(admin_props, client_properties(bootstrap, ADMIN, admin_password))
    done = subprocess.run(
        ["java", "-cp", f"{classpath}/*", str(PROVISION_SOURCE), str(admin_props)],
        input=text, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        # stderr names lines, never their content (passwords).
        raise SystemExit(f"kafka: provisioning principals failed:\n{done.stderr[-3000:]}")
    marker.write_text(digest)
    return True
