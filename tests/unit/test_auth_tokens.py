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
# An expiry past every clock the tests move forward.
LATER = int(NOW) + 3600


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


def test_the_config_refuses_negative_durations() -> None:
    assert OidcConfig(issuer=ISSUER, audience=AUDIENCE).jwks_max_age_seconds == 300.0
    for setting in ("jwks_max_age_seconds", "jwks_min_refresh_seconds", "leeway_seconds"):
        negative: dict[str, Any] = {setting: -1.0}
        with pytest.raises(ValueError):
            OidcConfig(issuer=ISSUER, audience=AUDIENCE, **negative)


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
    assert await refused(verifier, mint(KEY, "", claims())) == "malformed"  # an empty kid
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


async def test_a_removed_key_is_refused_once_the_keys_are_old() -> None:
    clock = Clock()
    issuer = Issuer({JWKS_URL: jwks(jwk(KEY, "k1", alg="RS256"), jwk(OTHER_KEY, "k2", alg="RS256"))})
    verifier = verifier_for(issuer, clock)
    cached = mint(OTHER_KEY, "k2", claims(sub="cached", exp=LATER))
    await verifier.verify(cached)
    # The issuer withdraws k2 (compromised, say): it lists k1 only.
    issuer.documents[JWKS_URL] = jwks(jwk(KEY, "k1", alg="RS256"))
    clock.now += 299
    assert (await verifier.verify(mint(OTHER_KEY, "k2", claims(sub="before")))).subject == "before"
    assert len(issuer.fetches) == 1  # the keys are not old yet
    clock.now += 1
    assert await refused(verifier, mint(OTHER_KEY, "k2", claims(sub="after"))) == "unknown_key"
    assert len(issuer.fetches) == 2
    await verifier.verify(mint(KEY, "k1", claims(sub="k1-still-good")))
    # Verdicts already cached stand until the token expires (documented in tokens.py).
    assert (await verifier.verify(cached)).subject == "cached"
    assert len(issuer.fetches) == 2


async def test_old_keys_are_kept_while_the_issuer_is_down(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    issuer = standard_issuer()
    verifier = verifier_for(issuer, clock)
    await verifier.verify(mint(KEY, "k1", claims()))
    issuer.failing = True
    clock.now += 300
    token = mint(KEY, "k1", claims(sub="during-the-outage", exp=LATER))
    with caplog.at_level(logging.WARNING):
        assert (await verifier.verify(token)).subject == "during-the-outage"
    assert len(issuer.fetches) == 2
    assert "issuer down" in caplog.text and "keeping the 1 keys we have" in caplog.text
    assert token not in caplog.text
    clock.now += 29  # a failed fetch is not repeated sooner than a good one
    await verifier.verify(mint(KEY, "k1", claims(sub="still-down", exp=LATER)))
    assert len(issuer.fetches) == 2
    clock.now += 1
    await verifier.verify(mint(KEY, "k1", claims(sub="tried-again", exp=LATER)))
    assert len(issuer.fetches) == 3
    issuer.failing = False
    issuer.documents[JWKS_URL] = jwks(jwk(OTHER_KEY, "k2", alg="RS256"))
    clock.now += 30
    assert await refused(verifier, mint(KEY, "k1", claims(sub="back-up", exp=LATER))) == "unknown_key"
    assert len(issuer.fetches) == 4


async def test_concurrent_callers_share_one_fetch_of_old_keys() -> None:
    clock = Clock()
    issuer = standard_issuer()
    gate = asyncio.Event()

    async def gated_fetch(url: str) -> dict[str, Any]:
        await gate.wait()
        return await issuer.fetch_json(url)

    verifier = TokenVerifier(
        OidcConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=JWKS_URL), fetch_json=gated_fetch, clock=clock
    )
    gate.set()
    await verifier.verify(mint(KEY, "k1", claims()))
    gate.clear()
    clock.now += 300
    calls = [asyncio.ensure_future(verifier.verify(mint(KEY, "k1", claims(sub=f"account-{n}")))) for n in range(5)]
    # Let every call reach the refresh (the first one fetching, the others queued behind it).
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*calls)
    assert [r.subject for r in results] == [f"account-{n}" for n in range(5)]
    assert issuer.fetches == [JWKS_URL, JWKS_URL]


async def test_a_clock_stepping_back_does_not_freeze_the_keys() -> None:
    clock = Clock()
    issuer = standard_issuer()
    verifier = verifier_for(issuer, clock)
    await verifier.verify(mint(KEY, "k1", claims()))
    clock.now -= 3600
    await verifier.verify(mint(KEY, "k1", claims(sub="after-the-step", iat=None)))
    assert len(issuer.fetches) == 2
    await verifier.verify(mint(KEY, "k1", claims(sub="later", iat=None)))
    assert len(issuer.fetches) == 2


async def test_a_token_without_kid_needs_a_single_signing_key() -> None:
    ec = ec_key()
    single = Issuer({JWKS_URL: jwks(jwk(KEY, None), jwk(OTHER_KEY, "for-encryption", use="enc"))})
    verifier = verifier_for(single)
    assert (await verifier.verify(mint(KEY, None, claims()))).subject == "account-1"
    await verifier.verify(mint(KEY, None, claims(), alg="PS256"))
    assert await refused(verifier, mint(OTHER_KEY, None, claims())) == "bad_signature"
    assert await refused(verifier, mint(ec, None, claims(), alg="ES256")) == "malformed"  # the key is RSA
    assert await refused(verifier, mint(KEY, "k1", claims())) == "unknown_key"  # a kid names no key here
    # The one key may have a kid of its own.
    await verifier_for(standard_issuer()).verify(mint(KEY, None, claims()))
    # With two keys, which one signed is a guess we do not make.
    several = Issuer({JWKS_URL: jwks(jwk(KEY, "k1", alg="RS256"), jwk(OTHER_KEY, "k2", alg="RS256"))})
    verifier = verifier_for(several)
    assert await refused(verifier, mint(KEY, None, claims())) == "malformed"
    assert await refused(verifier, mint(OTHER_KEY, None, claims())) == "malformed"
    await verifier.verify(mint(KEY, "k1", claims()))


async def test_a_token_without_kid_waits_for_the_keys_like_any_other() -> None:
    issuer = Issuer({JWKS_URL: jwks(jwk(KEY, None))})
    issuer.failing = True
    verifier = verifier_for(issuer)
    assert await refused(verifier, mint(KEY, None, claims())) == "jwks_unavailable"


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


DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"


def discovering_verifier(document: dict[str, Any]) -> tuple[Issuer, TokenVerifier]:
    issuer = Issuer({DISCOVERY_URL: document, "https://idp.test/certs": jwks(jwk(KEY, "k1", alg="RS256"))})
    verifier = TokenVerifier(OidcConfig(issuer=ISSUER, audience=AUDIENCE), fetch_json=issuer.fetch_json, clock=Clock())
    return issuer, verifier


@pytest.mark.parametrize(
    "named", ["https://evil.test/realms/invoicing", f"{ISSUER}/", ISSUER.upper(), None, [ISSUER]], ids=repr
)
async def test_discovery_must_name_the_configured_issuer(named: Any, caplog: pytest.LogCaptureFixture) -> None:
    document = {"jwks_uri": "https://idp.test/certs"} | ({"issuer": named} if named is not None else {})
    issuer, verifier = discovering_verifier(document)
    token = mint(KEY, "k1", claims())
    with caplog.at_level(logging.WARNING):
        assert await refused(verifier, token) == "jwks_unavailable"
    assert issuer.fetches == [DISCOVERY_URL]  # its jwks_uri was not followed
    assert repr(named) in caplog.text and repr(ISSUER) in caplog.text
    assert token not in caplog.text


async def test_discovery_naming_the_configured_issuer_is_followed() -> None:
    issuer, verifier = discovering_verifier({"issuer": ISSUER, "jwks_uri": "https://idp.test/certs"})
    assert (await verifier.verify(mint(KEY, "k1", claims()))).subject == "account-1"
    assert issuer.fetches == [DISCOVERY_URL, "https://idp.test/certs"]


@pytest.mark.parametrize(
    ("jwks_uri", "followed"),
    [
        ("https://idp.test/certs", True),
        ("HTTPS://idp.test/certs", True),
        ("http://127.0.0.1:8080/certs", True),
        ("http://localhost/certs", True),
        ("http://idp.test/certs", False),
        ("ftp://idp.test/certs", False),
        ("file:///etc/certs.json", False),
        ("https:///certs", False),
        ("/certs", False),
        ("http://localhost.evil.test/certs", False),
        ("http://127.0.0.1@evil.test/certs", False),
        ("http://[::1/certs", False),
    ],
)
async def test_discovery_needs_an_https_jwks_uri(
    jwks_uri: str, followed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    issuer, verifier = discovering_verifier({"issuer": ISSUER, "jwks_uri": jwks_uri})
    issuer.documents[jwks_uri] = jwks(jwk(KEY, "k1", alg="RS256"))
    token = mint(KEY, "k1", claims())
    with caplog.at_level(logging.WARNING):
        if followed:
            await verifier.verify(token)
        else:
            assert await refused(verifier, token) == "jwks_unavailable"
            assert "is not https" in caplog.text
    assert issuer.fetches == [DISCOVERY_URL, jwks_uri] if followed else [DISCOVERY_URL]


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
