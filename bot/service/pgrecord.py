"""The decision record in PostgreSQL (DATABASE_URL): the same interface and rows as the SQLite
record in bot/service/record.py, shared by every replica (README "Running more than one").

A decision is one statement (its history row and the MR's `latest` row together), written as
the evaluation finishes. While PostgreSQL cannot be reached, decisions wait in memory (bounded)
and are written when it answers, so the record loses none to a short outage; verdicts are
posted to GitLab meanwhile, as with a failing SQLite record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.logs import get_logger
from bot.service.database import DB_ERRORS, Database
from bot.service.record import (
    _VERDICT_COLUMNS,
    MAX_UNCONFIRMED_PROJECTS,
    RECORDED_ACTIONS,
    ProjectSightings,
    StateError,
    decision_values,
    row_dict,
)

if TYPE_CHECKING:
    from bot.service.decide import Decision

log = get_logger(__name__)

MAX_WAITING = 50_000  # decisions kept in memory while PostgreSQL is away; beyond, dropped (logged)
PRUNE_EVERY = 24 * 3600.0

_COLUMNS = ", ".join(_VERDICT_COLUMNS)
_PARAMS = ", ".join(f"${n}" for n in range(1, len(_VERDICT_COLUMNS) + 1))
_UPDATE_LATEST = ", ".join(f"{c} = excluded.{c}" for c in _VERDICT_COLUMNS)
_ACTION = _VERDICT_COLUMNS.index("action") + 1
_SHA = _VERDICT_COLUMNS.index("sha") + 1
_VERDICT = _VERDICT_COLUMNS.index("verdict") + 1
_PROJECT = _VERDICT_COLUMNS.index("project_id") + 1
_IID = _VERDICT_COLUMNS.index("iid") + 1
_CHECK = _VERDICT_COLUMNS.index("check_name") + 1
_RECORDED = ", ".join(f"'{a}'" for a in sorted(RECORDED_ACTIONS))

# One round trip per decision: the history row when the bot acted on it (a `not_reportable`
# verdict already in `latest` for this SHA is not repeated, as in record._repeats_latest), and
# the MR's latest verdict for the check.
_WRITE_DECISION = f"""
WITH history AS (
    INSERT INTO bot_decisions ({_COLUMNS})
    SELECT {_PARAMS}
    WHERE ${_ACTION}::text IN ({_RECORDED}) AND NOT (
        ${_ACTION}::text = 'not_reportable' AND EXISTS (
            SELECT 1 FROM bot_latest WHERE project_id = ${_PROJECT} AND iid = ${_IID}
            AND check_name = ${_CHECK} AND sha = ${_SHA} AND verdict = ${_VERDICT}
            AND action = 'not_reportable'))
)
INSERT INTO bot_latest ({_COLUMNS}) VALUES ({_PARAMS})
ON CONFLICT (project_id, iid, check_name) DO UPDATE SET {_UPDATE_LATEST}
"""


def _types(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as PostgreSQL takes it: text cannot hold NUL (a hostile title may carry one), so
    it is kept as its escape, like record._storable keeps a lone surrogate."""
    return tuple(v.replace("\x00", "\\u0000") if isinstance(v, str) else v for v in values)


class PgRecord:
    """The decision record and the known projects of a fleet, in PostgreSQL."""

    def __init__(self, db: Database, *, retention_days: float = 90.0) -> None:
        self.db = db
        self.retention_days = retention_days
        self.path = db.shown_url  # what messages name as the record's place
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.errors: dict[str, int] = {"read": 0, "write": 0}
        self.on_error: Callable[[str], None] | None = None
        self._waiting: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever nothing waits to be written
        self._drained.set()
        self._sightings = ProjectSightings()
        self._closed = False
        self._last_prune = 0.0

    async def start(self) -> None:
        """Prune old decisions and start the writer (the database is open)."""
        with contextlib.suppress(*DB_ERRORS):
            await self._prune()
        self._writer = asyncio.create_task(self._write_loop(), name="decision-record-writer")

    # -- writes -----------------------------------------------------------------------------

    def _put(self, sql: str, args: tuple[Any, ...]) -> None:
        if self._closed:
            raise StateError("the decision record is closed")
        if len(self._waiting) >= MAX_WAITING:
            log.error("record_backlog_full", pending=MAX_WAITING)
            return
        self._waiting.append((sql, args))
        self._drained.clear()
        self._wake.set()

    async def _write_loop(self) -> None:
        """Write what waits, in order; while PostgreSQL is away, keep it and try again."""
        delay = 0.2
        while True:
            if not self._waiting:
                self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            sql, args = self._waiting[0]
            try:
                await self.db.execute(sql, *args)
            except DB_ERRORS as exc:
                self.db.failed(exc, "record")
                self._failed("write", exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            self._waiting.popleft()
            delay = 0.2
            self._succeeded()
            if time.monotonic() - self._last_prune > PRUNE_EVERY:
                with contextlib.suppress(*DB_ERRORS):
                    await self._prune()

    async def _prune(self) -> None:
        self._last_prune = time.monotonic()
        cutoff = time.time() - self.retention_days * 86400
        await self.db.execute("DELETE FROM bot_decisions WHERE at < $1", cutoff)
        await self.db.execute("DELETE FROM bot_latest WHERE at < $1", cutoff)

    async def record(self, decision: Decision) -> None:
        """Queue one decision; written at once while PostgreSQL answers, kept until it does."""
        self._put(_WRITE_DECISION, _types(decision_values(decision)))

    def remember_project(self, project_id: int, path: str) -> None:
        now = time.time()
        if not self._sightings.confirmed(project_id, path, now):
            return
        self._put(
            "WITH gone AS (DELETE FROM bot_unconfirmed_projects WHERE project_id = $1) "
            "INSERT INTO bot_projects (project_id, path, last_seen) VALUES ($1, $2, $3) "
            "ON CONFLICT (project_id) DO UPDATE SET path = excluded.path, "
            "last_seen = excluded.last_seen",
            (project_id, path, now),
        )

    def remember_delivered(self, project_id: int) -> None:
        now = time.time()
        if not self._sightings.delivered(project_id, now):
            return
        self._put(
            "WITH trimmed AS (DELETE FROM bot_unconfirmed_projects WHERE project_id NOT IN "
            "(SELECT project_id FROM bot_unconfirmed_projects ORDER BY last_seen DESC LIMIT $3)) "
            "INSERT INTO bot_unconfirmed_projects (project_id, last_seen) "
            "SELECT $1, $2 WHERE NOT EXISTS "
            "(SELECT 1 FROM bot_projects WHERE project_id = $1) "
            "ON CONFLICT (project_id) DO UPDATE SET last_seen = excluded.last_seen",
            (project_id, now, MAX_UNCONFIRMED_PROJECTS - 1),
        )

    def forget_project(self, project_id: int) -> None:
        self._sightings.forget(project_id)
        self._put(
            "WITH gone AS (DELETE FROM bot_projects WHERE project_id = $1) "
            "DELETE FROM bot_unconfirmed_projects WHERE project_id = $1",
            (project_id,),
        )

    def drop_unconfirmed(self, project_id: int) -> None:
        self._sightings.unconfirmed_gone(project_id)
        self._put("DELETE FROM bot_unconfirmed_projects WHERE project_id = $1", (project_id,))

    async def flush(self) -> None:
        """Wait until everything queued so far is written (while PostgreSQL answers)."""
        if self._waiting and self._writer is not None and not self._writer.done():
            await self._drained.wait()

    # -- health -----------------------------------------------------------------------------

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.on_error is not None:
            self.on_error(op)

    def _succeeded(self) -> None:
        self.failing_since = None

    # -- reads ------------------------------------------------------------------------------

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        # Reads see what was recorded before them, but never hang on an outage.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 2)
        try:
            rows = await self.db.fetch(sql, *args)
        except DB_ERRORS as exc:
            self.db.failed(exc, "record")
            self._failed("read", exc)
            raise StateError(f"the decision record cannot be read: {exc} ({self.path})") from None
        return rows

    async def last_posted(self, project_id: int, iid: int, check: str) -> tuple[str, str] | None:
        rows = await self._read(
            "SELECT sha, verdict FROM bot_decisions WHERE project_id = $1 AND iid = $2 "
            "AND check_name = $3 AND action = 'posted' ORDER BY id DESC LIMIT 1",
            project_id,
            iid,
            check,
        )
        return (str(rows[0]["sha"]), str(rows[0]["verdict"])) if rows else None

    async def known_projects(self) -> list[tuple[int, str]]:
        rows = await self._read("SELECT project_id, path FROM bot_projects ORDER BY project_id")
        return [(int(r["project_id"]), str(r["path"])) for r in rows]

    async def unconfirmed_projects(self) -> list[int]:
        rows = await self._read(
            "SELECT project_id FROM bot_unconfirmed_projects ORDER BY project_id"
        )
        return [int(r["project_id"]) for r in rows]

    async def history(self, project: int | str, iid: int, limit: int = 50) -> list[dict[str, Any]]:
        columns = f"id, {_COLUMNS}"
        by_path = "lower(project_path) = lower($1)"
        where = "project_id = $1" if isinstance(project, int) else by_path
        rows = await self._read(
            f"SELECT {columns} FROM bot_decisions WHERE {where} AND iid = $2 "
            "ORDER BY id DESC LIMIT $3",
            project,
            iid,
            int(limit),
        )
        return [row_dict(r) for r in rows]

    async def latest(self, project_id: int, iid: int) -> list[dict[str, Any]]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM bot_latest WHERE project_id = $1 AND iid = $2 "
            "ORDER BY check_name",
            project_id,
            iid,
        )
        return [row_dict(r) for r in rows]

    async def close(self, wait: float = 5.0) -> None:
        """Write what waits (for up to `wait` seconds), then stop the writer. Idempotent."""
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), wait)
        self._closed = True
        if self._waiting:
            log.error("record_unwritten", decisions=len(self._waiting))
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


async def link_key(db: Database, make: Callable[[], bytes]) -> bytes:
    """The fleet's one link key: the first replica's, kept in `bot_meta` (every replica signs
    and checks details links with it)."""
    await db.execute(
        "INSERT INTO bot_meta (key, value) VALUES ('link_key', $1) ON CONFLICT DO NOTHING",
        make().hex(),
    )
    value = await db.fetchval("SELECT value FROM bot_meta WHERE key = 'link_key'")
    return bytes.fromhex(str(value))


async def _connected(url: str) -> Database:
    """A database for a one-shot command: no migration (a reader never changes the schema)."""
    db = Database(url, pool_size=2)
    await db.open(wait=5, migrate_schema=False)
    return db


async def read_history_pg(
    url: str, project: int | str, iid: int, limit: int = 50
) -> list[dict[str, Any]]:
    """The `history` command's read with DATABASE_URL (StateError, one line, if it fails)."""
    try:
        db = await _connected(url)
    except Exception as exc:
        raise StateError(str(exc)) from None
    try:
        return await PgRecord(db).history(project, iid, limit)
    finally:
        await db.close()


async def read_link_inputs_pg(url: str, path: str | None) -> tuple[bytes | None, int | None]:
    """The `link` command's reads with DATABASE_URL: the fleet's link key (None if no replica
    made one yet) and the id of project `path` (None if unknown or not asked)."""
    try:
        db = await _connected(url)
    except Exception as exc:
        raise StateError(str(exc)) from None
    try:
        value = await db.fetchval("SELECT value FROM bot_meta WHERE key = 'link_key'")
        project_id = None
        if path is not None:
            project_id = await db.fetchval(
                "SELECT project_id FROM bot_projects WHERE lower(path) = lower($1) "
                "ORDER BY last_seen DESC LIMIT 1",
                path,
            )
        return (bytes.fromhex(str(value)) if value else None), project_id
    except DB_ERRORS as exc:
        raise StateError(f"PostgreSQL cannot be read: {exc}") from None
    finally:
        await db.close()
