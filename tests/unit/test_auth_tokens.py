"""Bearer token verification: what is accepted, what is refused and why, and what it costs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest

from invoicing_common.auth.tokens import InvalidToken, OidcConfig, TokenVerifier
from tests.unit.auth_support import (
    AUDIENCE,
    ISSUER,
    NOW,
    SIREN_A,
    SIREN_B,
    LocalHttpServer,
    claims,
    ec_key,
    jwk,
    jwks,
    make_pki,
    mint,
    public_pem,
    rsa_key,
)

JWKS_URL = "https://idp.test/jwks"
KEY = rsa_key()
OTHER_KEY = rsa_key()


class Issuer:
    """The issuer's JSON documents by URL; counts fetches."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        self.documents = documents
        self.fetches: list[str] = []
        self.failing = False

    async def fetch_json(self, url: str) -> dict[str, Any]:
        self.fetches.append(url)
        if self.failing:
            raise ConnectionError("issuer down")
        return self.documents[url]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier_for(issuer: Issuer, clock: Clock | None = None, **config: Any) -> TokenVerifier:
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": JWKS_URL, **config}
    return TokenVerifier(OidcConfig(**settings), fetch_json=issuer.fetch_json, clock=clock or Clock())


def standard_issuer() -> Issuer:
    return Issuer({JWKS_URL: jwks(jwk(KEY, "k1", alg="RS256", use="sig"))})


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value) and token not in repr(caught.value.args)
    return caught.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_good_token_gives_the_principal() -> None:
    token = mint(KEY, "k1", claims(roles=["supplier", "buyer", 7], sirens=[SIREN_A, SIREN_B]))
    principal = await verifier_for(standard_issuer()).verify(token)
    assert principal.subject == "account-1"
    assert principal.client_id == "supplier-client"
    assert principal.roles == {"supplier", "buyer"}
    assert principal.sirens == {SIREN_A, SIREN_B}
    assert principal.expires_at == NOW + 300
    assert principal.has_role("buyer") and not principal.has_role("operator")
    assert principal.acts_for(SIREN_B) and not principal.acts_for("000000000")


async def test_a_cached_token_costs_no_signature_check_and_no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    issuer = standard_issuer()
    verifier = verifier_for(issuer)
    token = mint(KEY, "k1", claims())
    first = await verifier.verify(token)
    for _ in range(5):
        assert await verifier.verify(token) is first
    assert decodes == ["decode"]
    assert issuer.fetches == [JWKS_URL]


async def test_the_cache_is_bounded_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    verifier = verifier_for(standard_issuer(), cache_size=2)
    a, b, c = (mint(KEY, "k1", claims(sub=name)) for name in "abc")
    for token in (a, b, a, c):  # c evicts b, the least recently used
        await verifier.verify(token)
    assert len(decodes) == 3
    await verifier.verify(a)
    assert len(decodes) == 3
    await verifier.verify(b)
    assert len(decodes) == 4


async def test_a_cached_token_still_expires() -> None:
    clock = Clock()
    verifier = verifier_for(standard_issuer(), clock)
    token = mint(KEY, "k1", claims())
    await verifier.verify(token)
    clock.now = NOW + 300 + 29  # within the leeway
    await verifier.verify(token)
    clock.now = NOW + 300 + 30
    assert await refused(verifier, token) == "expired"
    assert await refused(verifier, token) == "expired"  # evicted, then refused on its own merits


async def test_expiry_allows_the_leeway_and_no_more() -> None:
    verifier = verifier_for(standard_issuer())
    await verifier.verify(mint(KEY, "k1", claims(exp=int(NOW) - 29)))
    assert await refused(verifier, mint(KEY, "k1", claims(exp=int(NOW) - 30))) == "expired"
    assert await refused(verifier, mint(KEY, "k1", claims(exp=int(NOW) - 3600))) == "expired"


async def test_a_token_not_valid_yet_is_refused() -> None:
    verifier = verifier_for(standard_issuer())
    await verifier.verify(mint(KEY, "k1", claims(nbf=int(NOW) + 20)))
    assert await refused(verifier, mint(KEY, "k1", claims(nbf=int(NOW) + 120))) == "not_yet_valid"
    assert await refused(verifier, mint(KEY, "k1", claims(iat=int(NOW) + 120))) == "not_yet_valid"


async def test_issuer_and_audience_must_be_ours() -> None:
    verifier = verifier_for(standard_issuer())
    assert await refused(verifier, mint(KEY, "k1", claims(iss="https://evil.test/"))) == "issuer"
    assert await refused(verifier, mint(KEY, "k1", claims(aud="another-api"))) == "audience"
    await verifier.verify(mint(KEY, "k1", claims(aud=["another-api", AUDIENCE])))


async def test_required_claims() -> None:
    verifier = verifier_for(standard_issuer())
    assert await refused(verifier, mint(KEY, "k1", claims(exp=None))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(aud=None))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(iss=None))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(exp="tomorrow"))) == "claims"


async def test_the_subject_must_be_a_non_empty_string() -> None:
    verifier = verifier_for(standard_issuer())
    assert await refused(verifier, mint(KEY, "k1", claims(sub=12345))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(sub=""))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(sub=None))) == "claims"


async def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    token = f"{header}.{payload}."
    assert await refused(verifier_for(standard_issuer()), token) == "algorithm"


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # The classic confusion attack: the public key, published, used as an HMAC secret.
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(public_pem(KEY), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(signature)}"
    issuer = standard_issuer()
    assert await refused(verifier_for(issuer), token) == "algorithm"
    assert issuer.fetches == []  # refused before any key lookup


def test_the_config_refuses_symmetric_algorithms_and_none() -> None:
    for algorithms in (("RS256", "HS256"), ("none",), ("hs512",), ()):
        with pytest.raises(ValueError):
            OidcConfig(issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms)


async def test_tampered_tokens_are_refused() -> None:
    verifier = verifier_for(standard_issuer())
    header, payload, signature = mint(KEY, "k1", claims(roles=["buyer"])).split(".")
    forged_payload = b64(json.dumps(claims(roles=["operator"])).encode())
    assert await refused(verifier, f"{header}.{forged_payload}.{signature}") == "bad_signature"
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]
    assert await refused(verifier, f"{header}.{payload}.{flipped}") == "bad_signature"


async def test_garbage_is_malformed_and_nothing_is_missing() -> None:
    verifier = verifier_for(standard_issuer())
    assert await refused(verifier, "not-a-jwt") == "malformed"
    assert await refused(verifier, "a.b.c") == "malformed"
    assert await refused(verifier, mint(KEY, None, claims())) == "malformed"  # no kid
    assert await refused(verifier, "é.é.é") == "malformed"
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify("")
    assert caught.value.reason == "missing"


async def test_an_unknown_kid_refreshes_the_keys_once_per_interval() -> None:
    clock = Clock()
    issuer = standard_issuer()
    verifier = verifier_for(issuer, clock)
    await verifier.verify(mint(KEY, "k1", claims()))
    assert issuer.fetches == [JWKS_URL]
    assert await refused(verifier, mint(KEY, "forged-1", claims())) == "unknown_key"
    assert len(issuer.fetches) == 1  # the first fetch was moments ago
    clock.now += 30
    assert await refused(verifier, mint(KEY, "forged-2", claims())) == "unknown_key"
    assert len(issuer.fetches) == 2
    for n in range(20):
        assert await refused(verifier, mint(KEY, f"forged-{n}-again", claims())) == "unknown_key"
    assert len(issuer.fetches) == 2
    # Known keys keep working all along.
    await verifier.verify(mint(KEY, "k1", claims(sub="someone-else")))


async def test_concurrent_refreshes_share_one_fetch() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    issuer = standard_issuer()

    async def slow_fetch(url: str) -> dict[str, Any]:
        started.set()
        await release.wait()
        return await issuer.fetch_json(url)

    verifier = TokenVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=JWKS_URL), fetch_json=slow_fetch, clock=Clock()
    )
    tokens = [mint(KEY, "k1", claims(sub=f"account-{n}")) for n in range(5)]
    tokens += [mint(KEY, f"unknown-{n}", claims()) for n in range(5)]
    calls = [asyncio.ensure_future(verifier.verify(t)) for t in tokens]
    # The first call is fetching; the others were scheduled before this test
    # resumes, so they are all waiting on that fetch.
    await started.wait()
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r.subject for r in results[:5] if not isinstance(r, BaseException)] == [f"account-{n}" for n in range(5)]
    assert all(isinstance(r, InvalidToken) and r.reason == "unknown_key" for r in results[5:])
    assert issuer.fetches == [JWKS_URL]


async def test_a_key_rotation_is_picked_up() -> None:
    clock = Clock()
    issuer = standard_issuer()
    verifier = verifier_for(issuer, clock)
    await verifier.verify(mint(KEY, "k1", claims()))
    issuer.documents[JWKS_URL] = jwks(jwk(OTHER_KEY, "k2", alg="RS256"))
    clock.now += 60
    principal = await verifier.verify(mint(OTHER_KEY, "k2", claims(sub="after-rotation")))
    assert principal.subject == "after-rotation"
    # The retired key is gone: new tokens signed with it no longer pass.
    assert await refused(verifier, mint(KEY, "k1", claims(sub="late"))) == "unknown_key"


async def test_a_different_key_under_a_known_kid_is_refused() -> None:
    verifier = verifier_for(standard_issuer())
    assert await refused(verifier, mint(OTHER_KEY, "k1", claims())) == "bad_signature"


async def test_the_key_must_suit_the_algorithm() -> None:
    ec = ec_key()
    issuer = Issuer(
        {
            JWKS_URL: jwks(
                jwk(KEY, "rsa-512", alg="RS512"),
                jwk(KEY, "rsa-any"),
                jwk(ec, "ec"),
                jwk(KEY, "for-encryption", use="enc"),
                {"kty": "oct", "kid": "symmetric", "k": b64(b"secret")},
                {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            )
        }
    )
    verifier = verifier_for(issuer)
    assert await refused(verifier, mint(KEY, "rsa-512", claims())) == "algorithm"  # the JWK says RS512
    await verifier.verify(mint(KEY, "rsa-512", claims(), alg="RS512"))
    await verifier.verify(mint(KEY, "rsa-any", claims(), alg="PS256"))  # no "alg" on the JWK: any RSA algorithm
    await verifier.verify(mint(ec, "ec", claims(), alg="ES256"))
    assert await refused(verifier, mint(KEY, "ec", claims())) == "algorithm"  # RS256 header, EC key
    # PyJWT will not sign ES384 with a P-256 key: relabel an ES256 token.
    _, payload, signature = mint(ec, "ec", claims(), alg="ES256").split(".")
    relabelled = f"{b64(json.dumps({'alg': 'ES384', 'kid': 'ec'}).encode())}.{payload}.{signature}"
    assert await refused(verifier, relabelled) == "algorithm"  # P-256 key, ES384 header
    assert await refused(verifier, mint(KEY, "for-encryption", claims())) == "unknown_key"
    assert await refused(verifier, mint(KEY, "symmetric", claims())) == "unknown_key"
    assert await refused(verifier, mint(KEY, "broken", claims())) == "unknown_key"


async def test_invalid_sirens_are_dropped() -> None:
    sirens = [SIREN_A, "732829321", "73282932", "732 829 320", 732829320, "٧٣٢٨٢٩٣٢٠", SIREN_B]
    principal = await verifier_for(standard_issuer()).verify(mint(KEY, "k1", claims(sirens=sirens)))
    assert principal.sirens == {SIREN_A, SIREN_B}


async def test_missing_lists_are_empty_and_wrong_shapes_are_refused() -> None:
    verifier = verifier_for(standard_issuer())
    principal = await verifier.verify(mint(KEY, "k1", claims(roles=None, sirens=None, azp=None)))
    assert principal.roles == frozenset() and principal.sirens == frozenset() and principal.client_id == ""
    assert await refused(verifier, mint(KEY, "k1", claims(roles="supplier"))) == "claims"
    assert await refused(verifier, mint(KEY, "k1", claims(sirens=SIREN_A))) == "claims"


async def test_claim_names_may_be_paths() -> None:
    verifier = verifier_for(
        standard_issuer(), roles_claim="realm_access.roles", sirens_claim="https://invoicing.test/sirens"
    )
    token = mint(
        KEY,
        "k1",
        claims(
            roles=None,
            sirens=None,
            realm_access={"roles": ["operator"]},
            **{"https://invoicing.test/sirens": [SIREN_A]},
        ),
    )
    principal = await verifier.verify(token)
    assert principal.roles == {"operator"} and principal.sirens == {SIREN_A}


async def test_without_keys_the_verifier_says_the_jwks_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    issuer = standard_issuer()
    issuer.failing = True
    verifier = verifier_for(issuer, clock)
    token = mint(KEY, "k1", claims())
    with caplog.at_level(logging.WARNING):
        assert await refused(verifier, token) == "jwks_unavailable"
        assert await refused(verifier, token) == "jwks_unavailable"
    assert len(issuer.fetches) == 1  # failures are rate-limited too
    assert "issuer down" in caplog.text and token not in caplog.text
    issuer.failing = False
    clock.now += 30
    assert (await verifier.verify(token)).subject == "account-1"


async def test_keys_are_found_by_oidc_discovery_over_https(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    def route(method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/realms/invoicing/.well-known/openid-configuration":
            return 200, {"issuer": server.url + "/realms/invoicing", "jwks_uri": server.url + "/certs"}
        if path == "/certs":
            return 200, jwks(jwk(KEY, "k1", alg="RS256"))
        return 404, {}

    with LocalHttpServer(route, pki) as server:
        issuer = server.url + "/realms/invoicing"
        verifier = TokenVerifier(OidcConfig(issuer=issuer, audience=AUDIENCE, ca_file=pki.ca_file), clock=Clock())
        try:
            principal = await verifier.verify(mint(KEY, "k1", claims(iss=issuer)))
        finally:
            await verifier.aclose()
    assert principal.subject == "account-1"
    assert [path for _, path in server.requests] == ["/realms/invoicing/.well-known/openid-configuration", "/certs"]


async def test_an_untrusted_issuer_certificate_means_no_keys(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with LocalHttpServer(lambda *_: (200, jwks(jwk(KEY, "k1"))), pki) as server:
        # No ca_file: the system roots do not know our test CA.
        verifier = TokenVerifier(
            OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=server.url + "/certs"), clock=Clock()
        )
        try:
            assert await refused(verifier, mint(KEY, "k1", claims())) == "jwks_unavailable"
        finally:
            await verifier.aclose()
    assert server.requests == []
