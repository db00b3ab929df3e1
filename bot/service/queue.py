"""Per-MR coalescing queue and its bounded worker pool (docs/architecture.md#one-evaluation-per-mr).

The queue holds at most one entry per key however many deliveries arrive, and a key is never
evaluated twice at once: a burst for one MR while it is queued or running results in at most one
more evaluation, of the newest state. Handlers return a delay after which the key should be looked
at again (a moved head, a transient GitLab fault, a freeze window opening), or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from bot.logs import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
Handler = Callable[[K, Any], Awaitable[float | None]]


class CoalescingQueue(Generic[K]):
    """A FIFO of distinct keys with the newest hint per key, drained by `workers` tasks.

    A key's turn is fixed by the first delivery that asks for it since it last started: further
    deliveries only replace its hint, so a busy MR is never pushed behind MRs that arrived after
    it. A key waiting out `min_interval` (cooling) or running keeps the turn of that first
    delivery too, and is taken in that turn once it may run."""

    def __init__(self, handler: Handler[K], *, workers: int = 8, min_interval: float = 0.0) -> None:
        self._handler = handler
        self._workers = workers
        # Two evaluations of one MR start at least this far apart: a stream of deliveries (a
        # pipeline's job events, a busy review) is judged a few times, not once per delivery.
        # The first delivery for an MR not evaluated lately still runs at once.
        self._min_interval = min_interval
        self._last_start: dict[K, float] = {}
        self._cooling: dict[K, Any] = {}  # waiting out min_interval; newest hint
        self._pending: dict[K, Any] = {}  # queued, not yet started; newest hint
        # A key's turn: a number drawn when its first delivery since it last started arrives
        # (while queued, cooling or running). `_ready` orders the pending keys by it (a heap;
        # entries of keys taken since are skipped).
        self._turns: dict[K, int] = {}
        self._ready: list[tuple[int, K]] = []
        self._counter = itertools.count()
        # The reconciliation sweep's lane: drained only when no delivery is waiting, so a sweep
        # of thousands of MRs never delays a webhook.
        self._background: dict[K, Any] = {}
        self._running: set[K] = set()
        self._rerun: dict[K, Any] = {}  # arrived while running: run once more afterwards
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()  # set whenever work is taken or finished
        self._accepting = True
        self.evaluations = 0

    # -- producers --------------------------------------------------------------------------

    def submit(self, key: K, hint: Any = None) -> bool:
        """Ask for `key` to be evaluated; returns False when the queue no longer accepts work."""
        if not self._accepting:
            return False
        if key in self._running:
            self._rerun[key] = hint
            self._turn(key)
        elif key in self._cooling:
            self._cooling[key] = hint  # keeps its turn
        elif key in self._pending:
            self._pending[key] = hint  # keeps its place: only the hint is newer
        elif (wait := self._cooldown(key)) > 0:
            self._background.pop(key, None)
            self._cooling[key] = hint
            self._turn(key)
            self._idle.clear()
            asyncio.get_running_loop().call_later(wait, self._cooled, key)
        else:
            # New, or promoted from the background lane: its turn starts with this delivery.
            self._background.pop(key, None)
            self._enqueue(key, hint)
        return True

    def _cooldown(self, key: K) -> float:
        started = self._last_start.get(key)
        if started is None or not self._min_interval:
            return 0.0
        return started + self._min_interval - asyncio.get_running_loop().time()

    def _turn(self, key: K) -> int:
        """The key's turn, drawn now unless a delivery since its last start already drew it."""
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = next(self._counter)
        return turn

    def _enqueue(self, key: K, hint: Any) -> None:
        self._pending[key] = hint
        heapq.heappush(self._ready, (self._turn(key), key))
        self._idle.clear()
        self._wakeup.set()

    def _cooled(self, key: K) -> None:
        if key in self._cooling and self._accepting:
            self._enqueue(key, self._cooling.pop(key))

    def submit_background(self, key: K, hint: Any = None) -> bool:
        """Evaluate `key` when no delivery is waiting; a no-op if it is already queued or running
        (that evaluation reads the same current state)."""
        if not self._accepting:
            return False
        if self.is_busy(key):
            return True
        self._background.pop(key, None)
        self._background[key] = hint
        self._idle.clear()
        self._wakeup.set()
        return True

    def submit_later(self, key: K, delay: float, hint: Any = None) -> None:
        """Evaluate `key` again after `delay` seconds; replaces any earlier timer for it."""
        self.cancel_timer(key)
        if not self._accepting:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire_timer, key, hint)

    def cancel_timer(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _fire_timer(self, key: K, hint: Any) -> None:
        self._timers.pop(key, None)
        self.submit(key, hint)

    # -- introspection ----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Keys waiting to be evaluated (queued or waiting to re-run), not counting timers."""
        return len(self._pending) + len(self._rerun) + len(self._background) + len(self._cooling)

    @property
    def background_depth(self) -> int:
        return len(self._background)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def scheduled(self) -> int:
        return len(self._timers)

    def is_busy(self, key: K) -> bool:
        return (
            key in self._pending
            or key in self._running
            or key in self._rerun
            or key in self._background
            or key in self._cooling
        )

    async def wait_background_below(self, limit: int) -> None:
        """Wait until fewer than `limit` keys wait in the background lane."""
        while len(self._background) >= limit and self._accepting:
            self._progress.clear()
            await self._progress.wait()

    async def wait_for(self, keys: set[K]) -> None:
        """Wait until none of `keys` is queued or running any more."""
        remaining = {key for key in keys if self.is_busy(key)}
        while remaining and self._accepting:
            self._progress.clear()
            await self._progress.wait()
            remaining = {key for key in remaining if self.is_busy(key)}

    async def join(self) -> None:
        """Wait until nothing is queued or running (timers may still be set)."""
        await self._idle.wait()

    # -- workers ----------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"evaluation-worker-{n}")
            for n in range(self._workers)
        ]

    async def stop(self, deadline: float = 10.0) -> int:
        """Stop taking work, let running evaluations finish up to `deadline`; return keys left."""
        self._accepting = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        abandoned = (
            len(self._pending) + len(self._rerun) + len(self._background) + len(self._cooling)
        )
        self._pending.clear()
        self._ready.clear()
        self._turns.clear()
        self._rerun.clear()
        self._background.clear()
        self._cooling.clear()
        self._progress.set()
        if not self._running:
            self._idle.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                await self._idle.wait()
        abandoned += len(self._running)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._idle.set()
        return abandoned

    def _take(self) -> tuple[K, Any] | None:
        while self._ready:
            turn, key = heapq.heappop(self._ready)
            if key in self._pending and self._turns.get(key) == turn:
                del self._turns[key]
                self._progress.set()
                return key, self._pending.pop(key)
        if self._background:
            key = next(iter(self._background))
            self._progress.set()
            return key, self._background.pop(key)
        return None

    def _note_start(self, key: K) -> None:
        now = asyncio.get_running_loop().time()
        self._last_start.pop(key, None)
        self._last_start[key] = now
        # Bounded: entries older than min_interval no longer matter (oldest first).
        while self._last_start:
            oldest, started = next(iter(self._last_start.items()))
            if now - started < self._min_interval:
                break
            del self._last_start[oldest]

    async def _worker(self) -> None:
        while True:
            item = self._take()
            if item is None:
                if not self._running and not self._rerun and not self._cooling:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, hint = item
            self._running.add(key)
            if self._min_interval:
                self._note_start(key)
            delay: float | None = None
            try:
                self.evaluations += 1
                delay = await self._handler(key, hint)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A handler bug must not take a worker down; the sweep will look again.
                log.exception("evaluation_crashed", key=str(key))
            finally:
                self._running.discard(key)
                self._progress.set()
            if key in self._rerun:
                self.cancel_timer(key)
                self.submit(key, self._rerun.pop(key))
            elif delay is not None and delay <= 0:
                self.cancel_timer(key)
                self.submit(key, hint)
            elif delay is not None and self._accepting:
                self.submit_later(key, delay, hint)
            elif delay is None:
                self.cancel_timer(key)
