"""The live policy set: loaded at start, reloaded on SIGHUP or when files change.

A reload that brings a broken file keeps the last good set serving and logs every problem with
its file and line, so a typo in a policy never turns every check red. The store remembers since
when the files on disk are broken (for /readyz and /metrics) until a reload succeeds.

Reloads run in a worker thread, never on the event loop (a policy file is compiled in pure
Python), with a time budget: a reload slower than it is reported (`policy_reload_slow`) and
counted as broken while it runs, and its result still applies when it ends. The watcher survives
anything a folder can hold: whatever goes wrong is logged once per poll and polling goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from bot.logs import get_logger
from bot.policy import load_policy_dir
from bot.policy.model import PolicyLoadError, PolicySet

log = get_logger(__name__)

RELOAD_BUDGET = 10.0  # seconds a reload may take before it is reported as slow
MAX_REPORTED_PROBLEMS = 20


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of everything under the folder: cheap to poll."""
    entries = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.rglob("*")):
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class PolicyStore:
    """Holds the current PolicySet; `current` is what evaluations read."""

    def __init__(self, folder: Path, *, reload_budget: float = RELOAD_BUDGET) -> None:
        self.folder = folder
        self.reload_budget = reload_budget
        self.current = PolicySet()
        self.loaded = False
        self.last_error: PolicyLoadError | None = None
        # Since when (wall clock) the files on disk do not load, and why; None when they do.
        self.broken_since: float | None = None
        self.problems: list[str] = []
        self.on_reload: Callable[[str], None] | None = None  # outcome: loaded/unchanged/...
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self._lock: asyncio.Lock | None = None
        self._hup: asyncio.Task[bool] | None = None

    def load(self) -> PolicySet:
        """Load strictly (start-up): raises PolicyLoadError, or ConfigError-like OSError."""
        self._fingerprint = _fingerprint(self.folder)
        self.current = load_policy_dir(self.folder)
        self.loaded = True
        self.last_error = None
        return self.current

    def _read(self) -> tuple[tuple[tuple[str, int, int], ...], PolicySet | Exception]:
        """Fingerprint and load the folder (in a worker thread when reloading)."""
        fingerprint = _fingerprint(self.folder)
        try:
            return fingerprint, load_policy_dir(self.folder)
        except Exception as exc:  # PolicyLoadError, OSError, or a gap in the loader's checks
            return fingerprint, exc

    def reload(self) -> bool:
        """Load again, here and now; on any problem keep the last good set. Returns True when
        the set changed."""
        fingerprint, result = self._read()
        return self._apply(fingerprint, result)

    async def reload_in_thread(self) -> bool:
        """`reload` in a worker thread, off the event loop, one at a time; a reload slower than
        the budget is reported (and the set counted as broken) while it goes on."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(self._read))
            started = time.monotonic()
            try:
                fingerprint, result = await asyncio.wait_for(
                    asyncio.shield(work), self.reload_budget
                )
            except TimeoutError:
                message = (
                    f"{self.folder}: reloading takes longer than {self.reload_budget:g} s "
                    "(the last good set serves meanwhile)"
                )
                log.error("policy_reload_slow", folder=str(self.folder), budget=self.reload_budget)
                self._broken([message], "slow")
                fingerprint, result = await work
                log.info("policy_reload_finished", seconds=round(time.monotonic() - started, 3))
            return self._apply(fingerprint, result)

    def request_reload(self) -> None:
        """SIGHUP: reload in a worker thread soon (a signal handler must not block the loop)."""
        if self._hup is None or self._hup.done():
            self._hup = asyncio.get_running_loop().create_task(self.reload_in_thread())
            self._hup.add_done_callback(_log_failure)

    def _broken(self, problems: list[str], outcome: str) -> None:
        if self.broken_since is None:
            self.broken_since = time.time()
        self.problems = problems[:MAX_REPORTED_PROBLEMS]
        if self.on_reload is not None:
            self.on_reload(outcome)

    def _apply(
        self, fingerprint: tuple[tuple[str, int, int], ...], result: PolicySet | Exception
    ) -> bool:
        self._fingerprint = fingerprint
        if isinstance(result, Exception):
            if isinstance(result, PolicyLoadError):
                self.last_error = result
                problems = [str(p) for p in result.problems]
            else:
                problems = [f"{self.folder}: {type(result).__name__}: {result}"]
            log.error(
                "policy_reload_failed",
                problems=problems[:MAX_REPORTED_PROBLEMS],
                count=len(problems),
                serving=self.current.digest[:12],
            )
            self._broken(problems, "failed")
            return False
        policies = result
        recovered = self.last_error is not None or self.broken_since is not None
        self.last_error = None
        self.broken_since = None
        self.problems = []
        if policies.digest == self.current.digest:
            if recovered:
                log.info("policies_restored", digest=policies.digest[:12])
            if self.on_reload is not None:
                self.on_reload("unchanged")
            return False
        self.current = policies
        self.loaded = True
        log.info(
            "policies_loaded",
            checks=sorted(p.check for p in policies.policies),
            digest=policies.digest[:12],
        )
        if self.on_reload is not None:
            self.on_reload("loaded")
        return True

    def changed_on_disk(self) -> bool:
        return _fingerprint(self.folder) != self._fingerprint

    async def watch(self, interval: float) -> None:
        """Poll the folder; reload (in a thread) when anything in it changed. Nothing a folder
        holds stops the polling: a failure is logged and the next poll tries again."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(self.changed_on_disk):
                    await self.reload_in_thread()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("policy_watch_failed", error=f"{type(exc).__name__}: {exc}"[:500])


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("policy_reload_crashed", error=f"{type(exc).__name__}: {exc}"[:500])
