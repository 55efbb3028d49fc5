"""Keycloak, the local stack's OpenID Connect provider.

Resolved once from Maven Central (`org.keycloak:keycloak-quarkus-dist`)
into `.cache/keycloak/`, run with `kc.sh start-dev` over HTTPS only, bound
to 127.0.0.1, its database (H2, file) under `.run/keycloak/`. The realm
`deploy/local/keycloak/invoicing-realm.json` is created through the admin
API once the server is ready. The services know nothing of Keycloak: they
are given an issuer URL and an audience (docs/security.md).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
POM = HERE / "keycloak" / "pom.xml"
REALM_TEMPLATE = HERE / "keycloak" / "invoicing-realm.json"
VERSION = os.environ.get("KEYCLOAK_VERSION", "26.5.6")
REALM = "invoicing"
AUDIENCE = "invoicing-api"
DEMO_CLIENT_ID = "invoicing-demo"
ADMIN_USER = "admin"


def resolve(cache: Path, say: Callable[[str], None] = print) -> Path:
    """The unpacked distribution, downloaded and unpacked once."""
    target = cache / "keycloak" / VERSION
    home = target / f"keycloak-{VERSION}"
    marker = target / ".complete"
    if marker.exists():
        return home
    say(f"resolving Keycloak {VERSION} from Maven Central (once, about 165 MB)")
    shutil.rmtree(target, ignore_errors=True)
    download = target / "download"
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), f"-Dkeycloak.version={VERSION}", "dependency:copy-dependencies",
         f"-DoutputDirectory={download}", "-DexcludeTransitive=true"],
        check=True,
    )  # fmt: skip
    (archive,) = download.glob("keycloak-quarkus-dist-*.zip")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    archive.unlink()
    for script in (home / "bin").glob("*.sh"):
        script.chmod(0o755)  # zip entries lose their modes
    marker.touch()
    return home


def _trust(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def base_url(port: int) -> str:
    return f"https://127.0.0.1:{port}"


def issuer(port: int) -> str:
    return f"{base_url(port)}/realms/{REALM}"


def token_url(port: int) -> str:
    return f"{issuer(port)}/protocol/openid-connect/token"


def command(home: Path, data: Path, chain: Path, key: Path, port: int, management_port: int) -> list[str]:
    return [
        str(home / "bin" / "kc.sh"),
        "start-dev",
        "--http-enabled=false",
        "--http-host=127.0.0.1",
        f"--https-port={port}",
        f"--https-certificate-file={chain}",
        f"--https-certificate-key-file={key}",
        # Tokens name this issuer whatever host name a client used.
        f"--hostname={base_url(port)}",
        f"--http-management-port={management_port}",
        "--health-enabled=true",
        "--db=dev-file",
        f"--db-url=jdbc:h2:file:{data / 'keycloakdb'};NON_KEYWORDS=VALUE",
        "--log-level=WARN,org.keycloak.services:INFO,io.quarkus:INFO",
    ]


def environment(admin_password: str) -> dict[str, str]:
    # Read on first start only, to create the master realm's administrator.
    return {"KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER, "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password}


def ready(management_port: int, ca_file: Path) -> bool:
    try:
        reply = httpx.get(f"https://127.0.0.1:{management_port}/health/ready", verify=_trust(ca_file), timeout=3)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def admin_token(port: int, ca_file: Path, admin_password: str) -> str:
    reply = httpx.post(
        f"{base_url(port)}/realms/master/protocol/openid-connect/token",
        data={"grant_type": "password", "client_id": "admin-cli", "username": ADMIN_USER, "password": admin_password},
        verify=_trust(ca_file),
        timeout=30,
    )
    if reply.status_code != 200:
        raise SystemExit(f"keycloak: the bootstrap administrator was refused ({reply.status_code}); run `make clean`")
    token: str = reply.json()["access_token"]
    return token


def ensure_realm(port: int, ca_file: Path, admin_password: str, demo_secret: str) -> bool:
    """Create the `invoicing` realm from its template when missing; returns
    whether it was created. An existing realm is left as it is: accounts
    made with `invoicectl accounts create` live there."""
    headers = {"Authorization": f"Bearer {admin_token(port, ca_file, admin_password)}"}
    with httpx.Client(verify=_trust(ca_file), timeout=60, headers=headers) as client:
        if client.get(f"{base_url(port)}/admin/realms/{REALM}").status_code == 200:
            return False
        realm = json.loads(REALM_TEMPLATE.read_text().replace("${DEMO_CLIENT_SECRET}", demo_secret))
        reply = client.post(f"{base_url(port)}/admin/realms", json=realm)
        if reply.status_code != 201:
            raise SystemExit(f"keycloak: creating realm {REALM} failed ({reply.status_code}): {reply.text[:500]}")
    return True
