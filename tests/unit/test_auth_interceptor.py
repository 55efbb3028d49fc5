"""The gate, on a real in-process grpc.aio server with TLS: tokens, roles, quotas, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from invoicing.v1 import status_pb2, status_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from invoicing_common.auth import interceptor as interceptor_module
from invoicing_common.auth.client import secure_channel
from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.principal import ROLE_BUYER, ROLE_OPERATOR, ROLE_SUPPLIER, current_principal
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tls import server_credentials
from invoicing_common.auth.tokens import OidcConfig, TokenVerifier
from tests.unit.auth_support import AUDIENCE, ISSUER, NOW, SIREN_A, Pki, claims, jwk, jwks, make_pki, mint, rsa_key

KEY = rsa_key()
SERVICE = "/invoicing.v1.StatusService/"
POLICY = {
    SERVICE + "GetInvoice": frozenset(),
    SERVICE + "ListInvoices": frozenset({ROLE_OPERATOR, ROLE_BUYER}),
    SERVICE + "WatchInvoices": frozenset({ROLE_SUPPLIER}),
    # UpdateStatus is missing on purpose.
    "/test.Echo/Collect": frozenset(),
    "/test.Echo/Echo": frozenset(),
    "/test.Echo/Write": frozenset(),
}
TOKEN = mint(KEY, "k1", claims())
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class Servicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []
        self.sirens: list[frozenset[str]] = []
        self.finish_watch = asyncio.Event()

    async def GetInvoice(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self.time_remaining.append(context.time_remaining())
        principal = current_principal()
        self.sirens.append(principal.sirens)
        if request.invoice_id == "slow":
            # A slow handler (the behaviour under test), not a synchronisation.
            await asyncio.sleep(0.5)
        return status_pb2.GetInvoiceResponse(invoice_id=principal.subject)

    async def ListInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return status_pb2.ListInvoicesResponse()

    async def WatchInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # noqa: N802
        yield status_pb2.WatchInvoicesResponse(position=1)
        await self.finish_watch.wait()
        for position in (2, 3):
            yield status_pb2.WatchInvoicesResponse(position=position)

    async def UpdateStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return status_pb2.UpdateStatusResponse()


async def _collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    parts = [request async for request in requests]
    return current_principal().subject.encode() + b":" + b",".join(parts)


async def _echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield current_principal().subject.encode() + b":" + request


async def _write(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
    # The other streaming style: write() and return, no yield.
    async for request in requests:
        await context.write(current_principal().subject.encode() + b":" + request)


# The kinds StatusService lacks (stream_unary, stream_stream), with bytes in and out.
ECHO = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        "Write": grpc.stream_stream_rpc_method_handler(_write),
    },
)


class SignallingStreams(StreamLimiter):
    """Lets a test wait for the server to take or release a stream slot."""

    def __init__(self, max_per_key: int) -> None:
        super().__init__(max_per_key)
        self.acquired = asyncio.Event()
        self.released = asyncio.Event()

    def try_acquire(self, key: str) -> bool:
        taken = super().try_acquire(key)
        if taken:
            self.acquired.set()
        return taken

    def release(self, key: str) -> None:
        super().release(key)
        self.released.set()


class Refusals:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, amount: int, attributes: dict[str, str]) -> None:
        self.reasons.append(attributes["reason"])


@dataclass
class Harness:
    address: str
    pki: Pki
    servicer: Servicer
    streams: SignallingStreams

    def channel(self) -> grpc.aio.Channel:
        return secure_channel(self.address, None, self.pki.ca_file)


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> Refusals:
    recorder = Refusals()
    monkeypatch.setattr(interceptor_module, "REFUSALS", recorder)
    return recorder


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    pki = make_pki(tmp_path)
    servers: list[grpc.aio.Server] = []

    async def start_server(
        *,
        limiter: RateLimiter | None = None,
        max_streams: int = 5,
        default_deadline_seconds: float | None = None,
        client_ca_file: str | None = None,
        limited_streams: frozenset[str] = frozenset({SERVICE + "WatchInvoices"}),
        leeway_seconds: float = 30.0,
        clock: Callable[[], float] = lambda: NOW,
    ) -> Harness:
        verifier = TokenVerifier(
            OidcConfig(
                issuer=ISSUER, audience=AUDIENCE, jwks_url="https://idp.test/jwks", leeway_seconds=leeway_seconds
            ),
            fetch_json=_jwks_of_key,
            clock=lambda: NOW,
        )
        streams = SignallingStreams(max_streams)
        gate = AuthInterceptor(
            verifier,
            POLICY,
            limiter or RateLimiter(rate_per_second=1000, burst=1000),
            streams,
            limited_streams=limited_streams,
            default_deadline_seconds=default_deadline_seconds,
            # The wall clock token expiry is read against: the tokens' own time.
            clock=clock,
        )
        server = grpc.aio.server(interceptors=[aio_server_interceptor(), gate])  # type: ignore[no-untyped-call]
        servicer = Servicer()
        status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers((ECHO,))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.cert_file, pki.key_file, client_ca_file))
        assert port != 0
        servers.append(server)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return Harness(f"127.0.0.1:{port}", pki, servicer, streams)

    yield start_server
    for server in servers:
        await server.stop(None)


async def _jwks_of_key(url: str) -> dict[str, Any]:
    return jwks(jwk(KEY, "k1", alg="RS256"))


def _trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {key: value for key, value in error.trailing_metadata() or ()}


async def _get(channel: grpc.aio.Channel, metadata: Any = AUTH, invoice_id: str = "x", **kwargs: Any) -> Any:
    stub = status_pb2_grpc.StatusServiceStub(channel)
    return await stub.GetInvoice(status_pb2.GetInvoiceRequest(invoice_id=invoice_id), metadata=metadata, **kwargs)


def _client_certificate_credentials(pki: Pki) -> grpc.ChannelCredentials:
    pem = [Path(name).read_bytes() for name in (pki.ca_file, pki.client_key_file, pki.client_cert_file)]
    return grpc.ssl_channel_credentials(*pem)


async def _positions(call: Any) -> list[int]:
    """The positions left on a stream (read() and iteration may not be mixed on one call)."""
    positions = []
    while (response := await call.read()) is not grpc.aio.EOF:
        positions.append(response.position)
    return positions


async def test_health_needs_no_token(start: Start) -> None:
    harness = await start()
    async with harness.channel() as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_principal_reaches_the_handler(start: Start, memory_spans: InMemorySpanExporter) -> None:
    harness = await start()
    async with harness.channel() as channel:
        answer = await _get(channel)
    assert answer.invoice_id == "account-1"
    assert harness.servicer.sirens == [frozenset({SIREN_A})]
    spans = [s for s in memory_spans.get_finished_spans() if s.name.endswith("GetInvoice")]
    assert spans and spans[-1].attributes is not None and spans[-1].attributes["enduser.id"] == "account-1"


async def test_a_call_without_a_token_is_unauthenticated(start: Start, refusals: Refusals) -> None:
    harness = await start()
    async with harness.channel() as channel:
        for metadata in ((), (("authorization", f"Basic {TOKEN}"),), (("authorization", "Bearer "),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _get(channel, metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "missing bearer token"
            assert _trailers(caught.value)["www-authenticate"] == 'Bearer realm="invoicing"'
    assert refusals.reasons == ["missing_token"] * 3


async def test_a_bad_token_is_unauthenticated_and_says_no_more(start: Start, refusals: Refusals) -> None:
    harness = await start()
    expired = mint(KEY, "k1", claims(exp=int(NOW) - 3600))
    forged = mint(rsa_key(), "k1", claims())
    async with harness.channel() as channel:
        for token in ("garbage", expired, forged):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _get(channel, (("authorization", f"bearer {token}"),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "invalid or expired token"
            assert _trailers(caught.value)["www-authenticate"] == 'Bearer realm="invoicing"'
    assert refusals.reasons == ["invalid_token:malformed", "invalid_token:expired", "invalid_token:bad_signature"]


async def test_a_missing_role_is_permission_denied(start: Start, refusals: Refusals) -> None:
    harness = await start()
    async with harness.channel() as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListInvoices(status_pb2.ListInvoicesRequest(), metadata=AUTH)
        operator = mint(KEY, "k1", claims(sub="operator-1", roles=["operator"]))
        await stub.ListInvoices(status_pb2.ListInvoicesRequest(), metadata=(("authorization", f"Bearer {operator}"),))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "this account needs the role buyer (or operator) for ListInvoices"
    assert refusals.reasons == ["permission"]


async def test_a_method_without_a_policy_is_refused_to_everyone(
    start: Start, refusals: Refusals, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await start()
    operator = mint(KEY, "k1", claims(roles=["operator", "supplier", "buyer", "directory-admin"]))
    async with harness.channel() as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        # Without a valid token the answer is the one any guarded method gives:
        # whether the method has a policy is not for strangers to learn.
        for metadata in ((), (("authorization", "Bearer garbage"),)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.UpdateStatus(status_pb2.UpdateStatusRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.UpdateStatus(
                    status_pb2.UpdateStatusRequest(), metadata=(("authorization", f"Bearer {operator}"),)
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details() == "method not permitted"
    assert refusals.reasons == ["missing_token", "invalid_token:malformed", "no_policy", "no_policy"]
    assert caplog.text.count("UpdateStatus has no entry in the auth policy") == 1


async def test_an_unknown_method_stays_unimplemented(start: Start) -> None:
    harness = await start()
    async with harness.channel() as channel:
        call = channel.unary_unary(SERVICE + "NoSuchMethod", lambda m: m, lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", metadata=AUTH)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_rate_limit_is_per_account(start: Start, refusals: Refusals) -> None:
    harness = await start(limiter=RateLimiter(rate_per_second=1, burst=2, clock=lambda: 0.0))
    other = (("authorization", f"Bearer {mint(KEY, 'k1', claims(sub='account-2'))}"),)
    async with harness.channel() as channel:
        await _get(channel)
        await _get(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _get(channel)
        await _get(channel, other)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.details() == "rate limit exceeded: 1 requests/s per account; retry after 1000 ms"
    assert _trailers(caught.value)["retry-after-ms"] == "1000"
    assert refusals.reasons == ["rate_limited"]


async def test_concurrent_streams_are_capped_and_released(start: Start, refusals: Refusals) -> None:
    harness = await start(max_streams=1)
    request = status_pb2.WatchInvoicesRequest()
    other = (("authorization", f"Bearer {mint(KEY, 'k1', claims(sub='account-2'))}"),)
    async with harness.channel() as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        first = stub.WatchInvoices(request, metadata=AUTH)
        assert (await first.read()).position == 1
        assert harness.streams.active("account-1") == 1

        second = stub.WatchInvoices(request, metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await second.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "too many concurrent streams: the limit is 1 per account"
        assert _trailers(caught.value)["retry-after-ms"] == "1000"

        # Another account has its own cap; cancelling its stream frees its slot.
        theirs = stub.WatchInvoices(request, metadata=other)
        assert (await theirs.read()).position == 1
        harness.streams.released.clear()
        theirs.cancel()
        await asyncio.wait_for(harness.streams.released.wait(), timeout=10)
        assert harness.streams.active("account-2") == 0

        harness.servicer.finish_watch.set()
        assert await _positions(first) == [2, 3]
        assert harness.streams.active("account-1") == 0
        third = stub.WatchInvoices(request, metadata=AUTH)
        assert await _positions(third) == [1, 2, 3]
    assert refusals.reasons == ["too_many_streams"]


async def test_time_remaining_is_none_without_a_client_deadline(start: Start) -> None:
    harness = await start()
    async with harness.channel() as channel:
        await _get(channel)
        await _get(channel, timeout=30)
    without, with_deadline = harness.servicer.time_remaining
    assert without is None
    # gRPC rounds the timeout it sends up, so the server may see a little more.
    assert with_deadline is not None and 0 < with_deadline <= 31


async def test_the_default_deadline_applies_only_without_a_client_deadline(start: Start, refusals: Refusals) -> None:
    harness = await start(default_deadline_seconds=0.2)
    async with harness.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _get(channel, invoice_id="slow")
        answer = await _get(channel, invoice_id="slow", timeout=30)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details() == "no deadline set; the server's default of 0.2s passed"
    assert answer.invoice_id == "account-1"
    assert refusals.reasons == ["deadline"]


async def test_a_plaintext_client_cannot_talk_to_the_tls_port(start: Start) -> None:
    harness = await start()
    async with grpc.aio.insecure_channel(harness.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate(start: Start, tmp_path: Path) -> None:
    harness = await start(client_ca_file=str(tmp_path / "ca.pem"))
    pki = harness.pki
    async with harness.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.secure_channel(harness.address, _client_certificate_credentials(pki)) as channel:
        assert (await _get(channel)).invoice_id == "account-1"


async def test_client_streaming_kinds_are_guarded_too(start: Start) -> None:
    harness = await start()
    async with harness.channel() as channel:
        collect = channel.stream_unary("/test.Echo/Collect")
        assert await collect(iter([b"a", b"b"]), metadata=AUTH) == b"account-1:a,b"
        for method in ("/test.Echo/Echo", "/test.Echo/Write"):
            call = channel.stream_stream(method)(iter([b"a", b"b"]), metadata=AUTH)
            assert [response async for response in call] == [b"account-1:a", b"account-1:b"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(iter([b"a"]))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _drain(channel.stream_stream("/test.Echo/Echo")(iter([b"a"])))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def _bearer(**overrides: Any) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint(KEY, 'k1', claims(**overrides))}"),)


async def test_each_message_of_a_client_stream_is_charged(start: Start, refusals: Refusals) -> None:
    harness = await start(limiter=RateLimiter(rate_per_second=1, burst=3, clock=lambda: 0.0))
    async with harness.channel() as channel:
        collect = channel.stream_unary("/test.Echo/Collect")
        # The call pays for its first message; the two others take the rest of the burst.
        assert await collect(iter([b"a", b"b", b"c"]), metadata=AUTH) == b"account-1:a,b,c"
        with pytest.raises(grpc.aio.AioRpcError) as at_call:
            await collect(iter([b"a"]), metadata=AUTH)

        with pytest.raises(grpc.aio.AioRpcError) as at_message:
            await collect(iter([b"a", b"b", b"c", b"d"]), metadata=_bearer(sub="account-2"))

        echo = channel.stream_stream("/test.Echo/Echo")(
            iter([b"a", b"b", b"c", b"d"]), metadata=_bearer(sub="account-3")
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as mid_stream:
            async for response in echo:
                received.append(response)
    assert received == [b"account-3:a", b"account-3:b", b"account-3:c"]
    for caught in (at_call, at_message, mid_stream):
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "rate limit exceeded: 1 requests/s per account; retry after 1000 ms"
        assert _trailers(caught.value)["retry-after-ms"] == "1000"
    assert refusals.reasons == ["rate_limited"] * 3


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _held_open(first: bytes, until: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await until.wait()


async def test_a_response_stream_ends_when_its_token_expires(start: Start, refusals: Refusals) -> None:
    harness = await start(leeway_seconds=0.0)
    soon = _bearer(exp=int(NOW) + 1)
    never = asyncio.Event()
    async with harness.channel() as channel:
        watch = status_pb2_grpc.StatusServiceStub(channel).WatchInvoices(
            status_pb2.WatchInvoicesRequest(), metadata=soon
        )
        echo = channel.stream_stream("/test.Echo/Echo")(_held_open(b"a", never), metadata=soon)
        assert (await watch.read()).position == 1
        assert await echo.read() == b"account-1:a"
        # Both streams would stay open for ever; the token's expiry, a second away, ends them.
        for call in (watch, echo):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call.read(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "access token expired; call again with a new token"
            assert _trailers(caught.value)["www-authenticate"] == 'Bearer realm="invoicing"'
        never.set()
        await asyncio.wait_for(harness.streams.released.wait(), timeout=10)
        assert harness.streams.active("account-1") == 0
    assert refusals.reasons == ["token_expired", "token_expired"]


async def test_a_stream_on_a_token_past_its_expiry_here_gets_nothing(start: Start, refusals: Refusals) -> None:
    # The issuer's clock (the verifier's) lags ours: the token passed there, expired here.
    clock = WallClock(NOW + 5)
    harness = await start(leeway_seconds=0.0, clock=clock)
    async with harness.channel() as channel:
        watch = status_pb2_grpc.StatusServiceStub(channel).WatchInvoices(
            status_pb2.WatchInvoicesRequest(), metadata=_bearer(exp=int(NOW) + 1)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch.read()  # the handler's first response is ready at once, but not sent
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refusals.reasons == ["token_expired"]


async def test_client_streams_can_be_capped_too(start: Start, refusals: Refusals) -> None:
    harness = await start(max_streams=1, limited_streams=frozenset({"/test.Echo/Collect"}))
    async with harness.channel() as channel:
        collect = channel.stream_unary("/test.Echo/Collect")
        first = collect(metadata=AUTH)
        await first.write(b"a")
        await asyncio.wait_for(harness.streams.acquired.wait(), timeout=10)
        assert harness.streams.active("account-1") == 1

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(iter([b"b"]), metadata=AUTH)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "too many concurrent streams: the limit is 1 per account"
        # Another account has a slot of its own.
        assert await collect(iter([b"x"]), metadata=_bearer(sub="account-2")) == b"account-2:x"

        # The slot is held while the client is still sending, and freed when the call ends.
        assert harness.streams.active("account-1") == 1
        await first.write(b"c")
        await first.done_writing()
        assert await first == b"account-1:a,c"
        assert harness.streams.active("account-1") == 0
        assert await collect(iter([b"d"]), metadata=AUTH) == b"account-1:d"
    assert refusals.reasons == ["too_many_streams"]
