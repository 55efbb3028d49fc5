"""scripts/kafka_requests.py: the broker's request log, read and tallied
per invoice by API and by client."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import load_script

kr = load_script("kafka_requests")


def _line(client: str, api: str, local_ms: float) -> str:
    entry = {
        "isForwarded": False,
        "requestHeader": {"requestApiKey": 0, "clientId": client, "requestApiKeyName": api},
        "request": {},
        "localTimeMs": local_ms,
    }
    return f"[2026-12-04 04:00:00,000] DEBUG Completed request:{json.dumps(entry)} (kafka.request.logger)"


def test_requests_are_tallied_per_invoice_by_api_and_client() -> None:
    lines = [
        "[2026-12-04 04:00:00,000] WARN something else (kafka.server)",
        _line("invoicing-route-streams", "FETCH", 0.1),
        _line("invoicing-route-streams", "PRODUCE", 0.3),
        _line("invoicing-validate-streams", "PRODUCE", 0.5),
        _line("invoicing-validate-streams", "PRODUCE", 0.2),
        # This script's own switch back to WARN is not counted.
        _line("adminclient-1", "INCREMENTAL_ALTER_CONFIGS", 2.0),
        '[2026-12-04 04:00:00,000] DEBUG Completed request:{"cut short (kafka.request.logger)',
    ]
    report = kr.Tally.of(kr.requests(iter(lines))).report(invoices=2)
    assert report["requests_per_invoice"] == 2.0
    assert report["by_api"] == {
        "PRODUCE": {"per_invoice": 1.5, "local_ms_per_invoice": 0.5},
        "FETCH": {"per_invoice": 0.5, "local_ms_per_invoice": 0.05},
    }
    assert report["by_client"] == {
        "invoicing-validate-streams PRODUCE": 1.0,
        "invoicing-route-streams FETCH": 0.5,
        "invoicing-route-streams PRODUCE": 0.5,
    }


def test_no_invoice_divides_by_one() -> None:
    report = kr.Tally.of(kr.requests(iter([_line("c", "FETCH", 1.0)]))).report(invoices=0)
    assert report["requests_per_invoice"] == 1.0


def test_the_bootstrap_address_comes_from_the_admin_settings(tmp_path: Path) -> None:
    admin = tmp_path / "admin.properties"
    admin.write_text("security.protocol=SASL_PLAINTEXT\nbootstrap.servers = 127.0.0.1:29092\n")
    assert kr._bootstrap(admin) == "127.0.0.1:29092"
