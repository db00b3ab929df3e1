"""The decision record: every verdict the bot acted on, kept in SQLite under STATE_DIR.

Why it exists: GitLab's status API carries no message, and logs roll away. The record answers
"why is this check red, since when, on which commit, under which policy file" after a restart,
for `python -m bot history` and the details page, and remembers which projects the sweep covers.

How it stays off the event loop: every write goes onto a queue drained by one dedicated writer
thread, which commits whatever has piled up in one transaction. `record()` only enqueues; reads
run in a worker thread (`asyncio.to_thread`) on their own connection. WAL mode lets readers and
the writer work at the same time, also across processes (`history` while `serve` runs).

What it costs: a transaction (about 0.25 ms of CPU) per decision was most of the record's cost, so
the writer lets decisions pile up for up to LINGER seconds before committing (a posted verdict, a
read, a project to remember, or closing the record commits at once, so neither a graceful stop
nor a kill -9 after a POST leaves GitLab showing a verdict the record does not know). And an
evaluation whose verdict for a check is the one already in `latest` (same SHA, verdict, outcome,
action, GitLab status, policy) only refreshes that row's time and trigger, without rendering the
outcome tree to JSON again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.logs import get_logger

if TYPE_CHECKING:
    from bot.service.decide import Decision

log = get_logger(__name__)

DB_NAME = "state.sqlite3"
# Actions whose decisions get a history row; `unchanged` only refreshes `latest`.
RECORDED_ACTIONS = frozenset({"posted", "not_reportable", "stale"})
SCHEMA_VERSION = 1
MAX_PENDING = 50_000  # writes queued beyond this are dropped (with an error log), not buffered
PRUNE_EVERY = 24 * 3600.0
BATCH = 500
LINGER = 0.05  # seconds the writer waits for more decisions before committing them together
LATEST_MEMORY = 20_000  # (MR, check) pairs whose committed `latest` row the writer remembers

_VERDICT_COLUMNS = (
    "at",
    "project_id",
    "project_path",
    "iid",
    "sha",
    "check_name",
    "check_id",
    "verdict",
    "applicable",
    "advisory",
    "action",
    "gitlab_status",
    "trigger",
    "policy_path",
    "policy_digest",
    "reason",
    "outcome",
    "wake_at",
    "tampered",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(_VERDICT_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS latest (
    {", ".join(_VERDICT_COLUMNS)},
    PRIMARY KEY (project_id, iid, check_name)
);
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS unconfirmed_projects (
    project_id INTEGER PRIMARY KEY,
    last_seen REAL NOT NULL
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS decisions_mr ON decisions (project_id, iid, id);
CREATE INDEX IF NOT EXISTS decisions_path ON decisions (project_path COLLATE NOCASE, iid, id);
CREATE INDEX IF NOT EXISTS decisions_at ON decisions (at);
CREATE INDEX IF NOT EXISTS latest_at ON latest (at);
"""

_INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(_VERDICT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _VERDICT_COLUMNS)})"
)
_UPSERT_LATEST = (
    f"INSERT OR REPLACE INTO latest ({', '.join(_VERDICT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _VERDICT_COLUMNS)})"
)
_TOUCH_LATEST = (
    "UPDATE latest SET at = ?, trigger = ? WHERE project_id = ? AND iid = ? AND check_name = ?"
)
_UPSERT_PROJECT = (
    "INSERT INTO projects (project_id, path, last_seen) VALUES (?, ?, ?) "
    "ON CONFLICT (project_id) DO UPDATE SET path = excluded.path, last_seen = excluded.last_seen"
)
_UPSERT_UNCONFIRMED = (
    "INSERT INTO unconfirmed_projects (project_id, last_seen) VALUES (?, ?) "
    "ON CONFLICT (project_id) DO UPDATE SET last_seen = excluded.last_seen"
)
# Projects: those GitLab confirmed (an evaluation read an MR of theirs), with GitLab's path; and
# ids met only in deliveries, which anyone can forge while STATUS_CHECK_SECRET is unset: kept
# apart, without a path, bounded, until the sweep asks GitLab about them.
MAX_KNOWN_PROJECTS = 10_000
MAX_UNCONFIRMED_PROJECTS = 1_000
_TRIM_EVERY = 64  # inserts between trims of a projects table to its bound
_TRIM_PROJECTS = (
    "DELETE FROM projects WHERE project_id NOT IN "
    "(SELECT project_id FROM projects ORDER BY last_seen DESC LIMIT ?)"
)
_TRIM_UNCONFIRMED = (
    "DELETE FROM unconfirmed_projects WHERE project_id NOT IN "
    "(SELECT project_id FROM unconfirmed_projects ORDER BY last_seen DESC LIMIT ?)"
)


def _repeats_latest(conn: sqlite3.Connection, decision: Decision) -> bool:
    """A `not_reportable` verdict (GitLab 14.x cannot show failures) is the same on every
    evaluation of a failing MR: keep one history row per SHA and verdict, not one per sweep."""
    if decision.action != "not_reportable":
        return False
    row = conn.execute(
        "SELECT 1 FROM latest WHERE project_id = ? AND iid = ? AND check_name = ? AND sha = ? "
        "AND verdict = ? AND action = 'not_reportable'",
        (
            decision.key.project_id,
            decision.key.iid,
            decision.check,
            decision.sha,
            decision.verdict.status,
        ),
    ).fetchone()
    return row is not None


class StateError(Exception):
    """STATE_DIR or its database cannot be used; the message is the one line the operator sees."""


def check_state_dir(state_dir: Path) -> None:
    """Raise StateError when STATE_DIR is there but is not a folder (a file, say): every use
    of it would fail with a less telling "File exists" or "Not a directory"."""
    if state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"STATE_DIR {str(state_dir)!r} is not a folder")


def _storable(value: Any) -> Any:
    """Text SQLite can store: a lone surrogate (a hostile MR title can carry one) would make the
    whole transaction fail, so it is kept as its escape (`\\ud800`)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def decision_values(decision: Decision) -> tuple[Any, ...]:
    """One decision as a row (in `_VERDICT_COLUMNS` order); the outcome tree becomes JSON."""
    verdict = decision.verdict
    outcome = verdict.outcome.to_dict() if verdict.outcome is not None else None
    return tuple(
        _storable(value)
        for value in (
            decision.at.timestamp(),
            decision.key.project_id,
            decision.project_path,
            decision.key.iid,
            decision.sha,
            decision.check,
            decision.check_id,
            verdict.status,
            int(verdict.applicable),
            int(verdict.advisory),
            decision.action,
            decision.gitlab_status,
            decision.trigger,
            decision.policy.path,
            decision.policy.digest,
            verdict.reason,
            json.dumps(outcome, ensure_ascii=False, separators=(",", ":")),
            verdict.wake_at.isoformat() if verdict.wake_at else None,
            int(decision.tampered),
        )
    )


_LatestKey = tuple[int, int, str]


def _fingerprint(decision: Decision) -> int | None:
    """Everything a `latest` row holds but its time and trigger (the verdict covers the status,
    reason, outcome tree and wake-up time), hashed: two decisions with the same fingerprint
    differ in the row only by `at` and `trigger`. None if something in it cannot be hashed."""
    try:
        return hash(
            (
                decision.project_path,
                decision.sha,
                decision.check_id,
                decision.action,
                decision.gitlab_status,
                decision.policy.path,
                decision.policy.digest,
                decision.tampered,
                decision.verdict,
            )
        )
    except TypeError:
        return None


class _LatestRows:
    """What the writer thread knows of the `latest` table: each row's fingerprint as committed,
    and as written by the transaction under way (kept only if it commits). Bounded: the oldest
    entries are forgotten, and a forgotten row is simply written whole next time."""

    def __init__(self, limit: int = LATEST_MEMORY) -> None:
        self.limit = limit
        self.committed: dict[_LatestKey, int] = {}
        self.pending: dict[_LatestKey, int] = {}

    def get(self, key: _LatestKey) -> int | None:
        found = self.pending.get(key)
        return found if found is not None else self.committed.get(key)

    def commit(self) -> None:
        committed = self.committed
        for key, fingerprint in self.pending.items():
            committed.pop(key, None)
            committed[key] = fingerprint
        self.pending.clear()
        while len(committed) > self.limit:
            del committed[next(iter(committed))]

    def rollback(self) -> None:
        self.pending.clear()


class _DecisionWrite:
    """One decision, written by the writer thread: a history row when the bot acted on it, and
    the MR's latest verdict for the check. When that row already holds this very verdict (a
    re-evaluation that changed nothing), only its time and trigger are refreshed."""

    __slots__ = ("decision", "rows")

    def __init__(self, decision: Decision, rows: _LatestRows) -> None:
        self.decision = decision
        self.rows = rows

    @property
    def lingers(self) -> bool:
        """Whether this write may wait for others to share its commit. A verdict the bot posted
        may not: GitLab already shows it, and a restart that found it missing from the record
        would take it for a status set by hand (a false `tamper` alarm and a repeated write)."""
        return self.decision.action != "posted"

    def __call__(self, conn: sqlite3.Connection) -> None:
        decision = self.decision
        key = (decision.key.project_id, decision.key.iid, decision.check)
        fingerprint = _fingerprint(decision)
        if (
            fingerprint is not None
            and decision.action not in RECORDED_ACTIONS
            and self.rows.get(key) == fingerprint
        ):
            at = decision.at.timestamp()
            if conn.execute(_TOUCH_LATEST, (at, decision.trigger, *key)).rowcount:
                return
            # The row is gone (pruned): write it whole.
        values = decision_values(decision)
        if decision.action in RECORDED_ACTIONS and not _repeats_latest(conn, decision):
            conn.execute(_INSERT_DECISION, values)
        conn.execute(_UPSERT_LATEST, values)
        if fingerprint is None:
            self.rows.pending.pop(key, None)
            self.rows.committed.pop(key, None)
        else:
            self.rows.pending[key] = fingerprint


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def row_dict(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    """A stored row (either backend's) as the dict `history`/`latest` return (and the details
    page's JSON shows)."""
    data = dict(row)
    data["check"] = data.pop("check_name")
    data["at"] = _iso(data["at"])
    data["applicable"] = bool(data["applicable"])
    data["advisory"] = bool(data["advisory"])
    data["tampered"] = bool(data["tampered"])
    data["outcome"] = json.loads(data["outcome"]) if data["outcome"] else None
    return data


@dataclass
class _Flush:
    """A marker in the write queue: resolved once everything queued before it is committed."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]

    def done(self) -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop is gone: nobody to tell
            self.loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


_Write = tuple[str, tuple[Any, ...]] | Callable[[sqlite3.Connection], None]
_STOP = object()


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _describe(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _disk_full(folder: Path, exc: BaseException | None = None) -> bool:
    """The error is a full disk, or the folder's filesystem has (next to) no space left: SQLite
    then reports all sorts of things ("disk I/O error", "cannot rollback")."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if exc is not None and "disk is full" in str(exc):
        return True
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < 64 * 1024
    except OSError:
        return False


def _advice(message: str, path: Path) -> str:
    if "not a database" in message or "malformed" in message:
        return f"{path} was replaced or damaged: move it aside and restart to start a new record"
    if "disk is full" in message or _disk_full(path.parent):
        return f"disk full: free space on the filesystem of {path.parent}"
    return f"check {path} and its folder (permissions, space, the volume)"


class ProjectSightings:
    """Which project writes are due: a confirmed project when new, renamed or not written for
    an hour; an unconfirmed id when not written for an hour (both bounded). Shared by both
    record backends so that a busy project costs one write an hour, not one per delivery."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, float]] = {}  # confirmed: id -> (path, written at)
        self._delivered: dict[int, float] = {}  # unconfirmed ids written lately

    def confirmed(self, project_id: int, path: str, now: float) -> bool:
        seen = self._seen.get(project_id)
        if seen is not None and seen[0] == path and now - seen[1] < 3600:
            return False
        if len(self._seen) >= MAX_KNOWN_PROJECTS:
            self._seen.clear()
        self._seen[project_id] = (path, now)
        self._delivered.pop(project_id, None)
        return True

    def delivered(self, project_id: int, now: float) -> bool:
        confirmed = self._seen.get(project_id)
        if confirmed is not None and now - confirmed[1] < 3600:
            return False
        written = self._delivered.get(project_id)
        if written is not None and now - written < 3600:
            return False
        if len(self._delivered) >= 2 * MAX_UNCONFIRMED_PROJECTS:
            self._delivered.clear()
        self._delivered[project_id] = now
        return True

    def forget(self, project_id: int) -> None:
        self._seen.pop(project_id, None)
        self._delivered.pop(project_id, None)

    def unconfirmed_gone(self, project_id: int) -> None:
        self._delivered.pop(project_id, None)


class DecisionRecord:
    """The record of one STATE_DIR. Open it with `DecisionRecord.open(state_dir)`."""

    def __init__(
        self,
        path: Path,
        reader: sqlite3.Connection,
        writer: sqlite3.Connection | None,
        retention_days: float,
    ) -> None:
        self.path = path
        self.retention_days = retention_days
        self._reader = reader
        self._read_lock = threading.Lock()
        self._writer = writer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._sightings = ProjectSightings()
        self._inserts = 0
        self._latest = _LatestRows()  # the writer thread's own
        # Failures of the database while running (a replaced or damaged file, a full disk):
        # logged once when they start (`record_failed`) and once when they end; counted.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.errors: dict[str, int] = {"read": 0, "write": 0}
        self.on_error: Callable[[str], None] | None = None  # op: read/write (metrics)
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if writer is not None:
            self._thread = threading.Thread(
                target=self._write_loop, name="decision-record-writer", daemon=True
            )
            self._thread.start()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, state_dir: Path, *, retention_days: float = 90.0, readonly: bool = False
    ) -> DecisionRecord:
        """Open (creating when needed) the record; raise StateError with one line if unusable.

        Synchronous on purpose: `serve` must refuse to start on a bad STATE_DIR before it accepts
        traffic. It also prunes decisions older than `retention_days`. `readonly` (for the
        `history` command) creates nothing and starts no writer.
        """
        state_dir = Path(state_dir)
        path = state_dir / DB_NAME
        check_state_dir(state_dir)
        if readonly:
            if not path.is_file():
                raise StateError(
                    f"no decision record at {str(path)!r}: set STATE_DIR to the bot's state folder"
                )
            reader = None
            try:
                reader = _connect(path, readonly=True)
                reader.execute("SELECT count(*) FROM decisions").fetchone()
            except sqlite3.DatabaseError as exc:
                if reader is not None:
                    reader.close()
                raise StateError(f"{str(path)!r} cannot be read: {_describe(exc)}") from None
            return cls(path, reader, None, retention_days)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            full = "disk full: " if _disk_full(state_dir, exc) else ""
            raise StateError(
                f"STATE_DIR {str(state_dir)!r} cannot be created: {full}{_describe(exc)}"
            ) from None
        writer = None
        try:
            writer = _connect(path)
            cls._prepare(writer, retention_days)
            reader = _connect(path)
        except (sqlite3.DatabaseError, OSError) as exc:
            if writer is not None:
                writer.close()
            message = _describe(exc)
            if _disk_full(state_dir, exc):
                raise StateError(
                    f"{str(path)!r} cannot be written: disk full "
                    f"({shutil.disk_usage(state_dir).free} bytes free on STATE_DIR's "
                    f"filesystem; SQLite said: {message}): free some space and start again"
                ) from None
            if "not a database" in message or "malformed" in message:
                raise StateError(
                    f"{str(path)!r} is not a usable SQLite database ({message}): "
                    "move it aside and the bot starts a new record"
                ) from None
            raise StateError(f"{str(path)!r} cannot be written: {message}") from None
        return cls(path, reader, writer, retention_days)

    @staticmethod
    def _prepare(conn: sqlite3.Connection, retention_days: float) -> None:
        """Schema, WAL, a real write (so a read-only file fails now, not later), pruning."""
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("record_not_wal", journal_mode=mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        for table in ("decisions", "latest"):
            # A record written by an older bot: columns added since are added (empty) here.
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column in _VERDICT_COLUMNS:
                if column not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        conn.executescript(_INDEXES)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?), ('opened_at', ?)",
                (str(SCHEMA_VERSION), _iso(time.time())),
            )
            pruned = DecisionRecord._prune(conn, retention_days)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk does): the error that matters
            # is the first one, not "cannot rollback - no transaction is active".
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if pruned:
            log.info("record_pruned", rows=pruned, retention_days=retention_days)

    def _prune_old(self, conn: sqlite3.Connection) -> None:
        """The writer's periodic pruning, as a write of its own."""
        self._prune(conn, self.retention_days)

    @staticmethod
    def _prune(conn: sqlite3.Connection, retention_days: float) -> int:
        cutoff = time.time() - retention_days * 86400
        pruned = conn.execute("DELETE FROM decisions WHERE at < ?", (cutoff,)).rowcount
        pruned += conn.execute("DELETE FROM latest WHERE at < ?", (cutoff,)).rowcount
        return pruned

    # -- writing (the writer thread) ------------------------------------------------------------

    def _enqueue(self, item: _Write) -> None:
        if self._closed or self._writer is None:
            raise StateError("the decision record is closed or read-only")
        if self._queue.qsize() >= MAX_PENDING:
            log.error("record_backlog_full", pending=MAX_PENDING, path=str(self.path))
            return
        self._queue.put(item)

    def _write_loop(self) -> None:
        assert self._writer is not None
        conn = self._writer
        last_prune = time.monotonic()
        stop = False
        while not stop:
            batch = self._next_batch()
            writes = [w for w in batch if not isinstance(w, _Flush) and w is not _STOP]
            stop = any(w is _STOP for w in batch)
            if writes:
                self._commit(conn, writes)
            if time.monotonic() - last_prune > PRUNE_EVERY:
                last_prune = time.monotonic()
                self._commit(conn, [self._prune_old])
            for item in batch:
                if isinstance(item, _Flush):
                    item.done()
        conn.close()

    def _next_batch(self) -> list[Any]:
        """What the next transaction commits: everything queued, and while only decisions are,
        whatever else arrives within LINGER (so a stream of decisions costs a few commits per
        second, not one each). Anything else (a posted verdict, a flush, a project, stop) ends
        the wait."""
        item = self._queue.get()
        batch: list[Any] = [item]
        linger = isinstance(item, _DecisionWrite) and item.lingers
        deadline = time.monotonic() + LINGER
        while len(batch) < BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if not linger or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            linger = linger and isinstance(item, _DecisionWrite) and item.lingers
        return batch

    def _transaction(self, conn: sqlite3.Connection, writes: list[_Write]) -> Exception | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in writes:
                if callable(write):
                    write(conn)
                else:
                    conn.execute(*write)
            conn.execute("COMMIT")
            self._latest.commit()
            return None
        except Exception as exc:  # a full disk must not kill the writer thread
            self._latest.rollback()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return exc

    def _commit(self, conn: sqlite3.Connection, writes: list[_Write]) -> None:
        """Commit the writes together; if that fails, one by one, so one bad write costs only
        itself. Failures are counted and reported (`_failed`), never raised."""
        error = self._transaction(conn, writes)
        if error is None:
            self._succeeded()
            return
        lost = len(writes)
        if len(writes) > 1:
            lost = 0
            for write in writes:
                failed = self._transaction(conn, [write])
                if failed is not None:
                    lost += 1
                    error = failed
        if lost:
            self._failed("write", error, lost=lost)
        else:
            self._succeeded()

    def _failed(self, op: str, exc: BaseException, *, lost: int = 0) -> None:
        """A read or write failed: count it; log it once when the record starts failing."""
        message = _describe(exc)
        with self._state_lock:
            self.errors[op] = self.errors.get(op, 0) + 1
            first = self.failing_since is None
            if first:
                self.failing_since = time.time()
            self.last_error = message
        if self.on_error is not None:
            self.on_error(op)
        if first:
            log.error(
                "record_failed",
                op=op,
                error=message,
                lost=lost,
                path=str(self.path),
                effect="verdicts are still posted; decisions are not recorded and history cannot "
                "be shown until the database works again",
                advice=_advice(message, self.path),
            )
        else:
            log.debug("record_failed_again", op=op, error=message, lost=lost)

    def _succeeded(self) -> None:
        if self.failing_since is None:
            return
        with self._state_lock:
            since, self.failing_since = self.failing_since, None
        if since is not None:
            log.info("record_recovered", failed_for=round(time.time() - since, 1))

    # -- the API ----------------------------------------------------------------------------

    async def record(self, decision: Decision) -> None:
        """Queue one decision (never waits for the disk): a history row when the bot acted on
        it, and the MR's latest verdict for that check whatever the action."""
        self._enqueue(_DecisionWrite(decision, self._latest))

    def _trim(self, sql: str, bound: int) -> None:
        """Every _TRIM_EVERY inserts, cut a table to `bound - _TRIM_EVERY` rows (the newest),
        so it never holds more than `bound`."""
        self._inserts += 1
        if self._inserts % _TRIM_EVERY == 0:
            self._enqueue((sql, (bound - _TRIM_EVERY,)))

    def remember_project(self, project_id: int, path: str) -> None:
        """Remember a project GitLab confirmed (an evaluation read one of its MRs; `path` is
        GitLab's): the sweep covers it after a restart. Synchronous (it only queues); written
        when new, renamed, or not written for an hour."""
        now = time.time()
        if not self._sightings.confirmed(project_id, path, now):
            return
        self._enqueue((_UPSERT_PROJECT, (project_id, _storable(path), now)))
        self._enqueue(("DELETE FROM unconfirmed_projects WHERE project_id = ?", (project_id,)))
        self._trim(_TRIM_PROJECTS, MAX_KNOWN_PROJECTS)

    def remember_delivered(self, project_id: int) -> None:
        """A project id met in an accepted delivery, before GitLab has said anything about it:
        kept apart (no path: the payload's is not trusted), at most MAX_UNCONFIRMED_PROJECTS of
        them (the oldest go), so a kill -9 before its evaluation still leaves it to the next
        start-up sweep, which asks GitLab (`unconfirmed_projects`)."""
        now = time.time()
        if not self._sightings.delivered(project_id, now):
            return
        self._enqueue((_UPSERT_UNCONFIRMED, (project_id, now)))
        self._trim(_TRIM_UNCONFIRMED, MAX_UNCONFIRMED_PROJECTS)

    def forget_project(self, project_id: int) -> None:
        """Stop covering a project (GitLab says it does not exist, or the token cannot see it):
        a forged or stale id must not cost a request in every sweep forever."""
        self._sightings.forget(project_id)
        self._enqueue(("DELETE FROM projects WHERE project_id = ?", (project_id,)))
        self._enqueue(("DELETE FROM unconfirmed_projects WHERE project_id = ?", (project_id,)))

    def drop_unconfirmed(self, project_id: int) -> None:
        """An id from a delivery that GitLab lists no open MR for: nothing to sweep there."""
        self._sightings.unconfirmed_gone(project_id)
        self._enqueue(("DELETE FROM unconfirmed_projects WHERE project_id = ?", (project_id,)))

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        if self._thread is None or self._closed or not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        marker = _Flush(loop, loop.create_future())
        self._queue.put(marker)
        await marker.future

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        """Rows of a read; a database that fails raises StateError (one line, no traceback)."""
        await self.flush()

        def run() -> list[sqlite3.Row]:
            with self._read_lock:
                return self._reader.execute(sql, params).fetchall()

        try:
            rows = await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            self._failed("read", exc)
            raise StateError(
                f"the decision record cannot be read: {_describe(exc)} ({self.path})"
            ) from None
        if self._writer is not None:
            self._succeeded()
        return rows

    async def last_posted(self, project_id: int, iid: int, check: str) -> tuple[str, str] | None:
        """(sha, verdict) of the newest verdict the bot posted for this check of this MR."""
        rows = await self._read(
            "SELECT sha, verdict FROM decisions WHERE project_id = ? AND iid = ? "
            "AND check_name = ? AND action = 'posted' ORDER BY id DESC LIMIT 1",
            (project_id, iid, check),
        )
        return (str(rows[0]["sha"]), str(rows[0]["verdict"])) if rows else None

    async def known_projects(self) -> list[tuple[int, str]]:
        """Every project GitLab confirmed (the bot evaluated an MR of it), as (id, GitLab's
        path), ordered by id."""
        rows = await self._read("SELECT project_id, path FROM projects ORDER BY project_id", ())
        return [(int(r["project_id"]), str(r["path"])) for r in rows]

    async def unconfirmed_projects(self) -> list[int]:
        """Project ids met only in deliveries so far (see `remember_delivered`), by id."""
        rows = await self._read(
            "SELECT project_id FROM unconfirmed_projects ORDER BY project_id", ()
        )
        return [int(r["project_id"]) for r in rows]

    async def history(self, project: int | str, iid: int, limit: int = 50) -> list[dict[str, Any]]:
        """The recorded decisions of one MR, newest first; `project` is an id or a path."""
        columns = f"id, {', '.join(_VERDICT_COLUMNS)}"
        if isinstance(project, int):
            sql = f"SELECT {columns} FROM decisions WHERE project_id = ? AND iid = ?"
        else:
            sql = (
                f"SELECT {columns} FROM decisions WHERE project_path = ? COLLATE NOCASE AND iid = ?"
            )
        rows = await self._read(f"{sql} ORDER BY id DESC LIMIT ?", (project, iid, int(limit)))
        return [row_dict(r) for r in rows]

    async def latest(self, project_id: int, iid: int) -> list[dict[str, Any]]:
        """The last evaluated verdict of each check of one MR, by check name."""
        rows = await self._read(
            f"SELECT {', '.join(_VERDICT_COLUMNS)} FROM latest "
            "WHERE project_id = ? AND iid = ? ORDER BY check_name",
            (project_id, iid),
        )
        return [row_dict(r) for r in rows]

    async def close(self) -> None:
        """Commit what is queued, stop the writer thread, close the connections. Idempotent."""
        if self._closed:
            return
        if self._thread is not None:
            self._queue.put(_STOP)
            self._closed = True
            await asyncio.to_thread(self._thread.join)
        self._closed = True
        with self._read_lock:
            self._reader.close()


async def read_history(
    state_dir: Path, project: int | str, iid: int, limit: int = 50
) -> list[dict[str, Any]]:
    """The `history` command's read: STATE_DIR only, read-only, no writer, no GitLab."""
    record = DecisionRecord.open(state_dir, readonly=True)
    try:
        return await record.history(project, iid, limit)
    finally:
        await record.close()
