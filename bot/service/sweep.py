"""The reconciliation sweep: webhooks get lost, people post statuses by hand,
the bot restarts mid-burst — so at start-up and every RECONCILE_INTERVAL every open MR of every
project the bot serves is evaluated again, and whatever GitLab shows wrongly is repaired
(docs/architecture.md#reconcile-against-gitlabs-list).

The sweep feeds the queue's background lane, which workers drain only when no delivery waits, and
paces itself to a request budget so it never eats GitLab's rate limit or starves webhook work.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from bot.gitlab.client import GitLab, GitLabError, RequestBudget
from bot.keys import Hint, MRKey
from bot.logs import get_logger
from bot.service.pgqueue import PgQueue
from bot.service.queue import CoalescingQueue

log = get_logger(__name__)

# Requests one sweep evaluation costs before its optional facts: the MR and its status checks.
BASE_REQUESTS_PER_EVALUATION = 2


class LeaseLost(Exception):
    """The fleet's sweep leader no longer holds its lease: this sweep stops (leader.py)."""


@dataclass
class SweepReport:
    projects: int = 0
    merge_requests: int = 0
    list_requests: int = 0
    failed_projects: list[str] = field(default_factory=list)
    repaired: int = 0
    tampered: int = 0
    duration: float = 0.0


class Sweeper:
    """Finds the open MRs of every served project and queues them for background evaluation."""

    def __init__(
        self,
        gitlab: GitLab,
        queue: CoalescingQueue[MRKey] | PgQueue[MRKey],
        *,
        configured: Iterable[str],
        remembered: Callable[[], Awaitable[Iterable[tuple[int, str]]]] | None = None,
        budget: float = 5.0,
        requests_per_evaluation: Callable[[], int] = lambda: BASE_REQUESTS_PER_EVALUATION,
        max_backlog: int = 64,
        on_finished: Callable[[SweepReport], None] | None = None,
        forget: Callable[[int], None] | None = None,
        unconfirmed: Callable[[], Awaitable[Iterable[int]]] | None = None,
        drop_unconfirmed: Callable[[int], None] | None = None,
    ) -> None:
        self.gitlab = gitlab
        self.queue = queue
        self.configured = tuple(configured)
        self.remembered = remembered
        # Projects found under a configured path (so the path and its id are swept once).
        self.seen: dict[int, str] = {}
        # The sweep's share of GitLab: never more than the budget of every call together
        # (GITLAB_RATE_LIMIT), which also paces each request the sweep's evaluations make.
        overall = gitlab.rate_limit
        self.budget = min(budget, overall) if overall > 0 else budget
        self._pace = RequestBudget(self.budget)
        self.requests_per_evaluation = requests_per_evaluation
        self.max_backlog = max_backlog
        self.on_finished = on_finished
        self.forget = forget
        # Ids met only in deliveries (possibly forged): swept once GitLab lists MRs for them.
        self.unconfirmed = unconfirmed
        self.drop_unconfirmed = drop_unconfirmed
        self._unconfirmed: set[int] = set()
        self.current: SweepReport | None = None
        self.sweeps = 0
        self.swept = asyncio.Event()  # set once the first sweep (the start-up one) is done
        self._submitted: set[MRKey] = set()
        # With DATABASE_URL: whether this replica still holds the sweep's lease (leader.py),
        # asked before each MR is queued; None: one process, always.
        self.leading: Callable[[], bool] | None = None

    async def projects(self) -> list[int | str]:
        """Configured projects, every project GitLab confirmed (now or before a restart), and
        the ids met only in deliveries. Only a path GitLab gave stands for a configured path:
        a delivery (which anyone may forge) cannot take a configured project's place."""
        known: dict[int, str] = dict(self.seen)
        unconfirmed: set[int] = set()
        try:
            if self.remembered is not None:
                for project_id, path in await self.remembered():
                    known.setdefault(int(project_id), path)
            if self.unconfirmed is not None:
                unconfirmed = {int(p) for p in await self.unconfirmed()} - set(known)
        except Exception as exc:
            log.error("sweep_remembered_projects_unreadable", error=f"{type(exc).__name__}: {exc}")
        chosen: list[int | str] = []
        paths = {path for path in known.values() if path}
        for item in self.configured:
            if item.isdigit():
                if int(item) not in known:
                    chosen.append(int(item))
                    unconfirmed.discard(int(item))
            elif item not in paths:
                chosen.append(item)
        chosen.extend(sorted(known))
        chosen.extend(sorted(unconfirmed))
        self._unconfirmed = unconfirmed
        return chosen

    async def run_forever(self, interval: float) -> None:
        """Sweep now, then again `interval` seconds after each sweep starts (or ends, if later)."""
        while True:
            started = time.monotonic()
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_crashed")
                self.swept.set()
            await asyncio.sleep(max(1.0, interval - (time.monotonic() - started)))

    async def sweep_once(self) -> SweepReport:
        report = SweepReport()
        self.current = report
        self._submitted = set()
        started = time.monotonic()
        self._pace.restart()
        for project in await self.projects():
            await self._sweep_project(project, report)
        await self._drain()
        report.duration = time.monotonic() - started
        self.sweeps += 1
        self.swept.set()
        self.current = None
        log.info(
            "sweep_finished",
            projects=report.projects,
            merge_requests=report.merge_requests,
            list_requests=report.list_requests,
            repaired=report.repaired,
            tampered=report.tampered,
            failed_projects=report.failed_projects,
            duration=round(report.duration, 3),
        )
        if self.on_finished is not None:
            self.on_finished(report)
        return report

    async def _sweep_project(self, project: int | str, report: SweepReport) -> None:
        await self._spend(1)
        try:
            merge_requests = await self.gitlab.open_merge_requests(project)
        except GitLabError as exc:
            report.failed_projects.append(str(project))
            log.warning("sweep_project_failed", project=str(project), advice=exc.advice())
            if (
                exc.status == 404
                and isinstance(project, int)
                and str(project) not in self.configured
            ):
                # Met only in a delivery (which may have been forged) and unknown to GitLab.
                self.seen.pop(project, None)
                if self.forget is not None:
                    self.forget(project)
                log.info("sweep_project_forgotten", project=project)
            return
        report.projects += 1
        report.list_requests += max(1, -(-len(merge_requests) // 100))
        if not merge_requests and project in self._unconfirmed:
            # GitLab knows the id but lists no open MR: nothing to heal there (a delivery for
            # it brings it back).
            self._unconfirmed.discard(project)
            if self.drop_unconfirmed is not None:
                self.drop_unconfirmed(project)
        for mr in merge_requests:
            try:
                key = MRKey(int(mr["project_id"]), int(mr["iid"]))
            except (KeyError, TypeError, ValueError):
                continue
            path = _project_path(mr, project)
            if isinstance(project, str) and path:
                self.seen.setdefault(key.project_id, path)
            await self.queue.wait_background_below(self.max_backlog)
            await self._spend(self.requests_per_evaluation())
            if self.leading is not None and not self.leading():
                raise LeaseLost(f"lost the sweep's lease at project {project}")
            accepted = self.queue.submit_background(
                key,
                Hint(
                    trigger="sweep",
                    project_path=path,
                    target_branch=mr.get("target_branch"),
                    source_branch=mr.get("source_branch"),
                    sha=mr.get("sha"),
                ),
            )
            if inspect.isawaitable(accepted):  # PgQueue commits it (DATABASE_URL)
                await accepted
            report.merge_requests += 1
            self._submitted.add(key)

    async def _spend(self, requests: int) -> None:
        """Token-bucket pacing: `requests` more may start no sooner than the budget allows."""
        await self._pace.spend(requests)

    async def _drain(self) -> None:
        """Wait until the sweep's evaluations are done so the report covers the whole sweep."""
        await self.queue.wait_for(self._submitted)
        self._submitted = set()

    def count_repair(self, *, tampered: bool) -> None:
        if self.current is not None:
            self.current.repaired += 1
            self.current.tampered += int(tampered)


def _project_path(mr: dict, project: int | str) -> str | None:
    references = mr.get("references")
    if isinstance(references, dict):
        full = references.get("full")
        if isinstance(full, str) and "!" in full:
            return full.rsplit("!", 1)[0]
    web_url = mr.get("web_url")
    if isinstance(web_url, str) and "/-/merge_requests/" in web_url:
        base = web_url.split("/-/merge_requests/", 1)[0]
        parts = base.split("/", 3)
        if len(parts) == 4:
            return parts[3]
    return project if isinstance(project, str) else None
