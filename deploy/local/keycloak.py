"""Keycloak, the local stack's OpenID Connect provider.

Resolved once from Maven Central (`org.keycloak:keycloak-quarkus-dist`)
into `.cache/keycloak/`, run with `kc.sh start-dev` over HTTPS only, bound
to 127.0.0.1, its database (H2, file) under `.run/keycloak/`. The realm
`deploy/local/keycloak/invoicing-realm.json` is created through the admin
API once the server is ready. The services know nothing of Keycloak: they
are given an issuer URL and an audience (docs/security.md).

The platform accounts (`platform-local`, `platform-peer`: what one platform
calls another with, docs/reform.md) are made or brought up to date
at every start, so that a realm made before they existed gets them too.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import zipfile
from collections.abc import Callable, Mapping
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
# The realm role of another approved platform's account
# (invoicing_common.auth.principal.ROLE_PLATFORM).
PLATFORM_ROLE = "platform"


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


def platform_client(client_id: str, secret: str) -> dict[str, object]:
    """A platform's account: a confidential client whose service account
    holds the `platform` role. Its scope is that role alone (no full scope),
    so its tokens say roles ["platform"], and it has no sirens claim: it
    acts for no company of its own. The realm's default client scope,
    `invoicing-api`, gives the audience and the roles claim."""
    return {
        "clientId": client_id,
        "name": f"Platform account {client_id} (platform-to-platform exchange)",
        "enabled": True,
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "secret": secret,
        "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "fullScopeAllowed": False,
        "defaultClientScopes": [AUDIENCE],
        "optionalClientScopes": [],
    }


def ensure_platform_clients(port: int, ca_file: Path, admin_password: str, secrets: Mapping[str, str]) -> list[str]:
    """Make each client of ``secrets`` (client id -> secret) a platform
    account with that secret, creating the `platform` role and the client
    when missing; returns the client ids created. Idempotent."""
    headers = {"Authorization": f"Bearer {admin_token(port, ca_file, admin_password)}"}
    realm_url = f"{base_url(port)}/admin/realms/{REALM}"
    created: list[str] = []
    with httpx.Client(verify=_trust(ca_file), timeout=60, headers=headers, base_url=realm_url) as client:
        role = _ensure_role(client, PLATFORM_ROLE, "Another approved platform: delivers its sellers' invoices "
                            "and sends CDAR lifecycle messages")  # fmt: skip
        for client_id, secret in secrets.items():
            representation = platform_client(client_id, secret)
            found = _checked(client.get("/clients", params={"clientId": client_id}), f"look {client_id} up").json()
            if found:
                internal_id = found[0]["id"]
                # PUT changes the fields given: the secret follows the file.
                _checked(client.put(f"/clients/{internal_id}", json=representation), f"update {client_id}")
            else:
                reply = _checked(client.post("/clients", json=representation), f"create {client_id}")
                internal_id = reply.headers["Location"].rstrip("/").rsplit("/", 1)[1]
                created.append(client_id)
            user = _checked(client.get(f"/clients/{internal_id}/service-account-user"), f"read {client_id}'s user")
            # Both grants are idempotent: granting a held role changes nothing.
            _checked(client.post(f"/users/{user.json()['id']}/role-mappings/realm", json=[role]), "grant the role")
            _checked(client.post(f"/clients/{internal_id}/scope-mappings/realm", json=[role]), "scope the role")
    return created


def _ensure_role(client: httpx.Client, name: str, description: str) -> dict[str, object]:
    reply = client.get(f"/roles/{name}")
    if reply.status_code == 404:
        _checked(client.post("/roles", json={"name": name, "description": description}), f"create role {name}")
        reply = client.get(f"/roles/{name}")
    role: dict[str, object] = _checked(reply, f"read role {name}").json()
    return role


def _checked(reply: httpx.Response, what: str) -> httpx.Response:
    if reply.status_code >= 400:
        raise SystemExit(f"keycloak: could not {what} ({reply.status_code}): {reply.text[:500]}")
    return reply
