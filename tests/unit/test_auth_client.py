"""The client side: configuration, the client-credentials token source, bearer channels."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from invoicing.v1 import status_pb2, status_pb2_grpc

from invoicing_common.auth.client import (
    ClientConfig,
    ConfigError,
    TokenError,
    TokenSource,
    secure_channel,
    secure_channel_sync,
    unverified_claims,
)
from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.principal import current_principal
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tls import server_credentials
from invoicing_common.auth.tokens import OidcConfig, TokenVerifier
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
SECRET = "s3cr3t-do-not-print"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Plays an OAuth2 token endpoint: checks the client credentials, issues tokens."""

    def __init__(self, expires_in: int | None = 300) -> None:
        self.expires_in = expires_in
        self.answer: tuple[int, dict[str, Any]] | None = None
        self.issued = 0

    def __call__(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if self.answer is not None:
            return self.answer
        expected = "Basic " + base64.b64encode(f"cli:{SECRET}".encode()).decode()
        if method != "POST" or headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
        if urllib.parse.parse_qs(body.decode()) != {"grant_type": ["client_credentials"]}:
            return 400, {"error": "unsupported_grant_type"}
        self.issued += 1
        document: dict[str, Any] = {
            "access_token": mint(KEY, "k1", claims(sub=f"service-account-{self.issued}")),
            "token_type": "Bearer",
        }
        if self.expires_in is not None:
            document["expires_in"] = self.expires_in
        return 200, document


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def config_for(url: str, pki: Pki | None, secret: str = SECRET) -> ClientConfig:
    return ClientConfig(
        token_url=url + "/token", client_id="cli", client_secret=secret, ca_file=pki.ca_file if pki else None
    )


def test_the_config_comes_from_the_environment() -> None:
    config = ClientConfig.from_env(
        {
            "INVOICING_TOKEN_URL": "https://idp/token",
            "INVOICING_CLIENT_ID": "cli",
            "INVOICING_CLIENT_SECRET": SECRET,
            "INVOICING_CA_FILE": "",
        }
    )
    assert config == ClientConfig("https://idp/token", "cli", SECRET, None)
    assert SECRET not in repr(config)


def test_missing_variables_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        ClientConfig.from_env({"INVOICING_CLIENT_ID": "cli"})
    assert "INVOICING_TOKEN_URL" in str(caught.value) and "INVOICING_CLIENT_SECRET" in str(caught.value)
    assert "INVOICING_CLIENT_ID" not in str(caught.value)


def test_a_token_is_fetched_once_and_renewed_before_it_expires(pki: Pki) -> None:
    endpoint = TokenEndpoint(expires_in=300)
    clock = Clock()
    with LocalHttpServer(endpoint, pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki), clock=clock)
        try:
            first = tokens.token()
            clock.now = 269
            assert tokens.token() == first
            assert endpoint.issued == 1
            clock.now = 270  # 30 s left: renew
            assert tokens.token() != first
            assert endpoint.issued == 2
        finally:
            tokens.close()


def test_short_lived_tokens_are_renewed_at_half_their_lifetime(pki: Pki) -> None:
    endpoint = TokenEndpoint(expires_in=40)
    clock = Clock()
    with LocalHttpServer(endpoint, pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki), clock=clock)
        try:
            tokens.token()
            clock.now = 19
            tokens.token()
            assert endpoint.issued == 1
            clock.now = 20
            tokens.token()
            assert endpoint.issued == 2
        finally:
            tokens.close()


def test_threads_share_one_fetch(pki: Pki) -> None:
    endpoint = TokenEndpoint()
    with LocalHttpServer(endpoint, pki) as server:
        tokens = TokenSource(server.url + "/token", "cli", SECRET, pki.ca_file)
        start = threading.Barrier(8)
        seen: list[str] = []

        def caller() -> None:
            start.wait()
            seen.append(tokens.token())

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tokens.close()
    assert endpoint.issued == 1 and len(set(seen)) == 1 and len(seen) == 8


async def test_atoken_does_not_block_the_loop(pki: Pki) -> None:
    with LocalHttpServer(TokenEndpoint(), pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki))
        try:
            assert await tokens.atoken() == tokens.token()
        finally:
            tokens.close()


def test_refused_credentials_name_the_oauth_error_not_the_secret(pki: Pki) -> None:
    with LocalHttpServer(TokenEndpoint(), pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki, secret="wrong-" + SECRET))
        with pytest.raises(TokenError) as caught:
            tokens.token()
        tokens.close()
    message = str(caught.value)
    assert message.startswith("the token endpoint refused the client credentials: invalid_client")
    assert SECRET not in message


def test_other_failures_are_explained(pki: Pki) -> None:
    endpoint = TokenEndpoint()
    with LocalHttpServer(endpoint, pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki))
        try:
            for answer, expected in (
                ((400, {"error": "invalid_scope"}), f"the token endpoint {server.url}/token refused the request: "),
                ((500, {}), f"the token endpoint {server.url}/token answered HTTP 500"),
                ((200, {"token_type": "Bearer"}), "answered without an access_token"),
                ((200, {"access_token": "x", "token_type": "mac"}), "issued a 'mac' token, not a bearer token"),
            ):
                endpoint.answer = answer
                with pytest.raises(TokenError) as caught:
                    tokens.token()
                assert expected in str(caught.value)
        finally:
            tokens.close()


def test_an_unreachable_endpoint_is_named() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more.
    tokens = TokenSource.from_config(config_for(f"http://127.0.0.1:{port}", None))
    with pytest.raises(TokenError) as caught:
        tokens.token()
    tokens.close()
    assert f"cannot reach the token endpoint http://127.0.0.1:{port}/token" in str(caught.value)


def test_an_untrusted_endpoint_certificate_is_refused(pki: Pki) -> None:
    with LocalHttpServer(TokenEndpoint(), pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, None))
        with pytest.raises(TokenError, match="cannot reach the token endpoint"):
            tokens.token()
        tokens.close()


def test_the_current_token_outlives_a_failed_renewal(pki: Pki) -> None:
    endpoint = TokenEndpoint(expires_in=300)
    clock = Clock()
    with LocalHttpServer(endpoint, pki) as server:
        tokens = TokenSource.from_config(config_for(server.url, pki), clock=clock)
        try:
            first = tokens.token()
            endpoint.answer = (503, {})
            clock.now = 280
            assert tokens.token() == first
            clock.now = 300
            with pytest.raises(TokenError):
                tokens.token()
        finally:
            tokens.close()


class Servicer(status_pb2_grpc.StatusServiceServicer):
    async def GetInvoice(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return status_pb2.GetInvoiceResponse(invoice_id=current_principal().subject)

    async def ListInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return status_pb2.ListInvoicesResponse()

    async def WatchInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        return
        yield

    async def UpdateStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return status_pb2.UpdateStatusResponse()


@pytest.fixture
async def grpc_address(pki: Pki) -> AsyncIterator[str]:
    async def fetch_json(url: str) -> dict[str, Any]:
        return jwks(jwk(KEY, "k1"))

    verifier = TokenVerifier(OidcConfig(ISSUER, AUDIENCE, jwks_url="https://idp.test/jwks"), fetch_json, lambda: NOW)
    gate = AuthInterceptor(
        verifier,
        {"/invoicing.v1.StatusService/GetInvoice": frozenset()},
        RateLimiter(rate_per_second=100, burst=100),
        StreamLimiter(1),
    )
    server = grpc.aio.server(interceptors=[gate])
    status_pb2_grpc.add_StatusServiceServicer_to_server(Servicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.cert_file, pki.key_file))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_channels_send_the_bearer_token(pki: Pki, grpc_address: str) -> None:
    with LocalHttpServer(TokenEndpoint(), pki) as token_server:
        tokens = TokenSource.from_config(config_for(token_server.url, pki))
        request = status_pb2.GetInvoiceRequest(invoice_id="x")
        try:
            async with secure_channel(grpc_address, tokens, pki.ca_file) as channel:
                answer = await status_pb2_grpc.StatusServiceStub(channel).GetInvoice(request, timeout=30)
            assert answer.invoice_id == "service-account-1"

            def call_sync() -> Any:
                with secure_channel_sync(grpc_address, tokens, pki.ca_file) as channel:
                    return status_pb2_grpc.StatusServiceStub(channel).GetInvoice(request, timeout=30)

            # The sync channel blocks: keep it off the loop that serves it.
            assert (await asyncio.to_thread(call_sync)).invoice_id == "service-account-1"
        finally:
            tokens.close()


async def test_a_token_failure_fails_the_call_with_its_message(pki: Pki, grpc_address: str) -> None:
    with LocalHttpServer(TokenEndpoint(), pki) as token_server:
        tokens = TokenSource.from_config(config_for(token_server.url, pki, secret="wrong"))
        try:
            async with secure_channel(grpc_address, tokens, pki.ca_file) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await status_pb2_grpc.StatusServiceStub(channel).GetInvoice(
                        status_pb2.GetInvoiceRequest(), timeout=30
                    )
        finally:
            tokens.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "refused the client credentials: invalid_client" in (caught.value.details() or "")


async def test_a_channel_without_tokens_is_unauthenticated(pki: Pki, grpc_address: str) -> None:
    async with secure_channel(grpc_address, None, pki.ca_file) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await status_pb2_grpc.StatusServiceStub(channel).GetInvoice(status_pb2.GetInvoiceRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_unreadable_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"INVOICING_CA_FILE: cannot read {tmp_path}/missing.pem"):
        secure_channel("127.0.0.1:1", None, str(tmp_path / "missing.pem"))


def test_a_client_reads_its_own_token_claims_and_nothing_from_a_non_jwt() -> None:
    body = base64.urlsafe_b64encode(json.dumps({"sub": "s-1", "sirens": ["842109373"]}).encode()).rstrip(b"=")
    assert unverified_claims(f"h.{body.decode()}.sig") == {"sub": "s-1", "sirens": ["842109373"]}
    assert unverified_claims("not a token") == {}
    assert unverified_claims("h.%%%.sig") == {}
