"""Forged, foreign and misdirected tokens are refused, with nothing that
helps an attacker, and change nothing. Every token here comes from the
stack's real Keycloak, or is made from one of its tokens by an attacker
who knows only public material (the token itself and the issuer's JWKS)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from invoicing.v1 import common_pb2, status_pb2, status_pb2_grpc

from tests.support import (
    ROOT,
    Stack,
    anonymous_channel,
    ca_file,
    client_config,
    collect_until_final,
    demo,
    get_invoice,
    submit,
    unique_invoice,
)

pytestmark = pytest.mark.stack

REALM_TEMPLATE = ROOT / "deploy" / "local" / "keycloak" / "invoicing-realm.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeycloakAdmin:
    """The master realm's administrator (its password is in .run/secrets)."""

    def __init__(self) -> None:
        self.base = os.environ["KEYCLOAK_URL"]
        password = Path(os.environ["KEYCLOAK_ADMIN_PASSWORD_FILE"]).read_text().strip()
        self._verify = ssl.create_default_context(cafile=ca_file())
        reply = httpx.post(
            f"{self.base}/realms/master/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": password},
            verify=self._verify,
        )
        reply.raise_for_status()
        self.http = httpx.Client(
            base_url=f"{self.base}/admin/realms",
            verify=self._verify,
            headers={"Authorization": f"Bearer {reply.json()['access_token']}"},
            timeout=60,
        )

    def token(self, realm: str, client_id: str, secret: str) -> str:
        reply = httpx.post(
            f"{self.base}/realms/{realm}/protocol/openid-connect/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, secret),
            verify=self._verify,
        )
        reply.raise_for_status()
        token: str = reply.json()["access_token"]
        return token


@pytest.fixture(scope="module")
def keycloak() -> Iterator[KeycloakAdmin]:
    admin = KeycloakAdmin()
    yield admin
    admin.http.close()


@pytest.fixture(scope="module")
def foreign_token(keycloak: KeycloakAdmin) -> Iterator[str]:
    """A token of a second realm of the same Keycloak, made from the same
    template: same client, roles and SIRENs, another issuer and keys."""
    name = f"test-foreign-{uuid.uuid4().hex[:8]}"
    secret = uuid.uuid4().hex
    realm = json.loads(REALM_TEMPLATE.read_text().replace("${DEMO_CLIENT_SECRET}", secret))
    realm["realm"] = name
    assert keycloak.http.post("", json=realm).status_code == 201
    try:
        yield keycloak.token(name, "invoicing-demo", secret)
    finally:
        keycloak.http.delete(f"/{name}")


@pytest.fixture(scope="module")
def misdirected_token(keycloak: KeycloakAdmin) -> Iterator[str]:
    """A token of the right issuer, signed with its key, for another
    audience (a client without the invoicing-api scope)."""
    realm = client_config().token_url.split("/realms/")[1].split("/")[0]
    client_id, secret = f"test-other-api-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    created = keycloak.http.post(
        f"/{realm}/clients",
        json={
            "clientId": client_id,
            "secret": secret,
            "publicClient": False,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
            "protocolMappers": [
                {"name": "sub", "protocol": "openid-connect", "protocolMapper": "oidc-sub-mapper",
                 "config": {"access.token.claim": "true"}},
                {"name": "aud", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
                 "config": {"included.custom.audience": "another-api", "access.token.claim": "true"}},
            ],
        },
    )  # fmt: skip
    assert created.status_code == 201, created.text
    internal = created.headers["Location"].rsplit("/", 1)[1]
    try:
        for scope in keycloak.http.get(f"/{realm}/clients/{internal}/default-client-scopes").json():
            keycloak.http.delete(f"/{realm}/clients/{internal}/default-client-scopes/{scope['id']}")
        token = keycloak.token(realm, client_id, secret)
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == "another-api"
        yield token
    finally:
        keycloak.http.delete(f"/{realm}/clients/{internal}")


def _forgeries(genuine: str, victim_siren: str) -> dict[str, str]:
    """What an attacker makes of a genuine token and the public JWKS."""
    header_b64, payload_b64, signature_b64 = genuine.split(".")
    header = json.loads(_unb64(header_b64))
    payload = json.loads(_unb64(payload_b64))
    config = client_config()
    issuer = config.token_url.rsplit("/protocol/", 1)[0]
    jwks = httpx.get(
        f"{issuer}/protocol/openid-connect/certs", verify=ssl.create_default_context(cafile=config.ca_file)
    ).json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk)).public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    widened = _b64(json.dumps({**payload, "sirens": [victim_siren], "roles": ["operator"]}).encode())
    hs_header = _b64(json.dumps({**header, "alg": "HS256"}).encode())
    hs_input = f"{hs_header}.{payload_b64}".encode()
    flipped = signature_b64[:-4] + ("AAAA" if not signature_b64.endswith("AAAA") else "BBBB")
    return {
        "alg none": f"{_b64(json.dumps({**header, 'alg': 'none'}).encode())}.{payload_b64}.",
        "HS256 keyed with the public key": f"{hs_header}.{payload_b64}."
        + _b64(hmac.new(public_pem, hs_input, hashlib.sha256).digest()),
        "payload widened, signature kept": f"{header_b64}.{widened}.{signature_b64}",
        "signature tampered": f"{header_b64}.{payload_b64}.{flipped}",
        "not a JWT": "let-me-in",
    }


async def _list_as(stack: Stack, token: str) -> grpc.aio.AioRpcError:
    async with anonymous_channel(stack.status) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
                status_pb2.ListInvoicesRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
    return refused.value


async def test_forged_foreign_and_misdirected_tokens_are_refused_alike_and_change_nothing(
    stack: Stack, status_follower: object, foreign_token: str, misdirected_token: str
) -> None:
    # A victim's invoice that the forgeries try to move.
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    victim = (await submit(stack.ingest, doc, "victim.xml")).invoice_id
    await collect_until_final(status_follower, {victim})  # type: ignore[arg-type]

    attacker = demo().token()
    tokens = {
        **_forgeries(attacker, "512345679"),
        "another realm of the same Keycloak": foreign_token,
        "another audience": misdirected_token,
    }
    for name, token in tokens.items():
        refused = await _list_as(stack, token)
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, name
        # One answer for every kind of bad token: nothing to tell them apart.
        assert refused.details() == "invalid or expired token", name
        assert dict(refused.trailing_metadata() or ()).get("www-authenticate", "").startswith("Bearer"), name
        async with anonymous_channel(stack.status) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as update:
                await status_pb2_grpc.StatusServiceStub(channel).UpdateStatus(
                    status_pb2.UpdateStatusRequest(
                        invoice_id=victim, status_code=210, reason=common_pb2.Reason(code="X", text="y")
                    ),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=30,
                )
        assert update.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    history = [h.status_code for h in (await get_invoice(stack.status, victim)).history]
    assert history == [200, 203]

    # No token, and a token sent without the Bearer scheme.
    async with anonymous_channel(stack.status) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ListInvoices(status_pb2.ListInvoicesRequest(), timeout=30)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as basic:
            await stub.ListInvoices(
                status_pb2.ListInvoicesRequest(), metadata=(("authorization", attacker),), timeout=30
            )
        assert basic.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # The genuine token still works: the refusals were about the tokens.
    async with demo().channel(stack.status) as channel:
        await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(status_pb2.ListInvoicesRequest(), timeout=30)

    # No token reached a log line.
    logs = [p.read_text(errors="replace") for p in (stack.run_dir / "logs").glob("*.log")]
    for name, token in {**tokens, "genuine": attacker}.items():
        signature = token.rsplit(".", 1)[-1] or token
        assert not any(token in text or (len(signature) > 20 and signature in text) for text in logs), name


async def test_a_plaintext_client_is_refused(stack: Stack) -> None:
    for address in (stack.ingest, stack.status, stack.route, stack.validate):
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
                    status_pb2.ListInvoicesRequest(), metadata=demo().metadata(), timeout=10
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, address


async def test_a_client_that_does_not_trust_the_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    # The system's roots do not include the stack's CA: the server is not
    # what the client expects, and the client says so before sending a token.
    credentials = grpc.ssl_channel_credentials()
    async with grpc.aio.secure_channel(stack.status, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await status_pb2_grpc.StatusServiceStub(channel).ListInvoices(
                status_pb2.ListInvoicesRequest(), metadata=demo().metadata(), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_the_demo_token_carries_what_the_services_read() -> None:
    claims = _claims(demo().token())
    assert claims["aud"] == "invoicing-api"
    assert set(claims["roles"]) >= {"supplier", "buyer", "directory-admin"}
    assert sorted(claims["sirens"]) == ["512345679", "842109373"]
    assert claims["iss"] == os.environ["OIDC_ISSUER"]
