"""The PostgreSQL schema, versioned (docs/queue.md#schema-and-upgrades).

Each migration is applied once, in order, inside one transaction that first takes a
transaction-scoped advisory lock: replicas starting together queue up behind the first, which
applies what is missing; the others then find nothing to do. A bot refuses a database whose
schema is newer than it can use (`min_compatible` of the newest applied migration above its own
newest version), with one line that says so, rather than writing into tables it does not know.

Rules for a new migration: append it (never edit an applied one); make it additive (new tables,
new nullable columns, new indexes) so the replicas of the previous release, still running
during a rolling update, keep working; set `min_compatible` to its own version only when older
bots must stop (then upgrade with a stop-the-world rollout, README "Running more than one").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# pg_advisory_xact_lock key of schema migrations ("bot-schema" as a number).
MIGRATION_LOCK = 0x626F742D736368


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    # The oldest schema version a bot must understand to keep running once this is applied.
    min_compatible: int = 1


_VERDICT_COLUMNS_SQL = """
    at double precision NOT NULL,
    project_id bigint NOT NULL,
    project_path text,
    iid bigint NOT NULL,
    sha text,
    check_name text NOT NULL,
    check_id bigint,
    verdict text,
    applicable smallint,
    advisory smallint,
    action text,
    gitlab_status text,
    trigger text,
    policy_path text,
    policy_digest text,
    reason text,
    outcome text,
    wake_at text,
    tampered smallint
"""

INITIAL = f"""
CREATE TABLE bot_meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE bot_decisions (
    id bigserial PRIMARY KEY,
    {_VERDICT_COLUMNS_SQL}
);
CREATE INDEX bot_decisions_mr ON bot_decisions (project_id, iid, id);
CREATE INDEX bot_decisions_path ON bot_decisions (lower(project_path), iid, id);
CREATE INDEX bot_decisions_at ON bot_decisions (at);

CREATE TABLE bot_latest (
    {_VERDICT_COLUMNS_SQL},
    PRIMARY KEY (project_id, iid, check_name)
);
CREATE INDEX bot_latest_at ON bot_latest (at);

CREATE TABLE bot_projects (
    project_id bigint PRIMARY KEY,
    path text NOT NULL,
    last_seen double precision NOT NULL
);
CREATE TABLE bot_unconfirmed_projects (
    project_id bigint PRIMARY KEY,
    last_seen double precision NOT NULL
);

-- Delivery ids already accepted (a 16-byte digest each), kept for DEDUPE_TTL.
CREATE TABLE bot_deliveries (
    id bytea PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bot_deliveries_at ON bot_deliveries (at);

-- The per-MR work queue: one row per key (an MR or a pipeline's branch), however many
-- deliveries ask for it (docs/queue.md#the-work-table).
CREATE TABLE bot_work (
    key text PRIMARY KEY,
    requested boolean NOT NULL DEFAULT false,  -- a run is wanted
    background boolean NOT NULL DEFAULT false, -- wanted only by the sweep (runs last)
    hint jsonb,                                -- the newest delivery's hint
    turn bigint,                               -- first request since the last start
    not_before timestamptz,                    -- EVALUATION_SPACING after the last start
    wake_at timestamptz,                       -- a timed re-evaluation (submit_later)
    owner text,                                -- the replica running it, NULL when idle
    claim bigint,                              -- which claim of that replica
    lease_until timestamptz,                   -- the owner's heartbeat keeps this ahead
    running_hint jsonb,
    touched timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bot_work_ready ON bot_work (turn) WHERE owner IS NULL;
CREATE INDEX bot_work_leases ON bot_work (lease_until) WHERE owner IS NOT NULL;
CREATE SEQUENCE bot_turns;
CREATE SEQUENCE bot_claims;

-- Fleet-wide roles and their schedule (the sweep: docs/queue.md#one-sweep-for-the-fleet).
CREATE TABLE bot_leaders (
    name text PRIMARY KEY,
    owner text,
    started_at timestamptz,
    finished_at timestamptz
);
"""

# A key too long for the primary key's btree row (a branch name of up to 1024 characters,
# escaped) is stored by its digest; its text is kept here (bot/service/pgqueue.py, WorkCodec).
WORK_FULL_KEY = """
ALTER TABLE bot_work ADD COLUMN full_key text;
"""

# The sweep's leader holds a lease, not a session advisory lock (which a frozen or cut-off
# leader kept until PostgreSQL noticed its connection was gone). During a rolling update from a
# release before this one, an old replica holding the lock and a new one holding the lease may
# both sweep until the old ones are gone: a second sweep per interval, which changes nothing.
SWEEP_LEASE = """
ALTER TABLE bot_leaders ADD COLUMN leader text;
ALTER TABLE bot_leaders ADD COLUMN lease_until timestamptz;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", INITIAL),
    Migration(2, "work_full_key", WORK_FULL_KEY),
    Migration(3, "sweep lease", SWEEP_LEASE),
)
NEWEST = MIGRATIONS[-1].version


class SchemaError(Exception):
    """The database's schema cannot be used by this bot; the message says what to do."""


async def migrate(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Bring the schema up to date under the migration lock; return the versions applied now.

    `conn` is an asyncpg connection. Safe to run from any number of replicas at once."""
    newest = migrations[-1].version
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bot_schema ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " min_compatible integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch("SELECT version, min_compatible FROM bot_schema ORDER BY version")
        applied = {int(r["version"]): int(r["min_compatible"]) for r in rows}
        if applied:
            top = max(applied)
            if top > newest and applied[top] > newest:
                raise SchemaError(
                    f"the database's schema is version {top}, which needs a bot that knows "
                    f"version {applied[top]} or later; this bot knows up to {newest}: "
                    "run the newer release"
                )
        for migration in migrations:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO bot_schema (version, name, min_compatible) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.min_compatible,
            )
            applied_now.append(migration.version)
    return applied_now


async def schema_version(conn: Any) -> int:
    """The newest version applied to the database (0: none)."""
    exists = await conn.fetchval("SELECT to_regclass('bot_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM bot_schema"))


async def migrate_url(url: str) -> list[int]:
    """Migrate the database at `url` (one connection, closed after)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
