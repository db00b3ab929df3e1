"""GET /readyz against a slow, failing or token-refusing GitLab (issue 10 item 4).

/readyz is unauthenticated: whatever the probe rate, it may cause at most one GitLab call per
30 s, so it cannot be turned into a flood of GitLab requests or delay real evaluations; it says
what the last real GitLab call showed, and tells a rejected token from an unreachable GitLab."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bot.gitlab.compat import Version
from bot.service.app import GITLAB
from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40


async def readyz(bot: Bot) -> tuple[int, dict[str, Any]]:
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        return resp.status, await resp.json()


def version_calls(gitlab: FakeGitLab) -> int:
    return len(gitlab.calls_to("GET", "/version"))


def seed(gitlab: FakeGitLab) -> None:
    seed_project(gitlab, ["conventional-title"])
    seed_mr(gitlab, sha=SHA)


async def test_200_probes_against_a_slow_gitlab_make_one_call_and_do_not_delay_work(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """GitLab did not answer at start (so nothing recent vouches for it), then answers /version
    slowly (3.3 s, past /readyz's 3 s wait). 200 probes in 4 waves of 50 make one /version
    call, and an evaluation that runs meanwhile takes no longer than its own requests do."""
    seed(gitlab)
    gitlab.fail(404, path_contains="/version")  # the start-up version read fails at once
    bot = await start_bot()
    # Known otherwise from here on: the bot's own version retries (which do not come from
    # probes) stop, so every /version call counted below is a probe's.
    bot.app[GITLAB].detected_version = Version(18, 9)
    gitlab.reset_calls()
    gitlab.delay(3.3, times=1000, path_contains="/version")
    started = time.perf_counter()
    answers: list[tuple[int, dict[str, Any]]] = []
    evaluation = 0.0
    for wave in range(4):
        probes = asyncio.gather(*(readyz(bot) for _ in range(50)))
        if wave == 2:  # a real evaluation while 50 probes are in flight
            await asyncio.sleep(0.05)
            delivered = time.perf_counter()
            assert (await bot.deliver(payloads.merge_request_hook(sha=SHA)))[0] == 202
            await bot.settle()
            evaluation = time.perf_counter() - delivered
        answers += await probes
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - started
    print(
        f"200 probes in {elapsed:.2f} s: {version_calls(gitlab)} /version calls, statuses "
        f"{sorted({status for status, _ in answers})}, evaluation meanwhile {evaluation:.2f} s"
    )
    assert version_calls(gitlab) <= 1
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    assert evaluation < 1.0, evaluation
    # The evaluation's real calls vouch for GitLab now: ready, still without a probe call.
    before = version_calls(gitlab)
    for _ in range(20):
        assert (await readyz(bot))[0] == 200
    assert version_calls(gitlab) == before


async def test_a_rejected_token_is_not_called_unreachable(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    bot = await start_bot(gitlab_token="glpat-revoked-0000000000")
    status, body = await readyz(bot)
    assert status == 503
    [problem] = [p for p in body["problems"] if "GitLab" in p]
    assert "rejects the token" in problem and "401" in problem, problem
    assert "unreachable" not in problem


async def test_an_unreachable_gitlab_is_called_unreachable(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    await gitlab.close()  # nothing listens there any more
    bot = await start_bot(gitlab_timeout=0.5)
    status, body = await readyz(bot)
    assert status == 503
    [problem] = [p for p in body["problems"] if "GitLab" in p]
    assert "GitLab is unreachable" in problem, problem
    assert "token" not in problem
