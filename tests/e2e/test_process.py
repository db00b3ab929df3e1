"""The bot as users run it, `python -m bot serve` in its own process, against the fake GitLab:
SIGTERM drains in-flight evaluations and exits 0; SIGKILL mid-burst loses nothing, because the
start-up sweep of the restarted bot converges every check without any webhook being re-sent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests import payloads
from tests.builders import seed_mr, seed_project
from tests.conftest import TOKEN, WEBHOOK_SECRET, eventually
from tests.fakegitlab import FakeGitLab
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


class BotProcess:
    """`python -m bot serve` on 127.0.0.1 with its logs captured to a file."""

    def __init__(self, gitlab: FakeGitLab, policy_dir: Path, state_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "GITLAB_URL": gitlab.url,
            "GITLAB_TOKEN": TOKEN,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "POLICY_DIR": str(policy_dir),
            "STATE_DIR": str(state_dir),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_FORMAT": "json",
            "SWEEP_BUDGET": "200",
            "SHUTDOWN_DEADLINE": "10",
        }
        self.env.pop("PROJECTS", None)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve", cwd=ROOT, env=self.env, stderr=sink
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the bot did not start: {self.log.read_text()[-2000:]}")

    async def deliver(self, session: aiohttp.ClientSession, payload: dict) -> int:
        headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": WEBHOOK_SECRET}
        async with session.post(f"{self.url}/webhook", json=payload, headers=headers) as resp:
            return resp.status

    def events(self) -> list[dict]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 15)


@pytest.fixture
async def run_bot(
    gitlab: FakeGitLab, policy_dir: Path, tmp_path: Path
) -> AsyncIterator[Callable[[], BotProcess]]:
    started: list[BotProcess] = []

    def make() -> BotProcess:
        process = BotProcess(gitlab, policy_dir, tmp_path / "state", tmp_path / "bot.log")
        started.append(process)
        return process

    yield make
    for process in started:
        if process.proc is not None and process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


def seed(gitlab: FakeGitLab, mrs: int) -> dict[int, str]:
    seed_project(gitlab, ["conventional-title"])
    expected = {}
    for iid in range(1, mrs + 1):
        good = iid % 3 != 0
        title = "feat: work" if good else "work in progress"
        seed_mr(gitlab, iid=iid, sha=f"{iid:040x}", title=title, source_branch=f"b{iid}")
        expected[iid] = "passed" if good else "failed"
    return expected


def shown(gitlab: FakeGitLab, expected: dict[int, str]) -> dict[int, str]:
    return {iid: gitlab.check_status(1, iid, "conventional-title") for iid in expected}


async def test_sigterm_drains_in_flight_evaluations_and_exits_0(
    gitlab: FakeGitLab, run_bot: Callable[[], BotProcess]
) -> None:
    expected = seed(gitlab, 2)
    bot = run_bot()
    await bot.start()
    gitlab.latency = 0.4  # every GitLab call is slow: evaluations are in flight at SIGTERM
    async with aiohttp.ClientSession() as session:
        for iid in expected:
            assert await bot.deliver(session, payloads.merge_request_hook(iid=iid)) == 202
    await eventually(lambda: len(gitlab.calls_to("GET", "/status_checks")) == 2)
    assert gitlab.status_posts() == []
    assert await bot.stop(signal.SIGTERM) == 0
    assert shown(gitlab, expected) == expected  # both finished before the process exited
    assert any(e["event"] == "workers_stopped" and e["abandoned"] == 0 for e in bot.events())


async def test_sigkill_mid_burst_then_restart_converges_without_redelivery(
    gitlab: FakeGitLab, run_bot: Callable[[], BotProcess]
) -> None:
    expected = seed(gitlab, 12)
    bot = run_bot()
    await bot.start()
    gitlab.latency = 0.15
    async with aiohttp.ClientSession() as session:
        for iid in expected:
            assert await bot.deliver(session, payloads.merge_request_hook(iid=iid)) == 202
    await eventually(lambda: len(gitlab.status_posts()) >= 1)
    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    unfinished = [iid for iid, status in shown(gitlab, expected).items() if status == "pending"]
    assert unfinished, "the burst finished before the kill; the test proves nothing"
    gitlab.latency = 0.0
    restarted = run_bot()
    await restarted.start()  # no delivery from here on: only the start-up sweep can fix this
    await eventually(lambda: shown(gitlab, expected) == expected)
