"""The official BR-FR-CDV rules of the release in force, for the CDAR
messages this platform sends to other platforms and receives from them.

A release's stylesheet is compiled once per process, when first needed
(the release in force changes when a new window opens, docs/reform.md),
and every check runs in a worker thread: Saxon is CPU-bound, and the
event loop serves gRPC calls and Kafka meanwhile. When other platforms
are registered, the release in force today is compiled at start, so that
missing artefacts stop the service there rather than at the first message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mode import Service

from invoicing_common.cdar import CdvRules, Finding
from invoicing_common.rules import ReleaseBook, RuleRelease

log = logging.getLogger(__name__)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@dataclass(frozen=True)
class Verdict:
    release: RuleRelease
    findings: list[Finding]

    @property
    def rule_ids(self) -> list[str]:
        return sorted({f.rule for f in self.findings})


class CdarRules(Service):
    def __init__(
        self,
        book: ReleaseBook,
        artefacts_dir: Path,
        compile_at_start: bool,
        today: Callable[[], dt.date] = _today,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._book = book
        self._dir = artefacts_dir
        self._compile_at_start = compile_at_start
        self._today = today
        # By stylesheet: a release without CDAR rules of its own names another's.
        self._compiled: dict[Path, CdvRules] = {}
        self._compiling = asyncio.Lock()

    async def on_start(self) -> None:
        if self._compile_at_start:
            release, rules = await self.in_force()
            log.info("CDAR messages are checked with BR-FR-CDV of release %s (%s)", release.version, rules.path.name)

    async def in_force(self) -> tuple[RuleRelease, CdvRules]:
        release = self._book.in_force(self._today())
        path = self._dir / release.file("cdar")
        rules = self._compiled.get(path)
        if rules is None:
            async with self._compiling:
                rules = self._compiled.get(path)
                if rules is None:
                    rules = await asyncio.to_thread(CdvRules, path)
                    self._compiled[path] = rules
        return release, rules

    async def check(self, data: bytes) -> Verdict:
        """The findings of the release in force on ``data``. Raises CdarError
        (not safe, well-formed XML), CdvError (Saxon failed) or
        CdvRulesMissing."""
        release, rules = await self.in_force()
        return Verdict(release, await asyncio.to_thread(rules.check, data))
