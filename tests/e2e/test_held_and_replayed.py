"""A dead-lettered invoice, end to end: validate cannot publish what it
made of the invoice (its output topic is shrunk below the size of any
`validated` record, which carries references, not the document), so the
received record goes to the DLQ; GetInvoice says the invoice is held, and at which
stage, without the error text; once the limit is fixed, `invoicectl dlq
replay` puts the record back, the invoice goes on to its final status and
the hold goes; a second replay does nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from invoicing_common import topics
from invoicing_common.kafka import admin as topic_admin
from tests.support import Stack, collect_until_final, get_invoice, submit, unique_invoice

pytestmark = pytest.mark.stack

INVOICECTL = str(Path(sys.executable).parent / "invoicectl")


async def _invoicectl(*args: str) -> Any:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([INVOICECTL, *args], env=os.environ, capture_output=True, text=True, timeout=120)

    done = await asyncio.get_running_loop().run_in_executor(None, run)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def _submitted(follower: Any, invoice_id: str) -> None:
    """Until the status service has recorded the invoice (its 200 event)."""
    async for event in follower.events():
        if event.invoice_id == invoice_id:
            return


async def test_an_invoice_its_stage_cannot_publish_is_held_then_replayed(stack: Stack, status_follower: Any) -> None:
    spec = next(s for s in topic_admin.load() if s.name == topics.VALIDATED)
    # A validated record (summary, findings, references) weighs a few hundred
    # bytes at least; nothing of the invoice fits.
    small = replace(spec, configs={**spec.configs, "max.message.bytes": "200"})
    await topic_admin.apply(stack.kafka, [small])
    try:
        document, _ = unique_invoice("ubl-invoice-valid.xml")
        reply = await submit(stack.ingest, document, "too-large-to-pass-on.xml")
        await asyncio.wait_for(_submitted(status_follower, reply.invoice_id), 60)
        deadline = time.monotonic() + 90
        while not (view := await get_invoice(stack.status, reply.invoice_id)).HasField("hold"):
            assert time.monotonic() < deadline, f"invoice not held: {view}"
            await asyncio.sleep(0.2)  # polling a condition, bounded by the deadline
    finally:
        await topic_admin.apply(stack.kafka, [spec])
    hold = view.hold
    assert view.status_code == 200
    assert (hold.stage, hold.code) == ("validate", "HELD_TECH")
    assert hold.dead_letter and hold.dead_letter in hold.message
    assert "MessageSizeTooLarge" not in hold.message  # the error text is for operators

    letter = await _invoicectl("dlq", "show", hold.dead_letter, "--json")
    assert (letter["source_topic"], letter["key"], letter["consumer_group"]) == (
        topics.RECEIVED, reply.invoice_id, "invoicing-validate",
    )  # fmt: skip
    assert letter["error_type"] == "MessageSizeTooLargeError" and letter["replayed_at"] is None
    assert hold.dead_letter in [item["id"] for item in await _invoicectl("dlq", "list", "--pending", "--json")]

    [dry] = await _invoicectl("dlq", "replay", "--id", hold.dead_letter, "--dry-run", "--json")
    assert dry["action"] == "would replay"
    [done] = await _invoicectl("dlq", "replay", "--id", hold.dead_letter, "--json")
    assert done["action"] == "replayed" and done["offset"] is not None

    events = await collect_until_final(status_follower, {reply.invoice_id}, timeout=90)
    assert events[reply.invoice_id][-1].status_code in (201, 203)
    deadline = time.monotonic() + 30
    while (view := await get_invoice(stack.status, reply.invoice_id)).HasField("hold"):
        assert time.monotonic() < deadline, f"hold not lifted: {view.hold}"
        await asyncio.sleep(0.2)  # polling a condition, bounded by the deadline

    # Replaying twice has one effect.
    [again] = await _invoicectl("dlq", "replay", "--id", hold.dead_letter, "--json")
    assert again["action"] == "already replayed" and again["offset"] == done["offset"]
    assert hold.dead_letter not in [item["id"] for item in await _invoicectl("dlq", "list", "--pending", "--json")]
