"""The exchange client over the wire: TLS to the peer, a bearer token of the
client-credentials grant on each call (this platform's account there), the
ExchangeService's access policy on the other end; what fails how."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from invoicing.v1 import exchange_pb2, exchange_pb2_grpc

from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.principal import current_principal
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tls import server_credentials
from invoicing_common.auth.tokens import OidcConfig, TokenVerifier
from invoicing_common.platforms import Peer
from invoicing_status.exchange_api import EXCHANGE_POLICY
from invoicing_status.exchange_client import ExchangeClient
from invoicing_status.exchange_stage import PERMANENT_CODES
from tests.unit.auth_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    LocalHttpServer,
    Pki,
    claims,
    jwk,
    jwks,
    make_pki,
    mint,
    rsa_key,
)

KEY = rsa_key()


class TokenEndpoint:
    """Issues tokens to platform-local with its current secret."""

    def __init__(self, roles: list[str]) -> None:
        self.secret = "first-secret"
        self.roles = roles
        self.issued = 0

    def __call__(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        expected = "Basic " + base64.b64encode(f"platform-local:{self.secret}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client"}
        self.issued += 1
        token = mint(KEY, "k1", claims(sub=f"service-account-{self.issued}", azp="platform-local", roles=self.roles))
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300}


class Servicer(exchange_pb2_grpc.ExchangeServiceServicer):
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def SubmitLifecycleMessage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self.received.append((current_principal().client_id, request.message))
        return exchange_pb2.SubmitLifecycleMessageResponse(invoice_id="remote-1", status_code=203, applied=True)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def peer_server(pki: Pki) -> AsyncIterator[tuple[str, Servicer]]:
    async def fetch_json(url: str) -> dict[str, Any]:
        return jwks(jwk(KEY, "k1"))

    verifier = TokenVerifier(OidcConfig(ISSUER, AUDIENCE, jwks_url="https://idp.test/jwks"), fetch_json, lambda: NOW)
    gate = AuthInterceptor(verifier, EXCHANGE_POLICY, RateLimiter(100, 100), StreamLimiter(1))
    server = grpc.aio.server(interceptors=[gate])
    servicer = Servicer()
    exchange_pb2_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.cert_file, pki.key_file))
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


def _peer(address: str, token_url: str, pki: Pki, secret_file: Path) -> Peer:
    return Peer(
        id="peer", ingest="unused", exchange=address, token_url=token_url, client_id="platform-local",
        client_secret_file=str(secret_file), caller_client_id="platform-peer", ca_file=pki.ca_file,
    )  # fmt: skip


async def test_a_message_reaches_the_peer_as_this_platform_s_account(
    pki: Pki, peer_server: tuple[str, Servicer], tmp_path: Path
) -> None:
    address, servicer = peer_server
    endpoint = TokenEndpoint(["platform"])
    secret = tmp_path / "secret"
    secret.write_text("first-secret\n")
    client = ExchangeClient(10.0)
    with LocalHttpServer(endpoint, pki) as idp:
        peer = _peer(address, idp.url + "/token", pki, secret)
        try:
            answer = await client.submit(peer, "inv-1", b"<cdar/>")
            await client.submit(peer, "inv-1", b"<cdar-2/>")
            assert endpoint.issued == 1  # one token for both calls
            # A rotated secret file is read at the next call.
            endpoint.secret = "second-secret"
            secret.write_text("second-secret\n")
            await client.submit(peer, "inv-1", b"<cdar-3/>")
            assert endpoint.issued == 2
        finally:
            await client.stop()
    assert (answer.invoice_id, answer.status_code, answer.applied) == ("remote-1", 203, True)
    assert servicer.received == [
        ("platform-local", b"<cdar/>"),
        ("platform-local", b"<cdar-2/>"),
        ("platform-local", b"<cdar-3/>"),
    ]


async def test_refused_credentials_are_waited_out_an_account_without_the_role_is_refused_for_good(
    pki: Pki, peer_server: tuple[str, Servicer], tmp_path: Path
) -> None:
    address, servicer = peer_server
    secret = tmp_path / "secret"
    secret.write_text("wrong")
    client = ExchangeClient(10.0)
    with LocalHttpServer(TokenEndpoint(["platform"]), pki) as idp:
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.submit(_peer(address, idp.url + "/token", pki, secret), "inv-1", b"<cdar/>")
        finally:
            await client.stop()
    # An operator's fix: the stage retries, nothing is dropped.
    assert failed.value.code() not in PERMANENT_CODES
    secret.write_text("first-secret")
    client = ExchangeClient(10.0)
    with LocalHttpServer(TokenEndpoint(["supplier"]), pki) as idp:
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.submit(_peer(address, idp.url + "/token", pki, secret), "inv-1", b"<cdar/>")
        finally:
            await client.stop()
    assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert failed.value.code() in PERMANENT_CODES
    assert servicer.received == []


async def test_an_unreachable_peer_is_a_failure_that_may_pass(pki: Pki, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("first-secret")
    client = ExchangeClient(2.0)
    with LocalHttpServer(TokenEndpoint(["platform"]), pki) as idp:
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.submit(_peer("127.0.0.1:1", idp.url + "/token", pki, secret), "inv-1", b"<cdar/>")
        finally:
            await client.stop()
    assert failed.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
