"""One sweep per interval for the whole fleet (docs/queue.md#one-sweep-for-the-fleet).

Every replica runs a SweepLeader; the one holding the sweep's lease sweeps. The lease is the
`sweep` row of `bot_leaders` (`leader`, `lease_until`): its holder renews it every RENEW seconds
for LEASE seconds, and any replica takes it once it has run out. So a leader that dies, freezes
(a paused VM, SIGSTOP) or is cut off from PostgreSQL is replaced within LEASE + STANDBY_RETRY
seconds, whatever PostgreSQL knows of its connections. The holder counts its lease from before
it asked for it, by its own clock, so it gives up no later than PostgreSQL gives the lease away:
a renewal that does not answer in time, or finds another holder, cancels the sweep under way,
and the sweep checks the lease before each MR it queues. A graceful stop hands the lease back.

When to sweep is kept in the same row, not in the leader's memory: a new leader sweeps at once
if the last sweep never finished, and otherwise when the interval since it started is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from bot.logs import get_logger
from bot.service.database import DB_ERRORS, Database
from bot.service.sweep import LeaseLost, Sweeper

log = get_logger(__name__)

LEASE = 5.0  # seconds a leader's lease lasts without a renewal
RENEW = 1.0  # seconds between a leader's renewals
STANDBY_RETRY = 1.0  # seconds between a standby's tries for the lease
MIN_GAP = 1.0  # seconds between the end of a sweep and the start of the next, at least

# Take the lease if it is free or has run out, or renew it: a row back means it is ours.
_LEASE = """
INSERT INTO bot_leaders AS l (name, leader, lease_until)
VALUES ('sweep', $1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (name) DO UPDATE SET leader = $1, lease_until = EXCLUDED.lease_until
WHERE l.leader = $1 OR l.leader IS NULL OR l.lease_until IS NULL
    OR l.lease_until < clock_timestamp()
RETURNING true
"""
_RELEASE = (
    "UPDATE bot_leaders SET leader = NULL, lease_until = NULL WHERE name = 'sweep' AND leader = $1"
)
# A sweep that never finished (its leader died, froze or lost the lease; a leader runs no
# sweep while it asks this) is run again MIN_GAP after its start, by whichever leader.
_DUE_IN = """
SELECT CASE
    WHEN started_at IS NULL THEN 0
    WHEN finished_at IS NULL
        THEN extract(epoch FROM started_at + make_interval(secs => $2) - clock_timestamp())
    ELSE extract(epoch FROM greatest(
        started_at + make_interval(secs => $1),
        finished_at + make_interval(secs => $2)) - clock_timestamp())
    END
FROM (SELECT NULL) AS one LEFT JOIN bot_leaders ON name = 'sweep'
"""
# Only while the lease is this replica's (by PostgreSQL's clock).
_STARTED = """
UPDATE bot_leaders SET owner = $1, started_at = clock_timestamp(), finished_at = NULL
WHERE name = 'sweep' AND leader = $1 AND lease_until > clock_timestamp()
"""
_FINISHED = """
UPDATE bot_leaders SET finished_at = clock_timestamp()
WHERE name = 'sweep' AND owner = $1 AND finished_at IS NULL
"""


class SweepLeader:
    """Runs `sweeper` every `interval` seconds while this replica holds the sweep's lease."""

    def __init__(self, db: Database, sweeper: Sweeper, interval: float) -> None:
        self.db = db
        self.sweeper = sweeper
        self.interval = interval
        self.leading = False
        self.sweeps = 0
        self._held_until = 0.0  # time.monotonic() when the lease may have run out
        sweeper.leading = self.holds_lease

    def holds_lease(self) -> bool:
        return time.monotonic() < self._held_until

    async def _take_lease(self) -> bool:
        """Take or renew the lease; False: another replica holds it. A leader's renewal that
        has not answered when its lease may have run out is abandoned (TimeoutError)."""
        sent = time.monotonic()
        limit = self._held_until - sent if self.leading else LEASE
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                ours = await self.db.fetchval(_LEASE, self.db.name, LEASE)
        except BaseException:
            self._held_until = 0.0
            raise
        self._held_until = sent + LEASE if ours else 0.0
        return bool(ours)

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    if await self._take_lease():
                        await self._lead()
                    else:
                        # Another replica sweeps: this one has nothing to wait for at start-up.
                        self.sweeper.swept.set()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # PostgreSQL away or too slow: stand by, try again
                    log.debug("sweep_leader_lost", error=f"{type(exc).__name__}: {exc}")
                    self.sweeper.swept.set()
                finally:
                    self._held_until = 0.0
                    if self.leading:
                        log.info("sweep_leader_stepped_down", replica=self.db.name)
                    self.leading = False
                await asyncio.sleep(STANDBY_RETRY)
        finally:
            # A stop: hand the lease back, so a standby takes over within STANDBY_RETRY.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await self.db.execute(_RELEASE, self.db.name)

    async def _lead(self) -> None:
        self.leading = True
        log.info("sweep_leader", replica=self.db.name)
        while True:
            due_in = float(await self.db.fetchval(_DUE_IN, self.interval, MIN_GAP))
            if due_in > 0:
                self.sweeper.swept.set()
                await asyncio.sleep(min(due_in, RENEW))
                if not await self._take_lease():
                    return
                continue
            if not self.holds_lease():
                return
            if not (await self.db.execute(_STARTED, self.db.name)).endswith(" 1"):
                return
            if not await self._sweep():
                return
            self.sweeps += 1
            await self.db.execute(_FINISHED, self.db.name)

    async def _sweep(self) -> bool:
        """One sweep, renewing the lease meanwhile; False: the lease was lost and the sweep
        cancelled (the next leader runs it again at once: it never finished)."""
        sweep = asyncio.create_task(self.sweeper.sweep_once(), name="sweep-once")
        try:
            while not sweep.done():
                wait = min(RENEW, self._held_until - time.monotonic())
                await asyncio.wait({sweep}, timeout=max(wait, 0.0))
                if sweep.done():
                    break
                if not await self._take_lease():
                    log.warning("sweep_lease_lost", replica=self.db.name)
                    return False
        finally:
            if not sweep.done():
                sweep.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await sweep
        try:
            sweep.result()
        except asyncio.CancelledError:
            return False
        except LeaseLost:
            log.warning("sweep_lease_lost", replica=self.db.name)
            return False
        except DB_ERRORS:
            raise
        except Exception:
            log.exception("sweep_crashed")
        return True
