"""README, "Worked example: a team tightens the central size limit": the notes and the history
quoted there are what the code prints for that scenario (the fake's commit ids included)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.__main__ import main
from bot.service.app import RECORD
from tests import payloads
from tests.fakegitlab import FakeGitLab, diff_file
from tests.processes import REPO

F = ".gitlab/status-checks"
README = (REPO / "README.md").read_text()
SECTION = README.split("### Worked example: a team tightens the central size limit", 1)[1]
SECTION = SECTION.split("\n## ", 1)[0]
# The files as a reader copies them, first comment line included (problems cite their lines).
TEAM, CASES = re.findall(r"```yaml\n(# \.gitlab/status-checks/[^\n]+\n.*?)```", SECTION, re.S)


def quoted_notes() -> list[str]:
    """The README's quoted notes (`> ...` blocks), as the bot writes them."""
    blocks = re.findall(r"((?:^>.*\n)+)", SECTION, re.M)
    return [re.sub(r"^> ?", "", block, flags=re.M).strip() for block in blocks]


def note_text(body: str) -> str:
    """A note without its hidden marker and its footer."""
    lines = body.splitlines()[1:]
    return "\n".join(line for line in lines if not line.startswith("<sub>")).strip()


async def deliver(bot: Any, gitlab: FakeGitLab, iid: int) -> None:
    hook = payloads.merge_request_hook(
        project_path="acme/payments", iid=iid, sha=gitlab.mr(1, iid)["sha"]
    )
    status, body = await bot.deliver(hook)
    assert status == 202, body
    await bot.settle()


async def test_the_worked_example_is_what_the_code_prints(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = tmp_path / "example"
    (here / "policies").mkdir(parents=True)
    shutil.copy(REPO / "policies" / "size-limit.yml", here / "policies" / "size-limit.yml")
    monkeypatch.chdir(here)  # POLICY_DIR=policies, as in the README
    gitlab.add_project(1, "acme/payments")
    gitlab.add_status_check(1, "size-limit")
    gitlab.add_status_check(1, "status-check-policies")
    for iid, title, branch, diff in (
        (12, "feat: refunds", "refunds", diff_file("src/refunds.py", additions=290, deletions=22)),
        (14, "fix: rounding", "rounding", diff_file("src/money.py", additions=9, deletions=3)),
        (13, "chore: payments size rule", "size-rule", diff_file(f"{F}/size-limit.yml")),
    ):
        gitlab.add_mr(1, iid, title=title, source_branch=branch, diffs=[diff])
    gitlab.propose_files(1, 13, {f"{F}/size-limit.yml": TEAM, f"{F}/size-limit.test.yaml": CASES})
    bot = await start_bot(policy_dir=Path("policies"), sweep_budget=100.0)
    for iid in (12, 14, 13):
        await deliver(bot, gitlab, iid)
    fixed = CASES.replace("changes:", "changed_files:")
    gitlab.propose_files(1, 13, {f"{F}/size-limit.test.yaml": fixed})
    await deliver(bot, gitlab, 13)
    written = [
        note_text(str(c.json["body"]))
        for c in gitlab.calls
        if c.method in ("POST", "PUT") and "/merge_requests/13/notes" in c.path
    ]
    assert written == quoted_notes()

    before = gitlab.branch_sha(1, "main")
    after = gitlab.commit_files(
        1, "main", {f"{F}/size-limit.yml": TEAM, f"{F}/size-limit.test.yaml": fixed}
    )
    status, _ = await bot.deliver(gitlab.push_hook(1, "main", before, after), event="Push Hook")
    assert status == 202
    await bot.settle()
    assert gitlab.statuses(1, 12)["size-limit"] == "failed"
    assert gitlab.statuses(1, 14)["size-limit"] == "passed"
    await bot.app[RECORD].flush()
    for name in ("GITLAB_URL", "GITLAB_TOKEN", "GITLAB_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir.resolve()))
    capsys.readouterr()
    argv = ["history", "acme/payments!12", "--rules", "--limit", "1"]
    assert await asyncio.to_thread(main, argv) == 0
    printed = capsys.readouterr().out.splitlines()
    [quoted] = re.findall(r"```\n(TIME \(UTC\).*?)```", SECTION, re.S)
    expected = quoted.splitlines()
    time = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    assert [time.sub("<time>", line) for line in printed] == [
        time.sub("<time>", line) for line in expected
    ]
