"""A buyer's inbox (`invoicectl inbox`): the invoices addressed to its
companies and made available to it, newest first; another buyer's inbox
does not show them, even when it asks for that buyer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.e2e.test_access import caller_of, cli_account, invoicectl
from tests.integration.test_directory_api import fresh_siren
from tests.support import SAMPLE_BUYER, Stack, collect_until_final, invoice_from, submit

pytestmark = pytest.mark.stack


def _inbox(account: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    done = invoicectl("inbox", *args, "--json", account=account)
    assert done.returncode == 0, done.stderr
    items: list[dict[str, Any]] = json.loads(done.stdout)
    return items


async def test_the_inbox_shows_the_buyer_its_invoices_and_no_one_else(stack: Stack, status_follower: Any) -> None:
    since = datetime.now(UTC).isoformat()
    seller, stranger = fresh_siren(), fresh_siren()
    supplier = cli_account("--role", "supplier", "--siren", seller)
    buyer = cli_account("--role", "buyer", "--siren", SAMPLE_BUYER)
    other = cli_account("--role", "buyer", "--siren", stranger)
    try:
        ids = []
        for n in range(2):
            doc, _ = invoice_from(seller)
            reply = await submit(stack.ingest, doc, f"inbox-{n}.xml", metadata=caller_of(supplier).metadata())
            ids.append(reply.invoice_id)
        events = await collect_until_final(status_follower, set(ids))
        assert all(events[i][-1].status_code == 203 for i in ids), events

        # Without --buyer: the companies in the account's token (here one).
        mine = [i for i in _inbox(buyer, "--since", since) if i["invoice_id"] in ids]
        assert [i["invoice_id"] for i in mine] == ids[::-1]  # newest first
        assert all(i["status_code"] == 203 and i["due_date"] == "2025-04-13" for i in mine)
        named = _inbox(buyer, "--buyer", SAMPLE_BUYER, "--since", since)
        assert [i["invoice_id"] for i in named if i["invoice_id"] in ids] == ids[::-1]
        # --seller keeps that seller's invoices only (every item, not only ours).
        sold = _inbox(buyer, "--seller", seller, "--since", since)
        assert [i["invoice_id"] for i in sold] == ids[::-1]
        assert not _inbox(buyer, "--seller", stranger, "--since", since)

        # Another buyer sees none of them, even asking for that buyer.
        theirs = _inbox(other, "--since", since) + _inbox(other, "--buyer", SAMPLE_BUYER, "--since", since)
        assert not {i["invoice_id"] for i in theirs} & set(ids)
        # The supplier sells them; they are not in an inbox of its own.
        done = invoicectl("inbox", "--json", account=supplier)
        assert done.returncode == 0, done.stderr
        assert not {i["invoice_id"] for i in json.loads(done.stdout)} & set(ids)
    finally:
        for account in (supplier, buyer, other):
            invoicectl("accounts", "delete", account["client_id"])
