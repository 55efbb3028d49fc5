"""Parties of invoices routed before migration 003: computed once, at start.

Migration 003 cannot do it in SQL: the SIRENs come from the stored summary
(protobuf) read the way every other path reads them
(invoicing_common.parties). Only routed invoices get parties: routing
happens only to invoices that passed validation.
"""

from __future__ import annotations

import logging

from invoicing.v1 import common_pb2
from mode import Service

from invoicing_common.db import Database
from invoicing_common.parties import buyer_sirens, seller_sirens

log = logging.getLogger(__name__)

BATCH = 1000


class PartiesBackfill(Service):
    def __init__(self, database: Database, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._database = database

    async def on_start(self) -> None:
        done = await self.run()
        if done:
            log.info("parties recorded for %d invoice(s) routed before migration 003", done)

    async def run(self) -> int:
        """Fill in what is missing; returns how many invoices it updated.
        Several instances may run it at once: the updates are the same."""
        done = 0
        while True:
            rows = await self._database.pool.fetch(
                "SELECT invoice_id, summary FROM invoices"
                " WHERE seller_sirens IS NULL AND summary IS NOT NULL AND routing IS NOT NULL LIMIT $1",
                BATCH,
            )
            if not rows:
                return done
            summaries = [common_pb2.InvoiceSummary.FromString(r["summary"]) for r in rows]
            # Arrays of arrays are awkward in unnest: the SIRENs travel as
            # comma-joined text and are split back on the server.
            await self._database.pool.execute(
                "UPDATE invoices i SET seller_sirens = string_to_array(u.sellers, ','),"
                " buyer_sirens = string_to_array(u.buyers, ',')"
                " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u (invoice_id, sellers, buyers)"
                " WHERE i.invoice_id = u.invoice_id",
                [r["invoice_id"] for r in rows],
                [",".join(sorted(seller_sirens(s))) for s in summaries],
                [",".join(sorted(buyer_sirens(s))) for s in summaries],
            )
            done += len(rows)
