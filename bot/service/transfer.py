"""Moving the embedded record into PostgreSQL: `python -m bot migrate` (README "Running more than
one", upgrading). The SQLite file is only read; everything lands in one transaction, so a
failed copy leaves PostgreSQL as it was."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bot.service.record import _VERDICT_COLUMNS, DB_NAME, StateError
from bot.service.schema import migrate

# pg_advisory_xact_lock key of a copy ("bot-copy" as a number): two copies run one after the
# other, so the second sees the first's record and refuses.
COPY_LOCK = 0x626F742D636F7079
_COLUMNS = ", ".join(_VERDICT_COLUMNS)
_OTHER_KEY = (
    "PostgreSQL already holds a different link key (a replica started before the copy made "
    "one): nothing copied, since the details links the single process handed out would stop "
    "opening. Stop the replicas, run DELETE FROM bot_meta WHERE key = 'link_key' and copy again"
)
_PARAMS = ", ".join(f"${n}" for n in range(1, len(_VERDICT_COLUMNS) + 1))


@dataclass
class Copied:
    decisions: int = 0
    latest: int = 0
    projects: int = 0
    unconfirmed: int = 0
    link_key: bool = False

    def __str__(self) -> str:
        key = "the link key" if self.link_key else "no link key"
        return (
            f"copied {self.decisions} decisions, {self.latest} latest verdicts, "
            f"{self.projects} projects, {self.unconfirmed} unconfirmed project ids and {key}"
        )


def _read_sqlite(state_dir: Path) -> tuple[dict[str, list[tuple]], str | None]:
    path = state_dir / DB_NAME
    if not path.is_file():
        raise StateError(f"no decision record at {str(path)!r}: set STATE_DIR to the old folder")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {
                "decisions": conn.execute(
                    f"SELECT {_COLUMNS} FROM decisions ORDER BY id"
                ).fetchall(),
                "latest": conn.execute(f"SELECT {_COLUMNS} FROM latest").fetchall(),
                "projects": conn.execute(
                    "SELECT project_id, path, last_seen FROM projects"
                ).fetchall(),
                "unconfirmed": conn.execute(
                    "SELECT project_id, last_seen FROM unconfirmed_projects"
                ).fetchall(),
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{str(path)!r} cannot be read: {exc}") from None
    key_file = state_dir / "link.key"
    key = key_file.read_text(encoding="ascii").strip() if key_file.is_file() else None
    return tables, key


def _text(row: tuple) -> tuple:
    """PostgreSQL text cannot hold NUL (see pgrecord._types)."""
    return tuple(v.replace("\x00", "\\u0000") if isinstance(v, str) else v for v in row)


async def copy_record(state_dir: Path, url: str) -> Copied:
    """Migrate the schema at `url`, then copy STATE_DIR's record into it; raise StateError (one
    line) if the SQLite record cannot be read, PostgreSQL already holds a record, or it holds a
    link key other than STATE_DIR's. The checks and the copy are one transaction under a lock:
    of two copies at once, one copies and the other refuses."""
    tables, key = _read_sqlite(state_dir)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        copied = Copied()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", COPY_LOCK)
            held = await conn.fetchval("SELECT count(*) FROM bot_decisions")
            if held:
                raise StateError(
                    f"PostgreSQL already holds a decision record ({held} decisions): nothing copied"
                )
            stored = await conn.fetchval("SELECT value FROM bot_meta WHERE key = 'link_key'")
            if key and stored is not None and stored != key:
                raise StateError(_OTHER_KEY)
            await conn.executemany(
                f"INSERT INTO bot_decisions ({_COLUMNS}) VALUES ({_PARAMS})",
                [_text(r) for r in tables["decisions"]],
            )
            await conn.executemany(
                f"INSERT INTO bot_latest ({_COLUMNS}) VALUES ({_PARAMS}) ON CONFLICT DO NOTHING",
                [_text(r) for r in tables["latest"]],
            )
            await conn.executemany(
                "INSERT INTO bot_projects (project_id, path, last_seen) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                [_text(r) for r in tables["projects"]],
            )
            await conn.executemany(
                "INSERT INTO bot_unconfirmed_projects (project_id, last_seen) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                tables["unconfirmed"],
            )
            if key:
                # Links the single instance handed out keep working on every replica. A replica
                # starting meanwhile waits for this transaction (the key's row), then uses it.
                await conn.execute(
                    "INSERT INTO bot_meta (key, value) VALUES ('link_key', $1) "
                    "ON CONFLICT DO NOTHING",
                    key,
                )
                now = await conn.fetchval("SELECT value FROM bot_meta WHERE key = 'link_key'")
                if now != key:  # a replica's key, committed between the check and the insert
                    raise StateError(_OTHER_KEY)
                copied.link_key = True
        copied.decisions = len(tables["decisions"])
        copied.latest = len(tables["latest"])
        copied.projects = len(tables["projects"])
        copied.unconfirmed = len(tables["unconfirmed"])
        return copied
    finally:
        await conn.close()
