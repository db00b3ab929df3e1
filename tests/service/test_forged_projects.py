"""Forged status-check requests (issue 10 item 5). With STATUS_CHECK_SECRET unset (the only choice
before GitLab 17.3) anyone can post a status-check request; the payload is only a hint, so it can
cost an evaluation but must leave no lasting state: a project is remembered for the sweep only
once GitLab has confirmed it, a delivery cannot change what a configured `PROJECTS` entry is, and
what deliveries alone leave behind is bounded.

The guarantee this must keep: a project known only from a delivery whose evaluation never ran
(kill -9, GitLab down) is still swept after a restart (tests/e2e/test_process.py kills one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.service.app import RECORD, SWEEPER
from bot.service.record import DecisionRecord
from tests import payloads
from tests.conftest import Bot, eventually
from tests.fakegitlab import FakeGitLab

SHA = "5" * 40


def forged(project_id: int, path: str, iid: int = 1) -> dict[str, Any]:
    return payloads.status_check_request(
        project_id=project_id, project_path=path, iid=iid, sha=SHA, check_name="x"
    )


async def test_a_flood_of_forged_requests_leaves_no_project_rows(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """300 forged requests naming projects GitLab does not have: all accepted (a payload is only
    a hint), none remembered as a project, and none costs a request in a later sweep."""
    bot: Bot = await start_bot(sweep_budget=10_000)
    record = bot.app[RECORD]
    for start in range(0, 300, 50):
        answers = await asyncio.gather(
            *(
                bot.deliver(forged(1_000_000 + n, f"forged/p{n}"), event=None)
                for n in range(start, start + 50)
            )
        )
        assert {status for status, _ in answers} == {202}
    await bot.settle()
    assert await record.known_projects() == []
    sweeper = bot.app[SWEEPER]
    await sweeper.sweep_once()  # the unconfirmed ids are asked once: GitLab has none of them
    gitlab.reset_calls()
    await sweeper.sweep_once()
    assert [c.path for c in gitlab.calls] == []
    assert await record.known_projects() == []
    assert await record.unconfirmed_projects() == []


async def test_a_delivery_cannot_take_a_configured_projects_place(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """`PROJECTS=acme/app` (project 1, no open MR yet). A forged request names readable
    project 2 with the path `acme/app` and an MR that does not exist. Then an MR is opened in
    acme/app and its webhook is lost: the sweep must still find and decide it."""
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "conventional-title")
    gitlab.add_project(2, "acme/other")
    bot = await start_bot(projects=("acme/app",), sweep_budget=500)
    sweeper = bot.app[SWEEPER]
    await eventually(lambda: sweeper.sweeps >= 1)
    status, _ = await bot.deliver(forged(2, "acme/app", iid=999), event=None)
    assert status == 202
    await bot.settle()
    gitlab.add_mr(1, 1, sha=SHA, title="feat: add login", source_branch="feature")
    await sweeper.sweep_once()
    await bot.settle()
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert await bot.app[RECORD].known_projects() == [(1, "acme/app")]


async def test_a_delivery_never_evaluated_is_still_swept_after_a_restart(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """GitLab is down when the delivery comes, so nothing confirms the project before the bot
    stops; the next start-up sweep asks GitLab about it and heals the MR."""
    gitlab.add_project(7, "acme/seven")
    gitlab.add_status_check(7, "conventional-title")
    gitlab.add_mr(7, 3, sha=SHA, title="feat: add login", source_branch="feature")
    first = await start_bot(shutdown_deadline=0.5)  # stops without waiting out GitLab's outage
    gitlab.fail(503, times=10_000)
    status, _ = await first.deliver(
        payloads.merge_request_hook(project_id=7, project_path="acme/seven", iid=3, sha=SHA)
    )
    assert status == 202
    await asyncio.sleep(0.3)
    await first.stop()
    assert gitlab.check_status(7, 3, "conventional-title") == "pending"
    gitlab.clear_faults()
    second = await start_bot()
    await eventually(lambda: gitlab.check_status(7, 3, "conventional-title") == "passed")
    await eventually(lambda: second.app[SWEEPER].sweeps >= 1)
    assert await second.app[RECORD].known_projects() == [(7, "acme/seven")]
    assert await second.app[RECORD].unconfirmed_projects() == []


async def test_what_deliveries_alone_leave_is_bounded(tmp_path: Path) -> None:
    from bot.service.record import MAX_UNCONFIRMED_PROJECTS

    record = DecisionRecord.open(tmp_path / "state")
    try:
        for project_id in range(1, 20_001):
            record.remember_delivered(project_id)
        await record.flush()
        unconfirmed = await record.unconfirmed_projects()
        assert len(unconfirmed) <= MAX_UNCONFIRMED_PROJECTS
        assert 20_000 in unconfirmed  # the newest are kept
        assert await record.known_projects() == []
    finally:
        await record.close()
