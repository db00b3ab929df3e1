"""One sweep per interval for the whole fleet (docs/queue.md#one-sweep-for-the-fleet).

Every replica runs a SweepLeader; the one holding a session-level advisory lock sweeps. The
lock lives on a connection of its own, so it goes the moment that replica dies (the server
sees the connection close) and a standby takes it within STANDBY_RETRY seconds. When to sweep
is kept in `bot_leaders`, not in the leader's memory: a new leader sweeps at once if the last
sweep never finished, and otherwise when the interval since it started is over.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from bot.logs import get_logger
from bot.service.database import CONNECT_TIMEOUT, DB_ERRORS, Database
from bot.service.sweep import Sweeper

log = get_logger(__name__)

SWEEP_LOCK = 0x626F742D7377  # pg_try_advisory_lock key of the sweep ("bot-sw" as a number)
STANDBY_RETRY = 1.0  # seconds between a standby's tries for the lock
MIN_GAP = 1.0  # seconds between the end of a sweep and the start of the next, at least

_DUE_IN = """
SELECT CASE
    WHEN started_at IS NULL THEN 0
    WHEN finished_at IS NULL AND owner IS DISTINCT FROM $2 THEN 0
    ELSE extract(epoch FROM greatest(
        started_at + make_interval(secs => $1),
        coalesce(finished_at, started_at) + make_interval(secs => $3)) - clock_timestamp())
    END
FROM (SELECT NULL) AS one LEFT JOIN bot_leaders ON name = 'sweep'
"""
_STARTED = """
INSERT INTO bot_leaders (name, owner, started_at, finished_at)
VALUES ('sweep', $1, clock_timestamp(), NULL)
ON CONFLICT (name) DO UPDATE SET owner = $1, started_at = clock_timestamp(), finished_at = NULL
"""
_FINISHED = "UPDATE bot_leaders SET finished_at = clock_timestamp() WHERE name = 'sweep'"


class SweepLeader:
    """Runs `sweeper` every `interval` seconds while this replica holds the sweep's lock."""

    def __init__(self, db: Database, sweeper: Sweeper, interval: float) -> None:
        self.db = db
        self.sweeper = sweeper
        self.interval = interval
        self.leading = False
        self.sweeps = 0

    async def run_forever(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.db.url, timeout=CONNECT_TIMEOUT)
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK):
                    await self._lead(conn)
                else:
                    # Another replica sweeps: this one has nothing to wait for at start-up.
                    self.sweeper.swept.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away or anything else: stand by, try again
                log.debug("sweep_leader_lost", error=f"{type(exc).__name__}: {exc}")
                self.sweeper.swept.set()
            finally:
                if self.leading:
                    log.info("sweep_leader_stepped_down", replica=self.db.name)
                self.leading = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(STANDBY_RETRY)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        self.leading = True
        log.info("sweep_leader", replica=self.db.name)
        while True:
            due_in = float(await conn.fetchval(_DUE_IN, self.interval, self.db.name, MIN_GAP))
            if due_in > 0:
                self.sweeper.swept.set()
                # Wake now and then to notice a lost connection (the lock went with it).
                await asyncio.sleep(min(due_in, STANDBY_RETRY))
                await conn.fetchval("SELECT 1")
                continue
            await conn.execute(_STARTED, self.db.name)
            try:
                await self.sweeper.sweep_once()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS:
                raise
            except Exception:
                log.exception("sweep_crashed")
            self.sweeps += 1
            await conn.execute(_FINISHED)
