"""Lazy facts end to end: the bot (a real server) reads from the fake GitLab exactly what the
applicable policies need, each kind once per evaluation, concurrently
(docs/architecture.md#fetch-only-what-is-needed)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bot.service.app as bot_app
from tests import payloads
from tests.builders import seed_mr
from tests.conftest import TOKEN, Bot, write_policies
from tests.fakegitlab import FakeGitLab, diff_file

SHA = "3" * 40
MR = "/projects/:id/merge_requests/:merge_request_iid"
READ_MR = f"GET {MR}"
LIST_CHECKS = f"GET {MR}/status_checks"
OPTIONAL = {
    "diffs": f"GET {MR}/diffs",
    "changes": f"GET {MR}/changes",
    "approvals": f"GET {MR}/approvals",
    "commits": f"GET {MR}/commits",
    "discussions": f"GET {MR}/discussions",
    "pipelines": f"GET {MR}/pipelines",
    "versions": f"GET {MR}/versions",
    "approval settings": "GET /projects/:id/approvals",
    "all members": "GET /groups/:id/members/all",
    "subgroups": "GET /groups/:id/descendant_groups",
    "members": "GET /groups/:id/members",
    "group": "GET /groups/:id",
    "graphql": "POST /api/graphql",
}
# What an approvals rule naming a group reads (settings and memberships are cached after).
GROUP_APPROVAL_READS = ["approvals", "versions", "approval settings", "members", "all members"]

TITLE_AND_LABELS = {
    "title.yml": """
        check: conventional-title
        require:
          - title: '^(feat|fix): '
    """,
    "labels.yml": """
        check: labelled
        require:
          - labels: {none: [do-not-merge]}
          - not: {draft: true}
    """,
}
CHANGED_FILES = {"src.yml": "check: touches-src\nrequire:\n  - changed_files: ['src/**']\n"}
GROUP_APPROVAL = {
    "security.yml": """
        check: security-review
        require:
          - approvals: {count: 1, from: {groups: [acme/security]}}
    """
}


def seed(gitlab: FakeGitLab, checks: list[str], **mr: Any) -> None:
    fields: dict[str, Any] = {
        "sha": SHA,
        "author": {"id": 1, "username": "alice"},
        "diffs": [diff_file("src/app.py", additions=3), diff_file("docs/a.md")],
        "approved_by": [{"id": 3, "username": "carol"}],
        "pipeline": "success",
    }
    seed_mr(gitlab, checks, **{**fields, **mr})


def reads(gitlab: FakeGitLab) -> Counter[str]:
    """GET calls of the evaluation's snapshot, by route template. The target branch's
    repository policies (read once per branch head, not per evaluation) are counted in
    tests/service/test_repository_policies.py."""
    policies = ("/repository/tree", "/repository/files/", "/repository/branches/")
    return Counter(
        c.route
        for c in gitlab.calls
        if c.method == "GET" and not any(part in c.route for part in policies)
    )


async def evaluate_once(gitlab: FakeGitLab, bot: Bot, **hook: Any) -> None:
    gitlab.reset_calls()
    status, body = await bot.deliver(payloads.merge_request_hook(sha=SHA, **hook))
    assert status == 202, body
    await bot.settle()


async def start_with(
    tmp_path: Path, start_bot: Callable[..., Any], policies: dict[str, str], **settings: Any
) -> Bot:
    bot = await start_bot(policy_dir=write_policies(tmp_path / "p", policies), **settings)
    await after_startup_sweep(bot)
    return bot


async def after_startup_sweep(bot: Bot) -> None:
    """Let the start-up reconciliation sweep finish, so the calls counted are the delivery's."""
    key = getattr(bot_app, "SWEEPER", None)
    if key is None or key not in bot.app:
        return
    sweeper = bot.app[key]
    async with asyncio.timeout(5):
        while True:
            if getattr(sweeper, "sweeps", 1) >= 1:
                break
            await asyncio.sleep(0.01)
    await bot.settle()


async def test_title_and_label_policies_read_only_the_mr_and_its_checks(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, ["conventional-title", "labelled"])
    bot = await start_with(tmp_path, start_bot, TITLE_AND_LABELS)
    await evaluate_once(gitlab, bot)
    assert reads(gitlab) == Counter({READ_MR: 1, LIST_CHECKS: 1})
    assert gitlab.statuses(1, 1) == {"conventional-title": "passed", "labelled": "passed"}
    assert not any(c.path.startswith("/api/v4/groups") for c in gitlab.calls)


async def test_a_changed_files_policy_reads_the_diffs_once(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, ["touches-src"])
    bot = await start_with(tmp_path, start_bot, CHANGED_FILES)
    for _ in range(2):  # the second evaluation (project checks known) reads the same
        await evaluate_once(gitlab, bot, action="update")
        assert reads(gitlab) == Counter({READ_MR: 1, LIST_CHECKS: 1, OPTIONAL["diffs"]: 1})
    assert gitlab.check_status(1, 1, "touches-src") == "passed"


async def test_before_15_7_changed_files_come_from_changes(
    tmp_path: Path, start_bot: Callable[..., Any]
) -> None:
    async with FakeGitLab(version="15.3.0", token=TOKEN) as fake:
        seed(fake, ["touches-src"])
        bot = await start_with(tmp_path, start_bot, CHANGED_FILES, gitlab_url=fake.url)
        await evaluate_once(fake, bot)
        assert reads(fake) == Counter({READ_MR: 1, LIST_CHECKS: 1, OPTIONAL["changes"]: 1})
        assert fake.check_status(1, 1, "touches-src") == "passed"


async def test_a_parent_groups_member_counts_only_with_inherited(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # dave is a member of the parent group only: GitLab's members/all lists him for
    # acme/security too, but he is no member of the security team.
    gitlab.add_group(10, "acme", [{"id": 4, "username": "dave"}])
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    seed(gitlab, ["security-review"], approved_by=[{"id": 4, "username": "dave"}])
    bot = await start_with(tmp_path, start_bot, GROUP_APPROVAL)
    await evaluate_once(gitlab, bot)
    assert reads(gitlab) == Counter(
        {
            READ_MR: 1,
            LIST_CHECKS: 1,
            **{OPTIONAL[name]: 1 for name in GROUP_APPROVAL_READS},
            OPTIONAL["subgroups"]: 1,
        }
    )
    members_call = next(c for c in gitlab.calls if c.route == OPTIONAL["members"])
    assert members_call.path == "/api/v4/groups/acme%2Fsecurity/members"
    assert gitlab.check_status(1, 1, "security-review") == "failed"
    assert decision_reasons(capsys)["security-review"] == (
        "approvals: 0 of 1 from acme/security (dave approved but is in acme/security only "
        "through a parent or shared group (`inherited: true` counts those))"
    )
    write_policies(
        tmp_path / "p",
        {
            "security.yml": """
                check: security-review
                require:
                  - approvals: {count: 1, from: {groups: [acme/security], inherited: true}}
            """
        },
    )
    bot.app[bot_app.POLICIES].reload()
    await evaluate_once(gitlab, bot, action="update")
    assert gitlab.check_status(1, 1, "security-review") == "passed"


async def test_only_active_developers_of_the_group_count(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gitlab.add_group(
        11,
        "acme/security",
        [
            {"id": 3, "username": "carol", "access_level": 20},  # Reporter: cannot approve
            {"id": 5, "username": "erin", "state": "blocked"},
            {"id": 6, "username": "frank", "membership_state": "awaiting"},
        ],
    )
    approvers = [{"id": n, "username": u} for n, u in ((3, "carol"), (5, "erin"), (6, "frank"))]
    seed(gitlab, ["security-review"], approved_by=approvers)
    bot = await start_with(tmp_path, start_bot, GROUP_APPROVAL)
    await evaluate_once(gitlab, bot)
    assert gitlab.check_status(1, 1, "security-review") == "failed"
    assert decision_reasons(capsys)["security-review"] == (
        "approvals: 0 of 1 from acme/security (carol approved but is a Reporter in "
        "acme/security; erin approved but is blocked (not an active user) in acme/security; "
        "frank approved but is awaiting approval of their membership in acme/security)"
    )


async def test_members_of_subgroups_count_as_members_of_the_group(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    gitlab.add_group(12, "acme/security/appsec", [{"id": 5, "username": "erin"}])
    gitlab.add_group(13, "acme/other", [{"id": 6, "username": "frank"}])
    seed(gitlab, ["security-review"], approved_by=[{"id": 5, "username": "erin"}])
    bot = await start_with(tmp_path, start_bot, GROUP_APPROVAL)
    await evaluate_once(gitlab, bot)
    assert gitlab.check_status(1, 1, "security-review") == "passed"
    member_reads = [c.path for c in gitlab.calls if c.route == OPTIONAL["members"]]
    # The group's own members and its subgroup's, not the sibling acme/other.
    assert member_reads == ["/api/v4/groups/acme%2Fsecurity/members", "/api/v4/groups/12/members"]
    # frank, in a sibling group, does not count (memberships come from the cache this time).
    gitlab.unapprove(1, 1, {"id": 5})
    gitlab.approve(1, 1, {"id": 6, "username": "frank"})
    await evaluate_once(gitlab, bot, action="update")
    assert gitlab.check_status(1, 1, "security-review") == "failed"


async def test_the_author_approving_is_read_and_not_counted(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gitlab.add_group(11, "acme/security", [{"id": 1, "username": "alice"}])
    seed(gitlab, ["security-review"], approved_by=[{"id": 1, "username": "alice"}])
    bot = await start_with(tmp_path, start_bot, GROUP_APPROVAL)
    await evaluate_once(gitlab, bot)
    assert gitlab.check_status(1, 1, "security-review") == "failed"
    reason = decision_reasons(capsys)["security-review"]
    assert reason == "approvals: 0 of 1 from acme/security (alice approved but is the author)"


async def test_every_kind_of_fact_is_read_once_and_concurrently(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    seed(gitlab, ["everything"])
    gitlab.add_discussion(1, 1, "why?", resolvable=True)
    everything = """
        check: everything
        require:
          - changed_lines: {max: 400}
          - approvals: {count: 1, from: {groups: [acme/security]}}
          - commits: {message: '^feat'}
          - threads_resolved: true
          - author: {groups: [acme/security], users: [alice]}
    """
    bot = await start_with(tmp_path, start_bot, {"everything.yml": everything})
    # The first look at the MR reads its facts after the MR itself (they must describe the head
    # the MR read shows); from then on, while the head stays, one round reads everything.
    await evaluate_once(gitlab, bot)
    gitlab.latency = 0.1
    await evaluate_once(gitlab, bot)
    names = ["diffs", "approvals", "commits", "discussions", "versions"]
    assert reads(gitlab) == Counter(
        {READ_MR: 1, LIST_CHECKS: 1, **{OPTIONAL[name]: 1 for name in names}}
    )
    round_one = [c for c in gitlab.calls if c.method == "GET"]
    # One round: every read had started before the first of them was answered.
    assert max(c.started for c in round_one) < min(c.finished for c in round_one)
    assert gitlab.check_status(1, 1, "everything") == "failed"  # the open thread


async def test_the_first_look_at_a_head_reads_its_facts_after_the_mr(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed(gitlab, ["touches-src"])
    bot = await start_with(tmp_path, start_bot, CHANGED_FILES)
    gitlab.latency = 0.05
    await evaluate_once(gitlab, bot)
    (mr_read,) = [c for c in gitlab.calls if c.route == READ_MR]
    (diffs,) = [c for c in gitlab.calls if c.route == OPTIONAL["diffs"]]
    assert diffs.started >= mr_read.finished


async def test_a_policy_out_of_scope_costs_no_reads(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    release_only = """
        check: release-review
        applies_to: {target_branches: ["release/*"]}
        require:
          - approvals: {count: 2}
          - changed_lines: {max: 10}
    """
    seed(gitlab, ["conventional-title", "release-review"])
    policies = {"title.yml": TITLE_AND_LABELS["title.yml"], "release.yml": release_only}
    bot = await start_with(tmp_path, start_bot, policies)
    await evaluate_once(gitlab, bot)
    assert reads(gitlab) == Counter({READ_MR: 1, LIST_CHECKS: 1})
    assert gitlab.statuses(1, 1) == {"conventional-title": "passed", "release-review": "passed"}


async def test_policies_whose_check_the_mr_lacks_cost_no_reads_once_checks_are_known(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    seed(gitlab, ["conventional-title"])
    policies = {"title.yml": TITLE_AND_LABELS["title.yml"], **CHANGED_FILES, **GROUP_APPROVAL}
    bot = await start_with(tmp_path, start_bot, policies)
    await evaluate_once(gitlab, bot)  # the first look at a project prefetches for every policy
    await evaluate_once(gitlab, bot)
    assert reads(gitlab) == Counter({READ_MR: 1, LIST_CHECKS: 1})


def decision_reasons(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    return {e["check"]: e["reason"] for e in events if e.get("event") == "decision"}


COUNTING = {
    "few.yml": "check: few-files\nrequire:\n  - changed_files_count: {max: 2999}\n",
    "exact.yml": "check: exactly-3000\nrequire:\n  - changed_files_count: {min: 3000, max: 3000}\n",
}


def three_thousand_files() -> list[dict[str, Any]]:
    return [diff_file(f"src/pkg{i % 40}/mod{i}.py", additions=1) for i in range(3000)]


async def test_3000_changed_files_are_counted_from_diff_stats_when_gitlab_cuts_the_diff(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/diffs lists the stored diff: 1,000 files, 30 a page, changes_count "1000+". GraphQL
    diffStats (Gitaly, no display limits) give the whole change in one request."""
    seed(gitlab, ["few-files", "exactly-3000"], diffs=three_thousand_files())
    bot = await start_with(tmp_path, start_bot, COUNTING)
    await evaluate_once(gitlab, bot)
    pages = [c for c in gitlab.calls if c.route == OPTIONAL["diffs"]]
    assert len(pages) == 34  # 1000 stored files, 30 a page whatever per_page asks
    assert sum(len(c.response) for c in pages) == 1000
    assert len(gitlab.calls_to("POST", "/api/graphql")) == 1
    assert gitlab.statuses(1, 1) == {"few-files": "failed", "exactly-3000": "passed"}
    assert decision_reasons(capsys)["few-files"] == "changed_files_count: 3000 > max 2999"


async def test_before_15_7_an_overflowing_changes_list_is_completed_from_diff_stats(
    tmp_path: Path, start_bot: Callable[..., Any]
) -> None:
    async with FakeGitLab(version="15.3.0", token=TOKEN) as fake:
        seed(fake, ["few-files", "exactly-3000"], diffs=three_thousand_files())
        bot = await start_with(tmp_path, start_bot, COUNTING, gitlab_url=fake.url)
        await evaluate_once(fake, bot)
        (changes,) = [c for c in fake.calls if c.route == OPTIONAL["changes"]]
        assert changes.response["overflow"] is True  # GitLab cut it at 1000 files
        assert fake.statuses(1, 1) == {"few-files": "failed", "exactly-3000": "passed"}


async def test_a_cut_diff_gitlab_will_not_complete_is_never_judged_small(
    gitlab: FakeGitLab,
    tmp_path: Path,
    start_bot: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(gitlab, ["few-files", "exactly-3000"], diffs=three_thousand_files())
    gitlab.fail(403, times=10, path_contains="/api/graphql")
    bot = await start_with(tmp_path, start_bot, COUNTING)
    await evaluate_once(gitlab, bot)
    # Only 1000 of the files are known: a max can't be confirmed, so both checks fail.
    assert gitlab.statuses(1, 1) == {"few-files": "failed", "exactly-3000": "failed"}
    reasons = decision_reasons(capsys)
    assert reasons["few-files"] == (
        "changed_files_count: at least 1000, so max 2999 cannot be confirmed: "
        "GitLab listed 1000 of 1000+ files"
    )


async def test_a_collapsed_big_file_is_counted_in_full(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GitLab shows a 5,000-line patch with an empty `diff` (collapsed, or too large): counted
    as 0 lines, a size limit would pass it."""
    size = {"size.yml": "check: size-limit\nrequire:\n  - changed_lines: {max: 400}\n"}
    seed(gitlab, ["size-limit"], diffs=[diff_file("src/big.py", additions=5000)])
    bot = await start_with(tmp_path, start_bot, size)
    await evaluate_once(gitlab, bot)
    assert gitlab.check_status(1, 1, "size-limit") == "failed"
    assert decision_reasons(capsys)["size-limit"] == "changed_lines: 5000 > max 400"
