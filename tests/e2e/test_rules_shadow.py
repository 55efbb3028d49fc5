"""A French rules release in shadow, on live traffic: the stack's validate
service runs with VALIDATE_RULES_SHADOW=0.1 beside 1.3.0 (in force for
these invoices' issue dates). 0.1 requires the three payment mentions of
BR-FR-05 that 1.3.0 only warns about. Every invoice keeps its 1.3.0
verdict, and `invoicectl rules diff` lists exactly the invoices 0.1 would
have rejected. The service is restarted without the shadow afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import Stack, collect_until_final, run_stack, submit, unique_invoice

pytestmark = pytest.mark.stack

INVOICECTL = str(Path(sys.executable).parent / "invoicectl")
_FR_CTC = "urn:cen.eu:en16931:2017#compliant#urn.cpro.gouv.fr:1p0:einvoicingF2"
_PLAIN_NOTE = (
    "<cbc:Note>Pénalités de retard : trois fois le taux d'intérêt légal."
    " Indemnité forfaitaire pour frais de recouvrement : 40 EUR.</cbc:Note>"
)
_CODED_NOTES = (
    "<cbc:Note>#PMT#Indemnité forfaitaire pour frais de recouvrement : 40 EUR.</cbc:Note>"
    "<cbc:Note>#PMD#Pénalités de retard : trois fois le taux d'intérêt légal.</cbc:Note>"
    "<cbc:Note>#AAB#Pas d'escompte pour paiement anticipé.</cbc:Note>"
)


def _french_invoice(coded_notes: bool) -> bytes:
    """A fresh UBL invoice under the French CTC profile, issued in 2026."""
    doc, _ = unique_invoice("ubl-invoice-valid.xml")
    text = doc.decode("utf-8")
    for old, new in (
        ("<cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>",
         f"<cbc:CustomizationID>{_FR_CTC}</cbc:CustomizationID>"),
        ("<cbc:IssueDate>2025-03-14</cbc:IssueDate>", "<cbc:IssueDate>2026-03-16</cbc:IssueDate>"),
        *([(_PLAIN_NOTE, _CODED_NOTES)] if coded_notes else []),
    ):  # fmt: skip
        assert old in text, old
        text = text.replace(old, new, 1)
    return text.encode("utf-8")


async def _stack(*args: str, env: dict[str, str] | None = None) -> None:
    await asyncio.get_running_loop().run_in_executor(None, lambda: run_stack(*args, env=env))


@pytest.fixture
async def shadowed_validate(stack: Stack) -> AsyncIterator[None]:
    await _stack("stop", "validate")
    try:
        await _stack("up", env={**os.environ, "VALIDATE_RULES_SHADOW": "0.1"})
        yield
    finally:
        await _stack("stop", "validate")
        env = {k: v for k, v in os.environ.items() if k != "VALIDATE_RULES_SHADOW"}
        await _stack("up", env=env)


async def _rules_diff(since: datetime) -> list[dict[str, Any]]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [INVOICECTL, "rules", "diff", "--since", since.isoformat(), "--json"],
            env=os.environ, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = await asyncio.get_running_loop().run_in_executor(None, run)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


async def test_a_shadow_release_lists_exactly_the_invoices_it_would_reject(
    stack: Stack, status_follower: Any, shadowed_validate: None
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    plain = [_french_invoice(coded_notes=False) for _ in range(4)]
    coded = [_french_invoice(coded_notes=True) for _ in range(4)]
    replies = await asyncio.gather(*(submit(stack.ingest, d, f"shadow-{i}.xml") for i, d in enumerate(plain + coded)))
    ids = [r.invoice_id for r in replies]
    would_reject = set(ids[: len(plain)])

    events = await collect_until_final(status_follower, set(ids), timeout=180)
    # The shadow changes no verdict: 1.3.0 accepts all eight.
    assert {i: h[-1].status_code for i, h in events.items()} == dict.fromkeys(ids, 203)

    diffs = [d for d in await _rules_diff(since) if d["invoice_id"] in set(ids)]
    assert {d["invoice_id"] for d in diffs} == would_reject
    for d in diffs:
        assert d["kind"] == "verdict"
        assert d["active"] == {"release": "1.3.0", "valid": True, "only_rules": []}
        assert d["shadow"] == {"release": "0.1", "valid": False, "only_rules": ["BR-FR-05"]}
        assert d["issue_date"] == "2026-03-16"
