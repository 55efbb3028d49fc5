"""The client side: an OAuth2 client-credentials token source and TLS channels
that send it as a bearer token on every call.

Used by the CLI, the tests and the stack launcher. The client secret never
reaches a message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from invoicing_common.auth.tls import channel_credentials

log = logging.getLogger(__name__)

# Lifetime assumed when the token endpoint does not say (expires_in is only RECOMMENDED).
_DEFAULT_LIFETIME_SECONDS = 60.0


class ConfigError(Exception):
    pass


class TokenError(Exception):
    """No token. ``transient``: the endpoint could not be reached or was
    unwell (a retry may succeed); otherwise it refused, or answered
    something unusable, and a retry would get the same."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ClientConfig:
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    # CA bundle for the token endpoint's and the services' certificates (None: the system's).
    ca_file: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ClientConfig:
        names = ("INVOICING_TOKEN_URL", "INVOICING_CLIENT_ID", "INVOICING_CLIENT_SECRET")
        missing = [name for name in names if not environ.get(name)]
        if missing:
            raise ConfigError(f"set {', '.join(missing)} to authenticate to the invoicing services")
        return cls(
            token_url=environ["INVOICING_TOKEN_URL"],
            client_id=environ["INVOICING_CLIENT_ID"],
            client_secret=environ["INVOICING_CLIENT_SECRET"],
            ca_file=environ.get("INVOICING_CA_FILE") or None,
        )


class TokenSource:
    """Access tokens from the client-credentials grant, fetched again shortly
    before they expire. Thread-safe: gRPC runs call-credential plugins on its
    own threads, and callers waiting for a refresh share the one fetch."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        ca_file: str | None = None,
        *,
        refresh_margin_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = ClientConfig(token_url, client_id, client_secret, ca_file)
        self._margin = refresh_margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0

    @classmethod
    def from_config(
        cls,
        config: ClientConfig,
        *,
        refresh_margin_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenSource:
        return cls(
            config.token_url,
            config.client_id,
            config.client_secret,
            config.ca_file,
            refresh_margin_seconds=refresh_margin_seconds,
            clock=clock,
        )

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                token, lifetime = self._fetch()
            except TokenError as exc:
                if self._token is not None and now < self._expires_at:
                    # The endpoint is down but the token we hold still works.
                    log.warning("cannot refresh the access token, using the current one: %s", exc)
                    return self._token
                raise
            self._token = token
            self._expires_at = now + lifetime
            # Renew with the margin left, but never before half the lifetime:
            # short-lived tokens would otherwise be fetched on every call.
            self._refresh_at = self._expires_at - min(self._margin, lifetime / 2)
            return token

    async def atoken(self) -> str:
        return await asyncio.to_thread(self.token)

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _fetch(self) -> tuple[str, float]:
        url = self._config.token_url
        if self._http is None:
            self._http = httpx.Client(verify=_verify(self._config.ca_file), timeout=10.0)
        try:
            response = self._http.post(
                url,
                data={"grant_type": "client_credentials"},
                auth=(self._config.client_id, self._config.client_secret),
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TokenError(f"cannot reach the token endpoint {url}: {exc}", transient=True) from None
        body = _json_object(response)
        if response.status_code in (400, 401) and isinstance(body.get("error"), str):
            error = body["error"]
            description = body.get("error_description")
            detail = f"{error} ({description})" if isinstance(description, str) and description else error
            if response.status_code == 401 or error in ("invalid_client", "unauthorized_client"):
                raise TokenError(f"the token endpoint refused the client credentials: {detail}")
            raise TokenError(f"the token endpoint {url} refused the request: {detail}")
        if response.status_code != 200:
            # 429 and 5xx: the endpoint is overloaded or down, not refusing us.
            unwell = response.status_code == 429 or response.status_code >= 500
            raise TokenError(f"the token endpoint {url} answered HTTP {response.status_code}", transient=unwell)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError(f"the token endpoint {url} answered without an access_token")
        token_type = body.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenError(f"the token endpoint {url} issued a {token_type!r} token, not a bearer token")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            return token, float(expires_in)
        return token, _DEFAULT_LIFETIME_SECONDS


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, read without checking its signature: for a client
    to know what its own token says (the services verify every token).
    {} when it is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TokenError(f"INVOICING_CA_FILE: cannot use {ca_file}: {exc}") from None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class BearerAuth(grpc.AuthMetadataPlugin):
    """Adds "authorization: Bearer <token>" to every call of a channel."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            token = self._tokens.token()
        except TokenError as exc:
            # The call fails with UNAVAILABLE and this message.
            callback((), exc)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def secure_channel(
    address: str,
    tokens: TokenSource | None,
    ca_file: str | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(address, _credentials(tokens, ca_file), options=list(options))


def secure_channel_sync(
    address: str,
    tokens: TokenSource | None,
    ca_file: str | None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    return grpc.secure_channel(address, _credentials(tokens, ca_file), options=list(options))


def _credentials(tokens: TokenSource | None, ca_file: str | None) -> grpc.ChannelCredentials:
    credentials = channel_credentials(ca_file, setting="INVOICING_CA_FILE")
    if tokens is None:
        return credentials
    return grpc.composite_channel_credentials(credentials, grpc.metadata_call_credentials(BearerAuth(tokens)))
