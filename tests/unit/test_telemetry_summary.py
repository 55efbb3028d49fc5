"""The one-line telemetry set-up summary that lifecycle.run logs once
logging is configured (configure() runs before logging exists)."""

from __future__ import annotations

import os
import subprocess
import sys

# configure() installs process-wide providers: run it in a child process.
_SCRIPT = """
from invoicing_common import telemetry_setup
assert telemetry_setup.summary() == ""
providers = telemetry_setup.configure("invoicing-test")
print(telemetry_setup.summary())
telemetry_setup.shutdown(*providers)
"""


def _run(script: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def _summary(env: dict[str, str]) -> str:
    return _run(_SCRIPT, env)


def test_nothing_configured_says_nothing_is_exported() -> None:
    assert _summary({}) == "telemetry: traces not exported; metrics not exported"


def test_an_otlp_endpoint_is_named_for_both_signals() -> None:
    # Nothing listens there: set-up does not connect, only export would.
    summary = _summary({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert summary == "telemetry: traces exported over OTLP; metrics OTLP"


_SQL_SPANS = """
import asyncpg
from invoicing_common import telemetry_setup
providers = telemetry_setup.configure("invoicing-test")
print(hasattr(asyncpg.Connection.execute, "__wrapped__"))
telemetry_setup.shutdown(*providers)
"""


def _sql_spans(env: dict[str, str]) -> bool:
    return _run(_SQL_SPANS, env) == "True"


def test_sql_statements_have_no_span_of_their_own_by_default() -> None:
    assert _sql_spans({}) is False


def test_an_empty_disabled_list_gives_each_sql_statement_a_span() -> None:
    assert _sql_spans({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ""}) is True
    assert _sql_spans({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "asyncpg"}) is False
