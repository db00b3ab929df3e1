"""No false pass on a real GitLab: where GitLab's answer lags, is cut or changes mid-read, the
bot fails closed, says what it waits for, and looks again by itself (README, "What the bot will
not guess"). The bot runs as a real server against the fake GitLab, which lags and cuts as
GitLab's source says (tests/fakegitlab/ names the files)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import payloads
from tests.builders import seed_mr
from tests.conftest import TOKEN, Bot, eventually, write_policies
from tests.fakegitlab import Call, FakeGitLab, diff_file, sha_for

OLD = sha_for("old head")
NEW = sha_for("new head")
CAROL = {"id": 3, "username": "carol"}
POLICIES = {
    "pipeline.yml": "check: pipeline-green\nrequire:\n  - pipeline: success\n",
    "review.yml": "check: reviewed\nrequire:\n  - approvals: {count: 1}\n",
    "size.yml": "check: size-limit\nrequire:\n  - changed_lines: {max: 400}\n",
}


def seed(gitlab: FakeGitLab, **mr: Any) -> None:
    fields: dict[str, Any] = {
        "sha": OLD,
        "title": "feat: login",
        "diffs": [diff_file("src/app.py", additions=10)],
        "approved_by": [CAROL],
        "pipeline": "success",
    }
    seed_mr(gitlab, ("pipeline-green", "reviewed", "size-limit"), **{**fields, **mr})


@pytest.fixture
async def bot(start_bot: Callable[..., Any], tmp_path: Path) -> Bot:
    return await start_bot(policy_dir=write_policies(tmp_path / "p", POLICIES))


def reasons(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """The newest decision's reason per check, from the JSON logs."""
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    return {e["check"]: e["reason"] for e in events if e.get("event") == "decision"}


def posted(gitlab: FakeGitLab, check: str, sha: str) -> list[str]:
    """Every status GitLab accepted from the bot for `check` on `sha`, in order."""
    check_id = next(c["id"] for c in gitlab.projects[1].checks.values() if c["name"] == check)
    return [
        c.json["status"]
        for c in gitlab.status_posts()
        if c.json["sha"] == sha and int(c.json["external_status_check_id"]) == check_id
    ]


async def push(bot: Bot, gitlab: FakeGitLab, sha: str, **changes: Any) -> None:
    gitlab.push(1, 1, sha, **changes)
    await bot.deliver(payloads.merge_request_hook(sha=sha, action="update"))
    await bot.settle()


# --- 1. The head pipeline lags a push -------------------------------------------------------


async def test_the_old_heads_green_pipeline_does_not_pass_a_new_commit(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"
    await push(bot, gitlab, NEW)  # CI has not started yet ([ci skip], or a slow runner)
    assert gitlab.mr(1, 1)["sha"] == NEW
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    assert posted(gitlab, "pipeline-green", NEW) == ["failed"]
    assert reasons(capsys)["pipeline-green"] == (
        f"pipeline: waiting for a pipeline for {NEW[:8]} "
        f"(GitLab still shows the pipeline of {OLD[:8]})"
    )
    # The pipeline for the new head finishes: its Pipeline Hook re-evaluates.
    gitlab.set_pipeline(1, 1, "success")
    await bot.deliver(payloads.pipeline_hook(sha=NEW, status="success"), event="Pipeline Hook")
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"


async def test_a_merged_results_pipeline_counts_for_the_head_it_was_built_from(
    gitlab: FakeGitLab, bot: Bot
) -> None:
    seed(gitlab, pipeline=None)
    gitlab.set_pipeline(1, 1, "success", merged_results=True)
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"
    await push(bot, gitlab, NEW)  # the merged-results pipeline of the old head stays shown
    assert gitlab.check_status(1, 1, "pipeline-green") == "failed"
    gitlab.set_pipeline(1, 1, "success", merged_results=True)
    await bot.deliver(payloads.pipeline_hook(sha=NEW, status="success"), event="Pipeline Hook")
    await bot.settle()
    assert gitlab.check_status(1, 1, "pipeline-green") == "passed"
    # The merge commit's parents are read once per pipeline, then remembered.
    commits = gitlab.calls_to("GET", "/repository/commits/")
    assert len(commits) == len({c.path for c in commits}) == 2


# --- 2. Approvals outlive a push for ~10 s ---------------------------------------------------


async def approvals_bot(
    start_bot: Callable[..., Any], tmp_path: Path, gitlab: FakeGitLab, settle: float = 0.75
) -> Bot:
    gitlab.approval_reset_delay = 0.5  # GitLab's 10 s, shortened with the bot's window
    return await start_bot(
        gitlab_url=gitlab.url,
        policy_dir=write_policies(tmp_path / "p", POLICIES),
        approval_settle_seconds=settle,
    )


async def test_an_approval_from_before_a_push_does_not_pass_the_new_commit(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bot = await approvals_bot(start_bot, tmp_path, gitlab)
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    assert gitlab.check_status(1, 1, "reviewed") == "passed"
    await push(bot, gitlab, NEW, pipeline="success")
    # GitLab still lists carol's approval, but will delete it without a webhook.
    assert gitlab.approvers(1, 1) == ["carol"]
    assert posted(gitlab, "reviewed", NEW) == ["failed"]
    assert reasons(capsys)["reviewed"].startswith(
        "approvals: waiting for GitLab to settle approvals after the push: 0 of 1 "
        f"(carol approved before the push to {NEW[:8]} and GitLab may still remove it)"
    )
    # No delivery comes; the bot looks again when the doubt ends and sees the approval gone.
    mr_reads = len(gitlab.calls_to("GET", "/merge_requests/1/approvals"))
    await eventually(lambda: len(gitlab.calls_to("GET", "/approvals")) > mr_reads + 1, 6)
    await bot.settle()
    assert gitlab.approvers(1, 1) == []
    assert gitlab.check_status(1, 1, "reviewed") == "failed"
    assert reasons(capsys)["reviewed"] == "approvals: 0 of 1 (no approvals yet)"


async def test_an_approval_given_after_the_push_passes_at_once(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await approvals_bot(start_bot, tmp_path, gitlab, settle=30)
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    await push(bot, gitlab, NEW, pipeline="success")
    gitlab.settle_approvals(1, 1)
    gitlab.approve(1, 1, CAROL)  # GitLab 18.5+ shows when: after GitLab recorded the push
    await bot.deliver(payloads.merge_request_hook(sha=NEW, action="approved"))
    await bot.settle()
    assert gitlab.check_status(1, 1, "reviewed") == "passed"


async def test_without_approved_at_approvals_wait_out_the_reset_window(
    start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    async with FakeGitLab(version="17.11.0", token=TOKEN) as gitlab:
        bot = await approvals_bot(start_bot, tmp_path, gitlab)
        seed(gitlab)
        await bot.deliver(payloads.merge_request_hook(sha=OLD))
        await bot.settle()
        gitlab.push(1, 1, NEW, pipeline="success", reset_approvals=False)  # e.g. a rebase
        await bot.deliver(payloads.merge_request_hook(sha=NEW, action="update"))
        await bot.settle()
        assert posted(gitlab, "reviewed", NEW) == ["failed"]  # unsettled: cannot tell yet
        await eventually(lambda: posted(gitlab, "reviewed", NEW) == ["failed", "passed"], 5)


async def test_a_project_that_keeps_approvals_on_push_is_not_held_back(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await approvals_bot(start_bot, tmp_path, gitlab, settle=30)
    seed(gitlab)
    gitlab.projects[1].approval_settings["reset_approvals_on_push"] = False
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    await push(bot, gitlab, NEW, pipeline="success")
    assert posted(gitlab, "reviewed", NEW) == ["passed"]


# --- 3. Facts read while a push lands ---------------------------------------------------------


async def test_facts_read_before_a_push_never_judge_the_pushed_commit(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    """The outside attack: while the bot reads, a 900-line commit is pushed, and the MR read
    answers last (with the new head). Judged on the old head's diff, it would pass."""
    seed(gitlab)
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    assert gitlab.check_status(1, 1, "size-limit") == "passed"

    async def push_after_the_diff_is_read(call: Call) -> None:
        gitlab.push(1, 1, NEW, diffs=[diff_file("src/app.py", additions=900)], pipeline="success")

    slowed: list[Call] = []

    async def mr_read_answers_last(call: Call) -> None:
        # The MR and its status checks answer after the push, the diff before it.
        if call.path.endswith(("/merge_requests/1", "/status_checks")) and len(slowed) < 2:
            slowed.append(call)
            await asyncio.sleep(0.3)

    gitlab.on_request("GET", "/diffs", push_after_the_diff_is_read, when="after", times=1)
    gitlab.on_request("GET", "/merge_requests/1", mr_read_answers_last)
    # A label change: the delivery names the old head, the bot has seen it: one read round.
    await bot.deliver(payloads.merge_request_hook(sha=OLD, action="update"))
    await bot.settle()
    assert gitlab.mr(1, 1)["sha"] == NEW
    (diffs_read, *_) = gitlab.calls_to("GET", "/diffs")[-2:]
    assert diffs_read.finished < min(c.finished for c in slowed)  # the race as described
    assert "passed" not in posted(gitlab, "size-limit", NEW)
    assert gitlab.check_status(1, 1, "size-limit") == "failed"
    assert reasons(capsys)["size-limit"] == "changed_lines: 900 > max 400"


async def test_approvals_are_not_counted_when_gitlab_will_not_say_when_it_recorded_the_head(
    gitlab: FakeGitLab, bot: Bot, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(gitlab)
    gitlab.fail(403, times=10, path_contains="/versions")
    await bot.deliver(payloads.merge_request_hook(sha=OLD))
    await bot.settle()
    assert gitlab.check_status(1, 1, "reviewed") == "failed"
    assert reasons(capsys)["reviewed"].startswith(
        "approvals: cannot read approvals: GitLab answered 403"
    )
