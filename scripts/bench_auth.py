"""What authentication costs per call, measured without the stack.

    .venv/bin/python scripts/bench_auth.py [--calls 20000] [--rounds 5]

1. TokenVerifier.verify: a token seen before (the cache) against a new one
   (an RS256 signature check), in microseconds of CPU per call.
2. The whole gate in a real grpc.aio server over TLS: the same unary call
   with the auth interceptor and without it, alternating rounds, in
   microseconds of the server process's CPU per call (client and server in
   one process: the difference is the gate's own cost).

Keys and tokens are made here (RS256, 2048 bits, as Keycloak signs); the
JWKS is served from memory. Results are in docs/performance-history.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from invoicing.v1 import status_pb2, status_pb2_grpc

from invoicectl.bench.baselines import throwaway_certificate
from invoicing_common.auth.interceptor import AuthInterceptor
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tokens import OidcConfig, TokenVerifier

ISSUER = "https://issuer.invalid/realms/bench"
AUDIENCE = "invoicing-api"
METHOD = "/invoicing.v1.StatusService/GetInvoice"


def _keys() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk |= {"kid": "bench", "use": "sig", "alg": "RS256"}
    return key, {"keys": [jwk]}


def _token(key: rsa.RSAPrivateKey, subject: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "exp": now + 3600, "iat": now,
        "roles": ["supplier", "buyer"], "sirens": ["842109373", "512345679"], "azp": "bench",
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


def _verifier(jwks: dict[str, Any]) -> TokenVerifier:
    async def fetch(_url: str) -> dict[str, Any]:
        return jwks

    return TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://jwks.invalid"), fetch)


async def verify_costs(calls: int) -> tuple[float, float]:
    """CPU microseconds per verify(): (cached, uncached)."""
    key, jwks = _keys()
    verifier = _verifier(jwks)
    token = _token(key, "cached")
    await verifier.verify(token)
    start = time.process_time()
    for _ in range(calls):
        await verifier.verify(token)
    cached = (time.process_time() - start) / calls * 1e6
    fresh = [_token(key, f"user-{i}") for i in range(max(calls // 20, 200))]
    start = time.process_time()
    for t in fresh:
        await verifier.verify(t)
    uncached = (time.process_time() - start) / len(fresh) * 1e6
    return cached, uncached


class _Status(status_pb2_grpc.StatusServiceServicer):
    async def GetInvoice(  # noqa: N802 - gRPC method name
        self, request: status_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> status_pb2.GetInvoiceResponse:
        return status_pb2.GetInvoiceResponse(invoice_id=request.invoice_id)


async def gate_cost(calls: int, with_gate: bool) -> float:
    """CPU microseconds per call of one process serving and calling."""
    key, jwks = _keys()
    cert, private = throwaway_certificate()
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if with_gate:
        gate = AuthInterceptor(
            _verifier(jwks), {METHOD: frozenset()}, RateLimiter(1e9, 10**9), StreamLimiter(4),
            default_deadline_seconds=60.0,
        )  # fmt: skip
        interceptors.append(gate)
    server = grpc.aio.server(interceptors=interceptors)
    status_pb2_grpc.add_StatusServiceServicer_to_server(_Status(), server)  # type: ignore[abstract] # GetInvoice only
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(private, cert)]))
    await server.start()
    metadata = (("authorization", f"Bearer {_token(key, 'bench')}"),)
    request = status_pb2.GetInvoiceRequest(invoice_id="00000000-0000-0000-0000-000000000000")
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            for _ in range(200):  # warm-up: connection, first verification
                await stub.GetInvoice(request, metadata=metadata, timeout=10)
            start = time.process_time()
            for _ in range(calls):
                await stub.GetInvoice(request, metadata=metadata, timeout=10)
            return (time.process_time() - start) / calls * 1e6
    finally:
        await server.stop(None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cached, uncached = zip(*[await verify_costs(args.calls) for _ in range(args.rounds)], strict=True)
    print(
        f"verify(), token cached:      median {statistics.median(cached):7.1f} µs CPU  (rounds: "
        + ", ".join(f"{v:.1f}" for v in cached)
        + ")"
    )
    print(
        f"verify(), new token (RS256): median {statistics.median(uncached):7.1f} µs CPU  (rounds: "
        + ", ".join(f"{v:.1f}" for v in uncached)
        + ")"
    )
    calls = max(args.calls // 10, 1000)
    without: list[float] = []
    with_gate: list[float] = []
    for _ in range(args.rounds):  # alternating, so drift hits both alike
        without.append(await gate_cost(calls, with_gate=False))
        with_gate.append(await gate_cost(calls, with_gate=True))
    print(f"unary call over TLS, no gate:   median {statistics.median(without):7.1f} µs CPU per call")
    print(f"unary call over TLS, with gate: median {statistics.median(with_gate):7.1f} µs CPU per call")
    print(
        f"the gate (token cached):        {statistics.median(with_gate) - statistics.median(without):+7.1f} µs "
        "CPU per call"
    )


if __name__ == "__main__":
    asyncio.run(main())
