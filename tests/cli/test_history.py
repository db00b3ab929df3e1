"""`python -m bot history PROJECT!IID`: the decision record, newest first, read while the bot
still holds it open; run in-process (the command runs its own event loop)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest

from bot.__main__ import main
from bot.cli.history import table
from bot.service.app import RECORD
from tests import payloads
from tests.builders import running_pipeline, seed_mr
from tests.conftest import Bot
from tests.fakegitlab import FakeGitLab

SHA = "1" * 40


def seed(gitlab: FakeGitLab) -> None:
    """acme/app!1: a conventional title (passes) and a running pipeline (fails)."""
    checks = ("conventional-title", "pipeline-green")
    seed_mr(gitlab, checks, sha=SHA, head_pipeline=running_pipeline(SHA))


async def deliver_and_record(bot: Bot) -> None:
    status, body = await bot.deliver(payloads.merge_request_hook(sha=SHA, action="open"))
    assert status == 202, body
    await bot.settle()
    await bot.app[RECORD].flush()


async def test_history_command_prints_newest_first(
    gitlab: FakeGitLab,
    bot: Bot,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(gitlab)
    await deliver_and_record(bot)
    gitlab.update_mr(1, 1, title="Add login")
    await deliver_and_record(bot)  # the title check flips to failed: a newer row
    for name in ("GITLAB_URL", "GITLAB_TOKEN", "GITLAB_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)  # history needs no GitLab
    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir))
    capsys.readouterr()

    async def run(argv: list[str]) -> int:
        # The command calls asyncio.run(): give it a thread of its own, as a shell would.
        return await asyncio.to_thread(main, argv)

    # While the bot still holds the database open: WAL lets another reader in.
    assert await run(["history", "acme/app!1"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["TIME", "(UTC)", "COMMIT", "CHECK", "VERDICT", "ACTION", "REASON"]
    assert len(lines) == 3
    newest = re.split(" {2,}", lines[0])
    assert newest[1:5] == [SHA[:8], "conventional-title", "failed", "posted"]
    assert "title" in newest[5]
    assert {tuple(re.split(" {2,}", line)[2:5]) for line in lines[1:]} == {
        ("conventional-title", "passed", "posted"),
        ("pipeline-green", "failed", "posted"),
    }
    dt.datetime.fromisoformat(newest[0])  # the time comes first, readable

    assert await run(["history", "1!1"]) == 0
    assert capsys.readouterr().out.splitlines() == [header, *lines]
    assert await run(["history", "1!1", "--limit", "1"]) == 0
    assert re.split(" {2,}", capsys.readouterr().out.splitlines()[1]) == newest

    assert await run(["history", "acme/app!7"]) == 0
    assert "no decisions recorded" in capsys.readouterr().out
    assert await run(["history", "acme/app#1"]) == 2
    assert "not PROJECT!IID" in capsys.readouterr().err

    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir / "nowhere"))
    assert await run(["history", "acme/app!1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no decision record at") and err.count("\n") == 1
    assert not (bot.settings.state_dir / "nowhere").exists()  # reading creates nothing


def test_history_lines_are_readable_and_inert_in_a_terminal() -> None:
    row = {
        "at": "2026-03-01T10:00:00+00:00",
        "sha": "abcdef0123456789" * 2,
        "check": "conventional-title",
        "verdict": "failed",
        "action": "posted",
        "reason": "title: \x1b[2J\x1b[31mgotcha\x1b[0m\nnext line does not match",
    }
    line = table([row])[1]
    assert line.startswith("2026-03-01T10:00:00Z  abcdef01  conventional-title  failed   posted  ")
    assert "\x1b" not in line and "\n" not in line
    assert "\\x1b[2J" in line  # shown, escaped, not executed
