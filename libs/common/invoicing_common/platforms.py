"""The other approved platforms this one exchanges with (the four-corner
model of the French reform): the directory names a buyer's platform by id;
this registry maps the id to where the platform is and how to authenticate
to it, and says which of the accounts calling us is that platform.

Read from the TOML file PLATFORMS_FILE (no file: no peer, and an invoice
routed to another platform waits, held, for one). docs/reform.md shows the
format; the local stack writes one per platform (`make up PLATFORMS=2`).

    [platforms.peer]
    name = "Plateforme pair"
    ingest = "127.0.0.1:17011"      # its IngestService
    exchange = "127.0.0.1:17014"    # its ExchangeService (CDAR messages)
    ca_file = "/path/ca.pem"        # its TLS CA (empty: the system's)
    token_url = "https://.../token" # the OAuth2 token endpoint we use to call it
    client_id = "platform-local"    # our account there
    client_secret_file = "/path"    # its secret
    caller_client_id = "platform-peer"  # the account it calls us with
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from invoicing_common.auth.client import TokenSource

ENV_PLATFORMS_FILE: Final = "PLATFORMS_FILE"
_FIELDS: Final = frozenset(
    {"name", "ingest", "exchange", "ca_file", "token_url", "client_id", "client_secret_file", "caller_client_id"}
)
_REQUIRED: Final = ("ingest", "exchange", "token_url", "client_id", "client_secret_file", "caller_client_id")


class PlatformsConfigError(ValueError):
    """The registry is wrong; the message names the platform and field."""


@dataclass(frozen=True)
class Peer:
    id: str
    ingest: str
    exchange: str
    token_url: str
    client_id: str
    client_secret_file: str = field(repr=False)
    caller_client_id: str
    ca_file: str | None = None
    name: str = ""

    def client_secret(self) -> str:
        """Read when needed, so a rotated secret file is picked up."""
        try:
            return Path(self.client_secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PlatformsConfigError(f"platform {self.id}: cannot read client_secret_file: {exc.strerror}") from exc


@dataclass(frozen=True)
class Registry:
    peers: Mapping[str, Peer]

    def get(self, platform_id: str) -> Peer | None:
        return self.peers.get(platform_id)

    def calling(self, client_id: str) -> Peer | None:
        """The peer whose account this is, if any."""
        for peer in self.peers.values():
            if peer.caller_client_id == client_id:
                return peer
        return None


def parse_registry(text: str, source: str = "<text>") -> Registry:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlatformsConfigError(f"{source}: not valid TOML: {exc}") from exc
    table = data.get("platforms", {})
    if not isinstance(table, dict):
        raise PlatformsConfigError(f"{source}: [platforms] must be a table")
    peers: dict[str, Peer] = {}
    callers: dict[str, str] = {}
    for platform_id, entry in table.items():
        where = f"{source}: platform {platform_id}"
        if not isinstance(entry, dict):
            raise PlatformsConfigError(f"{where}: must be a table")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise PlatformsConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in _FIELDS:
            value = entry.get(name, "")
            if not isinstance(value, str):
                raise PlatformsConfigError(f"{where}: '{name}' must be a string")
            values[name] = value.strip()
        missing = [name for name in _REQUIRED if not values[name]]
        if missing:
            raise PlatformsConfigError(f"{where}: missing {', '.join(missing)}")
        caller = values["caller_client_id"]
        if caller in callers:
            raise PlatformsConfigError(f"{where}: caller_client_id {caller!r} is platform {callers[caller]}'s too")
        callers[caller] = platform_id
        peers[platform_id] = Peer(
            id=platform_id,
            ingest=values["ingest"],
            exchange=values["exchange"],
            token_url=values["token_url"],
            client_id=values["client_id"],
            client_secret_file=values["client_secret_file"],
            caller_client_id=caller,
            ca_file=values["ca_file"] or None,
            name=values["name"],
        )
    return Registry(peers)


def load_registry(path: Path | None = None) -> Registry:
    """The registry of PLATFORMS_FILE (or ``path``); empty without one."""
    configured = path or (Path(os.environ[ENV_PLATFORMS_FILE]) if os.environ.get(ENV_PLATFORMS_FILE) else None)
    if configured is None:
        return Registry({})
    try:
        text = configured.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlatformsConfigError(f"{configured}: cannot read the platforms registry: {exc.strerror}") from exc
    return parse_registry(text, str(configured))


class PeerTokens:
    """This platform's access tokens at each peer (the OAuth2
    client-credentials grant of its account there), one token source per
    peer, made at first use. The secret file is read at each call: a
    rotated secret gets a new token source, and the old one is closed."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[str, TokenSource]] = {}

    def source(self, peer: Peer) -> TokenSource:
        secret = peer.client_secret()
        known = self._sources.get(peer.id)
        if known is not None and known[0] == secret:
            return known[1]
        if known is not None:
            known[1].close()
        tokens = TokenSource(peer.token_url, peer.client_id, secret, peer.ca_file)
        self._sources[peer.id] = (secret, tokens)
        return tokens

    def close(self) -> None:
        sources, self._sources = list(self._sources.values()), {}
        for _, tokens in sources:
            tokens.close()
