"""Process lifecycle: start services in order, stop them in reverse on SIGTERM.

mode's Worker owns the event loop and the signal handlers. On SIGTERM or
SIGINT it stops every service in reverse start order: the gRPC server first
(health NOT_SERVING, stop accepting, drain in-flight calls), then the
stream app (stop consuming, finish and commit the records in hand, flush
the producer), then producers and pools.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import mode

from invoicing_common import telemetry_setup
from invoicing_common.logs import configure_logging, logging_config

log = logging.getLogger(__name__)

ReadyHook = Callable[[], Awaitable[None]]


def use_event_loop(name: str) -> None:
    """Select the event loop implementation. Call first in an entry point:
    services created afterwards bind to the loop the policy makes."""
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())


def freeze_startup_heap() -> None:
    """Leave what start-up built (modules, clients, caches: about 80 000
    objects per service) out of the cyclic collector's full passes, which
    otherwise walk it all: a full collection paused validate's event loop
    for 113 ms under load (docs/performance-history.md). Garbage goes first, so
    nothing collectable is kept; what is allocated afterwards is collected
    as before."""
    gc.collect()
    gc.freeze()


class _ModeWorker(mode.Worker):
    def __init__(self, *args: object, on_ready: ReadyHook | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._on_ready = on_ready

    async def on_started(self) -> None:
        freeze_startup_heap()
        # The base method blocks until stop for daemon workers: signal first.
        if self._on_ready is not None:
            await self._on_ready()
        await super().on_started()


def run(
    service_name: str,
    log_level: str,
    services: Sequence[mode.ServiceT],
    *,
    on_ready: ReadyHook | None = None,
) -> None:
    """Block until the process is told to stop. ``services`` start in
    order and stop in reverse."""
    configure_logging(service_name, log_level)
    if telemetry_setup.summary():
        log.info(telemetry_setup.summary())
    common: dict[str, Any] = {
        "loglevel": log_level,
        "logging_config": logging_config(service_name, log_level),
        "redirect_stdouts": False,
        "on_ready": on_ready,
        "override_logging": True,
    }
    _ModeWorker(*services, quiet=True, **common).execute_from_commandline()
