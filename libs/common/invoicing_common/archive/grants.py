"""The archive schema's owner and readers, one definition for every
deployment (the local stack, compose's db-init job): ingest owns the schema
(and creates its tables by migration); validate reads documents and adds
the attachments it extracts; route's delivery stage reads the documents and
attachments it sends to another platform, and changes nothing
(docs/archive.md, docs/security.md)."""

from __future__ import annotations

from typing import Any


async def grant_archive(conn: Any) -> None:
    """Run as the database's administrator; idempotent. Default privileges
    cover the tables ingest creates later, the GRANT ON ALL those it
    created before."""
    await conn.execute('CREATE SCHEMA IF NOT EXISTS archive AUTHORIZATION "ingest"')
    defaults = 'ALTER DEFAULT PRIVILEGES FOR ROLE "ingest" IN SCHEMA archive'
    await conn.execute('GRANT USAGE ON SCHEMA archive TO "validate"')
    await conn.execute(f'{defaults} GRANT SELECT, INSERT, UPDATE ON TABLES TO "validate"')
    await conn.execute(f'{defaults} GRANT USAGE ON SEQUENCES TO "validate"')
    await conn.execute('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA archive TO "validate"')
    await conn.execute('GRANT USAGE ON ALL SEQUENCES IN SCHEMA archive TO "validate"')
    # Read only: a delivery never writes to the archive.
    await conn.execute('GRANT USAGE ON SCHEMA archive TO "route"')
    await conn.execute(f'{defaults} GRANT SELECT ON TABLES TO "route"')
    await conn.execute('GRANT SELECT ON ALL TABLES IN SCHEMA archive TO "route"')
