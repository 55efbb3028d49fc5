"""Bearer token verification: OIDC access tokens (JWT) signed with the issuer's public keys.

A verified token is cached until it expires, so a repeat caller costs a
SHA-256 and a dict lookup; only a token seen for the first time costs a
signature check. The issuer's keys (JWKS) are fetched again when they are
older than ``jwks_max_age_seconds``, so a key the issuer withdrew stops being
trusted, and when a token names a key we do not know; either way at most
every ``jwks_min_refresh_seconds``: a flood of forged tokens with random key
ids must not turn the service into a JWKS request amplifier. If the issuer
cannot be reached we keep the keys we have: an issuer outage must not lock
every caller out.

Tokens are secrets: they never reach a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt
from stdnum.fr import siren as siren_number

from invoicing_common.auth.principal import Principal

log = logging.getLogger(__name__)

FetchJson = Callable[[str], Awaitable[dict[str, Any]]]

Reason = Literal[
    "missing",
    "malformed",
    "algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "claims",
    "jwks_unavailable",
]

# The key type (and curve) each asymmetric algorithm verifies with. Checked
# before PyJWT sees the key, so a JWK of one type is never used for another
# type's algorithm.
_KEY_TYPES: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "ES256K": ("EC", "secp256k1"),
    "EdDSA": ("OKP", None),
}
_ASYMMETRIC_KEY_TYPES = frozenset(kty for kty, _ in _KEY_TYPES.values())

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

# PyJWT's errors, most specific first (InvalidSignatureError is a DecodeError).
# Time claims are checked here, against the injected clock, not by PyJWT.
_REASONS: tuple[tuple[type[jwt.PyJWTError], Reason], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
    (jwt.InvalidKeyError, "algorithm"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.MissingRequiredClaimError, "claims"),
    (jwt.exceptions.InvalidSubjectError, "claims"),
    (jwt.exceptions.InvalidJTIError, "claims"),
)


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    # None: found by OIDC discovery, the issuer's /.well-known/openid-configuration.
    jwks_url: str | None = None
    # CA bundle to trust the issuer's HTTPS certificate (None: the system's).
    ca_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # Clock skew tolerated between the issuer and us.
    leeway_seconds: float = 30.0
    # Claim names; a dotted path such as "realm_access.roles" reaches into objects.
    subject_claim: str = "sub"
    roles_claim: str = "roles"
    sirens_claim: str = "sirens"
    cache_size: int = 10_000
    jwks_min_refresh_seconds: float = 30.0
    # Keys older than this are fetched again before the next signature check,
    # so a key the issuer removed is dropped within about this long.
    jwks_max_age_seconds: float = 300.0
    http_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("OIDC issuer and audience must not be empty")
        if not self.algorithms:
            raise ValueError("OIDC algorithms must not be empty")
        for alg in self.algorithms:
            # A symmetric algorithm would let anyone holding the *public* key
            # (it is published) sign tokens: HS256 "signed" with the PEM.
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(f"OIDC algorithm {alg!r} is not allowed: only asymmetric signatures are accepted")
            if alg not in _KEY_TYPES:
                raise ValueError(f"OIDC algorithm {alg!r} is not supported (known: {', '.join(_KEY_TYPES)})")
        if min(self.cache_size, self.leeway_seconds, self.jwks_min_refresh_seconds, self.jwks_max_age_seconds) < 0:
            raise ValueError(
                "OIDC cache_size, leeway_seconds, jwks_min_refresh_seconds and jwks_max_age_seconds"
                " must not be negative"
            )
        if self.http_timeout_seconds <= 0:
            raise ValueError("OIDC http_timeout_seconds must be positive")


class InvalidToken(Exception):
    """A token we refuse. ``reason`` is for metrics and logs; callers are told
    no more than "invalid or expired token"."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"invalid token: {reason}")
        self.reason: Reason = reason


@dataclass(frozen=True)
class _SigningKey:
    jwk: jwt.PyJWK
    # The JWK's own "alg", when it names one.
    alg: str | None
    kty: str
    crv: str | None

    def fits(self, alg: str) -> bool:
        """May verify this algorithm: the key's own alg, when it has one, is
        this one, and its type (and curve) are the algorithm's."""
        kty, crv = _KEY_TYPES[alg]
        return (self.alg is None or self.alg == alg) and self.kty == kty and (crv is None or self.crv == crv)


@dataclass(frozen=True)
class _KeySet:
    # Every usable signing key of the JWKS, with or without a kid.
    signing: tuple[_SigningKey, ...] = ()
    by_kid: Mapping[str, _SigningKey] = field(default_factory=dict)

    @property
    def only(self) -> _SigningKey | None:
        """The one signing key, when the issuer has only one: the key a token
        without a kid is checked against."""
        return self.signing[0] if len(self.signing) == 1 else None


class TokenVerifier:
    def __init__(
        self,
        config: OidcConfig,
        fetch_json: FetchJson | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._fetch_json = fetch_json or self._http_get_json
        self._clock = clock
        self._http: httpx.AsyncClient | None = None
        # sha256(token) -> Principal, least recently used first.
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._keys = _KeySet()
        self._jwks_url = config.jwks_url
        # When the keys we hold were fetched; None: never.
        self._keys_fetched_at: float | None = None
        # When the last fetch, successful or not, ended.
        self._last_refresh: float | None = None
        self._refresh_failed = False
        self._refresh_lock = asyncio.Lock()

    @property
    def leeway_seconds(self) -> float:
        """The clock skew tolerated on a token's times, also by those who hold
        a verified token's Principal past its verification (open streams)."""
        return self._config.leeway_seconds

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def verify(self, token: str) -> Principal:
        if not token:
            raise InvalidToken("missing")
        if not token.isascii():
            raise InvalidToken("malformed")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        # A cached token keeps working until it expires, even when its key
        # has been withdrawn since: the cache holds verdicts, not keys, and
        # re-checking would cost the signature check it exists to save.
        # Access tokens are short-lived, which bounds that window.
        if cached is not None:
            if self._clock() < cached.expires_at + self._config.leeway_seconds:
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]
            raise InvalidToken("expired")
        principal = await self._verify_signed(token)
        if self._config.cache_size > 0:
            self._cache[digest] = principal
            while len(self._cache) > self._config.cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _verify_signed(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise InvalidToken("algorithm")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise InvalidToken("malformed")
        key = await self._key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                # The bare key, not the PyJWK: a PyJWK is bound to one algorithm
                # (RS256 for an RSA JWK without "alg"), which would refuse PS256.
                key.jwk.key,
                algorithms=[alg],
                audience=self._config.audience,
                issuer=self._config.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    # Checked by _check_times with our clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason_of(exc)) from None
        self._check_times(claims)
        return self._principal(claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        leeway = self._config.leeway_seconds
        exp = _number(claims.get("exp"))
        if exp is None:
            raise InvalidToken("claims")
        if exp <= now - leeway:
            raise InvalidToken("expired")
        for name in ("nbf", "iat"):
            if name in claims:
                moment = _number(claims[name])
                if moment is None:
                    raise InvalidToken("claims")
                if moment > now + leeway:
                    raise InvalidToken("not_yet_valid")

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = _claim(claims, self._config.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("claims")
        client_id = next((c for c in (claims.get("azp"), claims.get("client_id")) if isinstance(c, str) and c), "")
        sirens = _strings(_claim(claims, self._config.sirens_claim))
        exp = _number(claims.get("exp"))
        assert exp is not None  # _check_times ran first
        return Principal(
            subject=subject,
            client_id=client_id,
            roles=_strings(_claim(claims, self._config.roles_claim)),
            # A malformed SIREN grants nothing, but does not cost the caller its other rights.
            sirens=frozenset(s for s in sirens if _is_siren(s)),
            expires_at=exp,
        )

    async def _key(self, kid: str | None, alg: str) -> _SigningKey:
        if self._keys_stale():
            await self._refresh_keys(lambda: not self._keys_stale())
        if kid is None:
            key = self._keys.only
            # With several keys, trying each would be a guess that multiplies
            # the cost of every forged token.
            if key is None or not key.fits(alg):
                raise InvalidToken(self._missing_key_reason("malformed"))
            return key
        key = self._keys.by_kid.get(kid)
        if key is None:
            await self._refresh_keys(lambda: kid in self._keys.by_kid)
            key = self._keys.by_kid.get(kid)
        if key is None:
            raise InvalidToken(self._missing_key_reason("unknown_key"))
        if not key.fits(alg):
            raise InvalidToken("algorithm")
        return key

    def _missing_key_reason(self, reason: Reason) -> Reason:
        return "jwks_unavailable" if self._refresh_failed and not self._keys.signing else reason

    def _keys_stale(self) -> bool:
        fetched = self._keys_fetched_at
        return fetched is None or not self._within(fetched, self._config.jwks_max_age_seconds)

    def _within(self, moment: float, seconds: float) -> bool:
        # A clock stepped back counts as "long ago": it must not freeze the keys.
        return 0 <= self._clock() - moment < seconds

    async def _refresh_keys(self, done: Callable[[], bool]) -> None:
        """Fetches the keys again unless ``done()`` already holds or the last
        fetch was too recent to repeat."""
        # Callers waiting here share the fetch the first one makes: once it is
        # done they find what they wanted, or find the refresh too recent to repeat.
        async with self._refresh_lock:
            if done():
                return
            last = self._last_refresh
            if last is not None and self._within(last, self._config.jwks_min_refresh_seconds):
                return
            try:
                keys = _parse_jwks(await self._fetch_jwks())
            except Exception as exc:  # noqa: BLE001 - any fault of the issuer; keep the keys we have
                self._refresh_failed = True
                log.warning(
                    "cannot fetch the token issuer's keys (%s): %s; keeping the %d keys we have",
                    self._jwks_url or "discovery",
                    exc,
                    len(self._keys.signing),
                )
            else:
                # What the issuer lists now, and nothing else: removed keys are dropped.
                self._keys = keys
                self._keys_fetched_at = self._clock()
                self._refresh_failed = False
            # Set only once the fetch is over: a caller cancelled mid-fetch
            # leaves the next one free to try.
            self._last_refresh = self._clock()

    async def _fetch_jwks(self) -> dict[str, Any]:
        if self._jwks_url is None:
            issuer = self._config.issuer
            discovery = await self._fetch_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            # OpenID Connect Discovery 1.0, section 4.3: the document must name
            # exactly the issuer we asked about. Another issuer's document (a
            # misrouted proxy, a shared host) would make its keys vouch for
            # tokens carrying our issuer's name.
            named = discovery.get("issuer")
            if named != issuer:
                raise ValueError(
                    f"the OIDC discovery document names the issuer {named!r}, not the configured {issuer!r}"
                )
            jwks_uri = discovery.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise ValueError("the OIDC discovery document has no jwks_uri")
            if not _is_safe_jwks_uri(jwks_uri):
                raise ValueError(f"the OIDC discovery document's jwks_uri {jwks_uri!r} is not https")
            self._jwks_url = jwks_uri
        return await self._fetch_json(self._jwks_url)

    async def _http_get_json(self, url: str) -> dict[str, Any]:
        if self._http is None:
            ca_file = self._config.ca_file
            self._http = httpx.AsyncClient(
                verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
                timeout=self._config.http_timeout_seconds,
            )
        response = await self._http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document


def _is_safe_jwks_uri(uri: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(host)
    # Plain HTTP only to this machine (tests, a local issuer): anywhere else
    # whoever is on the path could hand us their own keys.
    return parts.scheme == "http" and host in ("127.0.0.1", "localhost")


def _parse_jwks(document: Mapping[str, Any]) -> _KeySet:
    """The signing keys of a JWKS. Keys we cannot use (encryption keys,
    symmetric keys, unknown types, broken values) are skipped, not fatal: one
    odd key must not cost us the others. A key without a kid is kept: a
    single-key issuer need not name it."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    signing: list[_SigningKey] = []
    by_kid: dict[str, _SigningKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or kid in by_kid):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in _ASYMMETRIC_KEY_TYPES:
            continue
        alg = entry.get("alg")
        if alg is not None and alg not in _KEY_TYPES:
            continue
        crv = entry.get("crv")
        try:
            key = _SigningKey(jwt.PyJWK(entry), alg, entry["kty"], crv if isinstance(crv, str) else None)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        signing.append(key)
        if kid is not None:
            by_kid[kid] = key
    return _KeySet(tuple(signing), by_kid)


def _reason_of(exc: jwt.PyJWTError) -> Reason:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "malformed"


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects. A name that is
    itself a claim (URL-style names contain dots) wins over the path."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _strings(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise InvalidToken("claims")
    return frozenset(item for item in value if isinstance(item, str))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # JSON integers have no bound
        return None
    return number if math.isfinite(number) else None


def _is_siren(value: str) -> bool:
    # stdnum would accept "732 829 320"; the claim must carry the canonical form.
    return len(value) == 9 and value.isascii() and value.isdigit() and bool(siren_number.is_valid(value))
