"""The live policy set: loaded at start, reloaded on SIGHUP or when files change.

A reload that brings a broken file keeps the last good set serving and logs every problem with
its file and line, so a typo in a policy never turns every check red.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bot.logs import get_logger
from bot.policy import load_policy_dir
from bot.policy.model import PolicyLoadError, PolicySet

log = get_logger(__name__)


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

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current = PolicySet()
        self.loaded = False
        self.last_error: PolicyLoadError | None = None
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()

    def load(self) -> PolicySet:
        """Load strictly (start-up): raises PolicyLoadError, or ConfigError-like OSError."""
        self._fingerprint = _fingerprint(self.folder)
        self.current = load_policy_dir(self.folder)
        self.loaded = True
        self.last_error = None
        return self.current

    def reload(self) -> bool:
        """Load again; on any problem keep the last good set. Returns True when the set changed."""
        self._fingerprint = _fingerprint(self.folder)
        try:
            policies = load_policy_dir(self.folder)
        except PolicyLoadError as exc:
            self.last_error = exc
            log.error(
                "policy_reload_failed",
                problems=[str(p) for p in exc.problems],
                serving=self.current.digest[:12],
            )
            return False
        except OSError as exc:
            log.error("policy_reload_failed", problems=[str(exc)], serving=self.current.digest[:12])
            return False
        recovered = self.last_error is not None
        self.last_error = None
        if policies.digest == self.current.digest:
            if recovered:
                log.info("policies_restored", digest=policies.digest[:12])
            return False
        self.current = policies
        self.loaded = True
        log.info(
            "policies_loaded",
            checks=sorted(p.check for p in policies.policies),
            digest=policies.digest[:12],
        )
        return True

    def changed_on_disk(self) -> bool:
        return _fingerprint(self.folder) != self._fingerprint

    async def watch(self, interval: float) -> None:
        """Poll the folder; reload when anything in it changed."""
        while True:
            await asyncio.sleep(interval)
            if self.changed_on_disk():
                self.reload()
