"""Functions the worker-pool tests run in worker processes (imported there
by name, so they live in a module of their own)."""

from __future__ import annotations

import os
import time


def echo(value: object) -> tuple[int, object]:
    return os.getpid(), value


def slow(seconds: float) -> None:
    time.sleep(seconds)


def crash(code: int) -> None:
    os._exit(code)


def fail(message: str) -> None:
    raise ValueError(message)
