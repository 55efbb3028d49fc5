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


def _summary(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env={**clean, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_nothing_configured_says_nothing_is_exported() -> None:
    assert _summary({}) == "telemetry: traces not exported; metrics not exported"


def test_an_otlp_endpoint_is_named_for_both_signals() -> None:
    # Nothing listens there: set-up does not connect, only export would.
    summary = _summary({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert summary == "telemetry: traces exported over OTLP; metrics OTLP"
