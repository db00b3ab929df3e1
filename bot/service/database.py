"""The connection to PostgreSQL (DATABASE_URL): a pool, the schema, health, notifications.

Why asyncpg: the service is asyncio through and through, and asyncpg is the mature asyncio
driver (no libpq to install in the image, a pool, LISTEN/NOTIFY callbacks, `executemany`
pipelined in one round trip). docs/queue.md weighs it against psycopg 3.

Health: every caller reports what happened (`ok()`/`failed()`); the first failure is logged
once with what it means, the recovery once, and /readyz shows the problem meanwhile. Nothing
here crashes the process when PostgreSQL restarts or cannot be reached: the pool makes new
connections when asked, and the callers retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from bot.config import database_passwords, masked_url
from bot.logs import get_logger
from bot.service.schema import SchemaError, migrate

log = get_logger(__name__)

# What a lost or refused connection raises (a restart, a network cut, a full server).
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-operation by a cut
    OSError,
    ConnectionError,
    TimeoutError,
)
# SQLSTATEs of a server that is going away or cannot take a connection now: admin_shutdown,
# crash_shutdown, cannot_connect_now (a restart), too_many_connections (a full server).
_UNREACHABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says PostgreSQL cannot be reached now (waiting cures it), as opposed to an
    answer about the statement itself (a value it cannot store, a limit, a bug): only the former
    may hold a delivery for later, or be shown as "PostgreSQL is unreachable"."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith("08") or state in _UNREACHABLE_STATES
    return isinstance(
        exc, (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
    )


def data_error(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a statement for the values it was given (SQLSTATE class 22,
    data exception, or 54, program limit exceeded): the same values fail the same way again."""
    state = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and state[:2] in ("22", "54")


WORK_CHANNEL = "bot_work"
# A Push Hook moved a branch: every replica forgets its head (README "Running more than one").
BRANCH_CHANNEL = "bot_branch_moved"
CHANNELS = (WORK_CHANNEL, BRANCH_CHANNEL)
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
START_WAIT = 30.0  # seconds `serve` waits for PostgreSQL at start before giving up


async def _no_reset(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is (see Database.open)."""


class DatabaseError(Exception):
    """PostgreSQL cannot be used at start; the message is the one line the operator sees."""


def replica_name() -> str:
    """This process's name in leases and logs: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def describe(exc: BaseException, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`Type: message`, one line's worth, with any of `secrets` (the URL's passwords) masked."""
    text = str(exc).strip() or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"[:300]


class Database:
    """One pool per process, shared by the queue, the record and the sweep's leader."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.shown_url = masked_url(url)
        self._secrets = tuple(database_passwords(url))  # never in a message, whatever the error
        self.pool_size = pool_size
        self.name = replica_name()
        self.pool: asyncpg.Pool | None = None
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_notify: dict[str, list[Callable[[str], None]]] = {c: [] for c in CHANNELS}
        self.on_change: Callable[[bool], None] | None = None  # metrics: up (True) or down

    def describe(self, exc: BaseException) -> str:
        return describe(exc, self._secrets)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, wait: float = START_WAIT, migrate_schema: bool = True) -> None:
        """Connect and migrate the schema, retrying for up to `wait` seconds while PostgreSQL
        cannot be reached; raise DatabaseError (one line) after that or on a refusal that
        waiting cannot cure (bad password, unknown database, a schema too new)."""
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            try:
                self.pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                    # No session state to clear (advisory locks and LISTEN use connections of
                    # their own): asyncpg's default reset is a round trip per statement.
                    reset=_no_reset,
                )
                applied = []
                async with self.pool.acquire() as conn:
                    if migrate_schema:
                        applied = await migrate(conn)
                    else:
                        await conn.fetchval("SELECT 1")
                if applied:
                    log.info("database_migrated", versions=applied, database=self.shown_url)
                break
            except SchemaError as exc:
                await self._close_pool()
                raise DatabaseError(str(exc)) from None
            except (
                asyncpg.InvalidPasswordError,
                asyncpg.InvalidCatalogNameError,
                asyncpg.InsufficientPrivilegeError,
                asyncpg.InvalidAuthorizationSpecificationError,
            ) as exc:
                await self._close_pool()
                raise DatabaseError(
                    f"PostgreSQL refuses DATABASE_URL {self.shown_url!r}: {self.scrub(str(exc))}"
                ) from None
            except DB_ERRORS as exc:
                await self._close_pool()
                if time.monotonic() + delay > deadline:
                    raise DatabaseError(
                        f"PostgreSQL at DATABASE_URL {self.shown_url!r} cannot be reached "
                        f"({self.describe(exc)}); started without it for {wait:g} s"
                    ) from None
                log.warning("database_waiting", error=self.describe(exc), database=self.shown_url)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
        if migrate_schema:  # a service, not a one-shot reader: it listens for work
            self._listen_task = asyncio.create_task(self._listen_forever(), name="database-listen")

    async def _close_pool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5)

    async def close(self) -> None:
        self._closing = True  # the listener ends by itself too (see PgQueue._dispatch)
        if self._listen_task is not None:
            self._listen_task.cancel()
            # Bounded: a cancelled asyncpg connect must not hold up the stop.
            await asyncio.wait({self._listen_task}, timeout=3)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 5)
            except Exception:
                self.pool.terminate()
            self.pool = None

    # -- health ------------------------------------------------------------------------------

    def ok(self) -> None:
        if self.down_since is None:
            return
        since, self.down_since = self.down_since, None
        log.info("database_recovered", down_for=round(time.time() - since, 1))
        if self.on_change is not None:
            self.on_change(True)

    def failed(self, exc: BaseException, during: str) -> None:
        self.last_error = self.describe(exc)
        if self.down_since is not None:
            log.debug("database_failed_again", during=during, error=self.last_error)
            return
        self.down_since = time.time()
        log.error(
            "database_unreachable",
            during=during,
            error=self.last_error,
            database=self.shown_url,
            effect="no evaluation starts until PostgreSQL answers again; webhook deliveries are "
            "held in this process's memory and queued when it does (README, Running more than "
            "one)",
        )
        if self.on_change is not None:
            self.on_change(False)

    def problem(self) -> str | None:
        if self.down_since is None:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.down_since))
        return f"PostgreSQL is unreachable since {since}: {self.last_error}"

    # -- statements --------------------------------------------------------------------------

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise asyncpg.InterfaceError("the database pool is closed")
        return self.pool

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return list(await self._pool().fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._pool().fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._pool().fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return str(await self._pool().execute(sql, *args))

    # -- notifications -----------------------------------------------------------------------

    def on_notify(self, callback: Callable[[str], None], channel: str = WORK_CHANNEL) -> None:
        """Call `callback(payload)` for each notification on `channel` (one of CHANNELS), and
        with "" after each (re)connection of the listener: notifications may have been missed."""
        self._on_notify[channel].append(callback)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        for callback in self._on_notify.get(channel, ()):
            callback(payload)

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every replica (this one too) listening on `channel`."""
        await self.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def _listen_forever(self) -> None:
        """Keep one connection LISTENing; reconnect after a restart (the queue polls meanwhile,
        and wakes once, in case a notification was missed)."""
        delay = 0.5
        while not self._closing:
            try:
                conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
                self._listener = conn
                for channel in CHANNELS:
                    await conn.add_listener(channel, self._notified)
                delay = 0.5
                for channel in CHANNELS:
                    self._notified(conn, 0, channel, "")
                while not conn.is_closed() and not self._closing:
                    await asyncio.sleep(2.0)
                    with contextlib.suppress(*DB_ERRORS):
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                        continue
                    break
                with contextlib.suppress(Exception):
                    conn.terminate()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.debug("database_listen_failed", error=self.describe(exc))
            self._listener = None
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
