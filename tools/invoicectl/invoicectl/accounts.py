"""API accounts, made in the identity provider through its admin API.

An account is an OAuth2 client with the client-credentials grant: its
service-account user carries the platform roles, and a hard-coded claim
carries the SIRENs it acts for. This is the one Keycloak-specific part of
the project, and it lives in the CLI: the services only read tokens.
Creating an account takes the caller's own token, so only an account
whose roles let it manage the realm's clients and users (`directory-admin`
in the realm the stack imports) can do it; Keycloak enforces that.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from stdnum.fr import siren as fr_siren

from invoicing_common.auth.client import TokenSource, unverified_claims
from invoicing_common.auth.principal import ROLE_DIRECTORY_ADMIN, ROLES

SIRENS_CLAIM = "sirens"
# Set on every client this module makes: `delete` removes no other client
# (the realm's own, or another application's).
MARKER = "invoicing.account"


class AccountError(Exception):
    """A request that cannot succeed as asked; names the field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Account:
    client_id: str
    client_secret: str
    roles: tuple[str, ...]
    sirens: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "roles": list(self.roles),
            "sirens": list(self.sirens),
        }


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(r.strip() for r in roles))
    if not chosen:
        raise AccountError("role", f"give at least one role ({', '.join(sorted(ROLES))})")
    unknown = [r for r in chosen if r not in ROLES]
    if unknown:
        raise AccountError("role", f"unknown role {', '.join(unknown)}; roles are {', '.join(sorted(ROLES))}")
    return chosen


def check_sirens(sirens: Iterable[str]) -> tuple[str, ...]:
    written = list(sirens)
    bad = [s for s in written if not fr_siren.is_valid(s)]
    # Canonical 9 digits: the services compare SIRENs as written in tokens.
    chosen = tuple(dict.fromkeys(fr_siren.compact(s) for s in written))
    if bad:
        raise AccountError("siren", f"{', '.join(bad)} is not a SIREN (9 digits with a valid check digit)")
    return chosen


def token_roles(token: str) -> set[str]:
    """The roles a token claims, read without verification: only to give
    a clear message before the identity provider refuses."""
    roles = unverified_claims(token).get("roles", [])
    return {r for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()


class AccountsAdmin:
    """Keycloak's admin REST API for one realm, found from the token URL
    (https://HOST/realms/REALM/protocol/openid-connect/token)."""

    def __init__(self, token_url: str, tokens: TokenSource, ca_file: str | None) -> None:
        parts = urlsplit(token_url)
        path = parts.path.split("/")
        if "realms" not in path or path.index("realms") + 1 >= len(path):
            raise AccountError("INVOICING_TOKEN_URL", f"{token_url} is not a Keycloak realm's token endpoint")
        realm = path[path.index("realms") + 1]
        prefix = "/".join(path[: path.index("realms")])
        self._base = f"{parts.scheme}://{parts.netloc}{prefix}/admin/realms/{realm}"
        self._tokens = tokens
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True

    def _client(self) -> httpx.Client:
        token = self._tokens.token()
        if ROLE_DIRECTORY_ADMIN not in token_roles(token):
            raise AccountError("credentials", f"managing accounts needs the {ROLE_DIRECTORY_ADMIN} role")
        return httpx.Client(
            verify=self._verify, timeout=30, headers={"Authorization": f"Bearer {token}"}, base_url=self._base
        )

    @staticmethod
    def _check(reply: httpx.Response, what: str) -> httpx.Response:
        if reply.status_code == 403:
            raise AccountError("credentials", f"the identity provider refused to {what} (403)")
        if reply.status_code >= 400:
            raise AccountError("identity provider", f"could not {what}: HTTP {reply.status_code} {reply.text[:300]}")
        return reply

    def create(self, roles: Iterable[str], sirens: Iterable[str], name: str = "") -> Account:
        chosen_roles, chosen_sirens = check_roles(roles), check_sirens(sirens)
        client_id = name or f"account-{uuid.uuid4().hex[:12]}"
        representation = {
            "clientId": client_id,
            "enabled": True,
            "publicClient": False,
            "clientAuthenticatorType": "client-secret",
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "implicitFlowEnabled": False,
            "directAccessGrantsEnabled": False,
            "attributes": {MARKER: "true"},
            "protocolMappers": [
                {
                    "name": SIRENS_CLAIM,
                    "protocol": "openid-connect",
                    "protocolMapper": "oidc-hardcoded-claim-mapper",
                    "config": {
                        "claim.name": SIRENS_CLAIM,
                        "claim.value": json.dumps(list(chosen_sirens)),
                        "jsonType.label": "JSON",
                        "access.token.claim": "true",
                        "id.token.claim": "false",
                        "introspection.token.claim": "true",
                    },
                }
            ],
        }
        with self._client() as http:
            reply = http.post("/clients", json=representation)
            if reply.status_code == 409:
                raise AccountError("name", f"an account named {client_id} already exists")
            self._check(reply, "create the client")
            internal_id = reply.headers["Location"].rstrip("/").rsplit("/", 1)[1]
            try:
                user = self._check(http.get(f"/clients/{internal_id}/service-account-user"), "read its user").json()
                wanted = [self._check(http.get(f"/roles/{r}"), f"read role {r}").json() for r in chosen_roles]
                self._check(http.post(f"/users/{user['id']}/role-mappings/realm", json=wanted), "grant the roles")
                secret = self._check(http.get(f"/clients/{internal_id}/client-secret"), "read its secret").json()
            except BaseException:
                # Nothing half-made: an account without its roles is removed.
                http.delete(f"/clients/{internal_id}")
                raise
        return Account(client_id, secret["value"], chosen_roles, chosen_sirens)

    def delete(self, client_id: str) -> bool:
        """Remove the account; False when there was none by that name.
        Clients not made as accounts (the realm's own, the demo account's
        realm import) are refused."""
        with self._client() as http:
            found = self._check(http.get("/clients", params={"clientId": client_id}), "look the account up").json()
            if not found:
                return False
            if found[0].get("attributes", {}).get(MARKER) != "true":
                raise AccountError("client_id", f"{client_id} is not an account made by `invoicectl accounts create`")
            self._check(http.delete(f"/clients/{found[0]['id']}"), "delete the account")
        return True
