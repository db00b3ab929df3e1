"""sweep.py on its own: a `Sweeper` with a real GitLab client against the fake GitLab over HTTP,
feeding a real `CoalescingQueue` whose handler records what it is given. How fast it lists and
queues (its request budget), which projects it sweeps and which it forgets, and that its work
waits in the queue's background lane behind deliveries.

(tests/e2e/test_reliability.py runs the sweep inside the bot; these tests drive it directly.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bot.gitlab.client import GitLab
from bot.keys import Hint, MRKey
from bot.service.queue import CoalescingQueue
from bot.service.sweep import Sweeper
from tests.builders import seed_mr, seed_project
from tests.conftest import TOKEN, eventually
from tests.fakegitlab import FakeGitLab


@dataclass
class Handled:
    """What the queue's workers were given, in order, and when."""

    keys: list[MRKey] = field(default_factory=list)
    hints: dict[MRKey, Hint] = field(default_factory=dict)
    at: list[float] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # the first key waits for it
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    background: list[int] = field(default_factory=list)  # background depth at each start


@pytest.fixture
async def client(gitlab: FakeGitLab) -> AsyncIterator[GitLab]:
    async with aiohttp.ClientSession() as session:
        yield GitLab(session, url=gitlab.url, token=TOKEN, timeout=2.0, max_attempts=1)


@pytest.fixture
async def queue() -> AsyncIterator[tuple[CoalescingQueue[MRKey], Handled]]:
    handled = Handled()
    handled.gate.set()

    async def handler(key: MRKey, hint: Any) -> None:
        handled.keys.append(key)
        handled.hints[key] = hint
        handled.at.append(time.monotonic())
        handled.background.append(work.background_depth)
        handled.entered.set()
        await handled.gate.wait()

    work: CoalescingQueue[MRKey] = CoalescingQueue(handler, workers=1)
    work.start()
    yield work, handled
    await work.stop(deadline=1.0)


def seed_open_mrs(gitlab: FakeGitLab, count: int) -> None:
    seed_project(gitlab)
    for iid in range(1, count + 1):
        seed_mr(gitlab, iid=iid, sha=f"{iid:040x}", source_branch=f"b{iid}")


def sweeper(
    client: GitLab,
    work: CoalescingQueue[MRKey],
    *,
    configured: Iterable[str] = ("acme/app",),
    **kw: Any,
) -> Sweeper:
    return Sweeper(client, work, configured=configured, **kw)


async def test_the_sweep_queues_at_most_its_request_budget(
    gitlab: FakeGitLab, client: GitLab, queue: tuple[CoalescingQueue[MRKey], Handled]
) -> None:
    """Budget 10 requests/s, 2 requests per evaluation: the list, then one MR every 0.2 s."""
    seed_open_mrs(gitlab, 6)
    work, handled = queue
    paced = sweeper(client, work, budget=10, requests_per_evaluation=lambda: 2)
    report = await paced.sweep_once()
    assert (report.projects, report.merge_requests, report.list_requests) == (1, 6, 1)
    assert sorted(k.iid for k in handled.keys) == [1, 2, 3, 4, 5, 6]
    gaps = [later - earlier for earlier, later in zip(handled.at, handled.at[1:], strict=False)]
    assert min(gaps) >= 0.2 * 0.9, gaps
    # 1 + 6 x 2 requests at 10/s: the last one queued 1.1 s after the sweep began.
    assert report.duration >= 1.1 * 0.95
    # The same sweep with a large budget is not slowed: the pacing above was the budget's.
    handled.keys.clear()
    fast = await sweeper(client, work, budget=1000, requests_per_evaluation=lambda: 2).sweep_once()
    assert fast.duration < 0.5 and len(handled.keys) == 6


async def test_the_sweep_is_fed_to_the_background_lane_behind_deliveries(
    gitlab: FakeGitLab, client: GitLab, queue: tuple[CoalescingQueue[MRKey], Handled]
) -> None:
    seed_open_mrs(gitlab, 3)
    work, handled = queue
    handled.gate.clear()  # the first MR the sweep queued holds the only worker
    sweep = asyncio.create_task(sweeper(client, work, budget=1000).sweep_once())
    await asyncio.wait_for(handled.entered.wait(), 5)
    await eventually(lambda: work.background_depth == 2, limit=5)
    assert work.submit(MRKey(1, 99), Hint(trigger="Merge Request Hook"))  # a delivery arrives
    handled.gate.set()
    report = await asyncio.wait_for(sweep, 5)
    # The delivery went ahead of the two MRs the sweep had queued before it arrived; the sweep
    # reports once its own evaluations are done.
    first, *rest = handled.keys
    assert rest[0] == MRKey(1, 99)
    assert sorted(k.iid for k in [first, *rest[1:]]) == [1, 2, 3]
    assert report.merge_requests == 3
    hint = handled.hints[MRKey(1, 2)]
    assert (hint.trigger, hint.project_path, hint.source_branch, hint.target_branch) == (
        "sweep",
        "acme/app",
        "b2",
        "main",
    )
    assert hint.sha == f"{2:040x}"


async def test_the_sweep_never_queues_more_than_its_backlog_ahead(
    gitlab: FakeGitLab, client: GitLab, queue: tuple[CoalescingQueue[MRKey], Handled]
) -> None:
    seed_open_mrs(gitlab, 8)
    work, handled = queue
    handled.gate.clear()  # the first MR holds the only worker
    sweep = asyncio.create_task(sweeper(client, work, budget=1000, max_backlog=2).sweep_once())
    await asyncio.wait_for(handled.entered.wait(), 5)
    await asyncio.sleep(0.2)  # time enough to list and queue all 8 (at 1000 requests/s)
    assert work.background_depth == 2  # the rest waits in GitLab's list, not in memory
    handled.gate.set()
    report = await asyncio.wait_for(sweep, 5)
    assert report.merge_requests == 8 and len(handled.keys) == 8
    assert max(handled.background) <= 1  # below 2 whenever a worker took an MR


async def test_projects_gitlab_does_not_know_are_forgotten_unless_configured(
    gitlab: FakeGitLab, client: GitLab, queue: tuple[CoalescingQueue[MRKey], Handled]
) -> None:
    """Swept: a configured path and a configured id, the projects the record remembers (GitLab
    confirmed them once) and ids met only in deliveries. A 404 forgets a project, unless
    it is configured; a delivered id GitLab knows without open MRs is dropped from the sweep."""
    seed_open_mrs(gitlab, 2)
    seed_project(gitlab, project_id=2, path="acme/quiet")  # known to GitLab, no open MR
    work, _ = queue
    forgotten: list[int] = []
    dropped: list[int] = []

    async def remembered() -> list[tuple[int, str]]:  # as the decision record keeps them
        return [(p, path) for p, path in [(5, "acme/gone")] if p not in forgotten]

    async def unconfirmed() -> list[int]:
        return [p for p in (2, 6) if p not in forgotten + dropped]

    sweep = sweeper(
        client,
        work,
        configured=("acme/app", "77"),
        budget=1000,
        remembered=remembered,
        unconfirmed=unconfirmed,
        forget=forgotten.append,
        drop_unconfirmed=dropped.append,
    )
    assert await sweep.projects() == ["acme/app", 77, 5, 2, 6]
    report = await sweep.sweep_once()
    assert (report.projects, report.merge_requests) == (2, 2)
    assert report.failed_projects == ["77", "5", "6"]
    assert forgotten == [5, 6]  # 77 is configured: a 404 there is the operator's to fix
    assert dropped == [2]
    # Swept by the id GitLab gave for the configured path from now on, never twice.
    assert sweep.seen == {1: "acme/app"}
    assert await sweep.projects() == [77, 1]
