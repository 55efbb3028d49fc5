"""Stand-ins for faust's stream events, for unit tests of pure record logic."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class FakeEvent:
    message: FakeMessage
