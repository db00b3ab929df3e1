"""Policies reload while the bot serves: on change (polling) and on SIGHUP; a broken file keeps the
last good set serving and logs every problem with its file and line."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.service.app import POLICIES
from bot.service.policy_store import PolicyStore
from tests import payloads
from tests.conftest import TOKEN, Bot, write_policies
from tests.fakegitlab import FakeGitLab
from tests.processes import (
    REPO,
    bot_cmd,
    clean_env,
    free_port,
    http,
    standalone_fake,
    wait_until,
)

SHA = "4" * 40


def title_policy(regex: str) -> str:
    return f"check: title\nrequire:\n  - title: '{regex}'\n"


async def judge_again(gitlab: FakeGitLab, bot: Bot) -> str:
    await bot.deliver(payloads.merge_request_hook(sha=SHA))
    await bot.settle()
    return gitlab.check_status(1, 1, "title")


async def wait_for(condition: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def test_a_changed_file_is_picked_up_and_a_broken_one_keeps_the_last_good_set(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gitlab.add_project(1, "acme/app")
    gitlab.add_mr(1, 1, sha=SHA, title="feat: add login")
    gitlab.add_status_check(1, "title")
    folder = write_policies(tmp_path / "p", {"title.yml": title_policy("^feat")})
    bot = await start_bot(policy_dir=folder, policy_poll_interval=0.05)
    store = bot.app[POLICIES]
    assert await judge_again(gitlab, bot) == "passed"

    first = store.current.digest
    (folder / "title.yml").write_text(title_policy("^fix"))
    await wait_for(lambda: store.current.digest != first)
    assert await judge_again(gitlab, bot) == "failed"

    good = store.current.digest
    (folder / "title.yml").write_text("check: title\nrequire:\n  - titel: '^feat'\n")
    await wait_for(lambda: store.last_error is not None)
    assert store.current.digest == good
    assert await judge_again(gitlab, bot) == "failed"  # still the last good `^fix` policy
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    failures = [e for e in events if e["event"] == "policy_reload_failed"]
    assert failures and failures[0]["problems"] == [
        f"{folder}/title.yml:3: unknown predicate `titel`; did you mean `title`?"
    ]
    async with bot.session.get(f"{bot.url}/readyz") as response:
        assert response.status == 200  # the last good set still serves

    (folder / "title.yml").write_text(title_policy("^feat"))
    await wait_for(lambda: store.last_error is None and store.current.digest != good)
    assert await judge_again(gitlab, bot) == "passed"


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    folder = write_policies(tmp_path / "p", {"title.yml": title_policy("^feat")})
    port = free_port()
    with standalone_fake() as gitlab_url:
        serve = subprocess.Popen(
            bot_cmd("serve"),
            cwd=REPO,
            env=clean_env(
                GITLAB_URL=gitlab_url,
                GITLAB_TOKEN=TOKEN,
                POLICY_DIR=folder,
                STATE_DIR=tmp_path / "state",
                HOST="127.0.0.1",
                PORT=port,
                POLICY_POLL_INTERVAL=3600,  # only SIGHUP can reload within this test
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        events: queue.Queue[dict[str, Any]] = queue.Queue()

        def pump() -> None:
            assert serve.stderr is not None
            for line in serve.stderr:
                if line.startswith("{"):
                    events.put(json.loads(line))

        threading.Thread(target=pump, daemon=True).start()

        def next_event(name: str) -> dict[str, Any]:
            while True:
                event = events.get(timeout=10)
                if event["event"] == name:
                    return event

        try:
            wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/healthz"))
            (folder / "labels.yml").write_text("check: labelled\nrequire:\n  - draft: false\n")
            serve.send_signal(signal.SIGHUP)
            assert next_event("policies_loaded")["checks"] == ["labelled", "title"]
            (folder / "broken.yml").write_text("check: broken\nrequire: []\n")
            serve.send_signal(signal.SIGHUP)
            assert next_event("policy_reload_failed")["problems"] == [
                f"{folder}/broken.yml:2: `require` is empty: give at least one rule"
            ]
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=10) == 0
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()


def test_reverting_a_broken_file_says_the_set_is_healthy_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_policies(tmp_path / "p", {"title.yml": title_policy("^feat")})
    store = PolicyStore(folder)
    store.load()
    (folder / "broken.yml").write_text("check: broken\nrequire:\n  - lables: [x]\n")
    assert store.reload() is False
    (folder / "broken.yml").unlink()
    assert store.reload() is False  # the same set as before the mistake
    events = [json.loads(x)["event"] for x in capsys.readouterr().err.splitlines() if "{" in x]
    assert events[-2:] == ["policy_reload_failed", "policies_restored"]
