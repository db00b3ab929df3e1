"""The PostgreSQL schema: versioned, migrated under a lock (docs/queue.md#schema-and-upgrades)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from bot.service.schema import MIGRATIONS, NEWEST, Migration, SchemaError, migrate


async def test_replicas_migrating_together_apply_each_version_once(pg_cluster: Any) -> None:
    url = pg_cluster.new_database(template=None)
    conns = [await asyncpg.connect(url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(conn) for conn in conns))
        assert sorted(applied, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]
        rows = await conns[0].fetch("SELECT version FROM bot_schema")
        assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
    finally:
        for conn in conns:
            await conn.close()


async def test_a_newer_migration_is_applied_on_start_and_a_too_new_schema_refused(
    database_url: str,
) -> None:
    newer = (
        *MIGRATIONS,
        Migration(NEWEST + 1, "extra", "CREATE TABLE bot_extra (x int)", NEWEST + 1),
    )
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn, newer) == [NEWEST + 1]
        with pytest.raises(SchemaError, match=f"version {NEWEST + 1}.*run the newer release"):
            await migrate(conn)
    finally:
        await conn.close()
