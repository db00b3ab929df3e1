"""app.py: `create_app` wires the service, in production and in tests alike. The resources it
owns start in dependency order and stop in reverse (an evaluation in flight at shutdown still
posts and is recorded), it serves its routes and nothing else, and /readyz says what is wrong.

/readyz against a slow, failing or token-refusing GitLab (issue 10 item 4): it is
unauthenticated, so whatever the probe rate it may cause at most one GitLab call per 30 s, so it
cannot be turned into a flood of GitLab requests or delay real evaluations; it says what the last
real GitLab call showed, and tells a rejected token from an unreachable GitLab."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from bot.config import Settings
from bot.gitlab.compat import Version
from bot.service.app import GITLAB, POLICIES, QUEUE, RECORD, SWEEPER, create_app
from bot.service.policy_store import PolicyStore
from bot.service.record import DecisionRecord
from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import Bot, eventually, link
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


async def test_readyz_fails_while_gitlab_fails_and_recovers(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    # Every request fails, from start-up on: 503 with Retry-After: 0, so the start-up version
    # read retries without the backoff a 500 waits out (the same outage, seconds sooner).
    gitlab.fail(503, times=10_000, retry_after=0)
    bot = await start_bot()
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "not ready"
    assert any("GitLab is unreachable" in problem for problem in body["problems"])
    gitlab.clear_faults()
    # /readyz asks GitLab at most once per 30 s (tests/service/test_readiness.py): the probe's
    # answer stands until a real call shows GitLab answering again, e.g. an evaluation.
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        assert resp.status == 503
    gitlab.add_project(1, "acme/app")
    gitlab.add_status_check(1, "conventional-title")
    gitlab.add_mr(1, 1, sha="1" * 40, title="feat: x", source_branch="feature")
    assert (await bot.deliver(payloads.merge_request_hook(sha="1" * 40)))[0] == 202
    await bot.settle()
    async with bot.session.get(f"{bot.url}/readyz") as resp:
        assert resp.status == 200


async def test_readyz_fails_while_policies_are_not_loaded(
    gitlab: FakeGitLab, make_settings: Callable[..., Settings], policy_dir: Path
) -> None:
    app = create_app(make_settings(), PolicyStore(policy_dir))  # never loaded
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(str(server.make_url("/readyz"))) as resp,
        ):
            assert resp.status == 503
            body = await resp.json()
    finally:
        await server.close()
    assert body["problems"] == ["policies are not loaded"]


# -- wiring ----------------------------------------------------------------------------------------


async def test_an_evaluation_in_flight_at_shutdown_still_posts_and_is_recorded(
    gitlab: FakeGitLab, start_bot: Callable[..., Any]
) -> None:
    """Resources start in dependency order (the decision record and the GitLab client before the
    workers, the workers before the sweep) and stop in reverse: at SIGTERM the workers drain
    first, while GitLab's session and the record are still open."""
    seed(gitlab)
    bot = await start_bot()
    assert {QUEUE, RECORD, GITLAB, SWEEPER, POLICIES} <= set(bot.app)
    gitlab.delay(0.5, path_contains="/status_check_responses")  # the post is slow to land
    assert (await bot.deliver(payloads.merge_request_hook(sha=SHA)))[0] == 202
    await eventually(lambda: gitlab.in_flight > 0 and bool(gitlab.calls_to("POST", "/status")))
    await bot.stop()  # what SIGTERM does (Bot.stop closes the server: the app's cleanup)
    assert [c.status for c in gitlab.calls_to("POST", "/status_check_responses")] == [201]
    assert gitlab.check_status(1, 1, "conventional-title") == "passed"
    record = DecisionRecord.open(bot.settings.state_dir)
    try:
        [row] = await record.latest(1, 1)
    finally:
        await record.close()
    assert (row["check"], row["verdict"], row["action"]) == (
        "conventional-title",
        "passed",
        "posted",
    )


async def test_the_app_serves_its_routes_and_nothing_else(bot: Bot) -> None:
    routes = {
        (route.method, resource.canonical)
        for resource in bot.app.router.resources()
        for route in resource
    }
    pages = ["/healthz", "/readyz", "/metrics", "/mr/{project_id}/{iid}{ext}"]
    assert routes == {
        ("POST", "/webhook"),
        ("*", "/webhook"),  # any other method: a JSON 405, not aiohttp's HTML one
        *(("GET", page) for page in pages),
        *(("HEAD", page) for page in pages),
    }
    session, url = bot.session, bot.url
    async with session.get(f"{url}/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with session.get(f"{url}/webhook") as resp:
        assert resp.status == 405 and "error" in await resp.json()
    status, _ = await bot.deliver(payloads.merge_request_hook(), token=None)
    assert status == 401  # the webhook, which wants GitLab's token
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 200 and "gitlab_status_bot" in await resp.text()
    async with session.get(link(bot, 1, 1).split("?")[0]) as resp:  # unsigned
        assert resp.status == 403
    async with session.get(link(bot, 1, 1)) as resp:
        assert resp.status == 200
    async with session.get(f"{url}/admin") as resp:
        assert resp.status == 404


async def test_readyz_is_ready_without_a_gitlab_call_while_real_calls_vouch_for_gitlab(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    """The start-up version read is a real call: for the next 30 s no probe asks GitLab."""
    gitlab.reset_calls()
    for _ in range(10):
        status, body = await readyz(bot)
        assert (status, body) == (200, {"status": "ready", "policies": 2})
    assert gitlab.calls == []
    assert len(bot.app[POLICIES].current) == 2  # what "policies" counts: the loaded set
