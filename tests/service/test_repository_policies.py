"""Policies kept in the repository (`.gitlab/status-checks/` of the MR's target branch) over the
central floors, end to end: the bot as a real server, the fake GitLab as a real one
(docs/architecture.md#repository-policies)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.__main__ import main
from bot.cli.explain import explain
from bot.policy.nodes import MAX_POLICY_BYTES
from bot.service.app import EVALUATOR, RECORD
from tests import payloads
from tests.builders import seed_mr
from tests.conftest import Bot, eventually, get, link, write_policies
from tests.fakegitlab import FakeGitLab

CENTRAL = {
    "title.yml": """
        check: conventional-title
        require:
          - title: '^(feat|fix|docs|chore)(\\(.+\\))?: '
    """,
    "size.yml": """
        check: labelled
        replaceable: true
        require:
          - labels: {any: [team]}
    """,
}
FOLDER = ".gitlab/status-checks"
TICKET = """
check: conventional-title
require:
  - name: ticket in title
    title: 'ACME-[0-9]+'
"""
REVIEWED = """
check: reviewed
require:
  - labels: {any: [reviewed]}
"""
CHECKS = ["conventional-title", "labelled", "reviewed"]
REPOSITORY_READS = ("/repository/branches/", "/repository/tree", "/repository/files/")


def repository_reads(gitlab: FakeGitLab) -> list[str]:
    return [c.route for c in gitlab.calls if any(part in c.route for part in REPOSITORY_READS)]


async def latest(bot: Bot, iid: int = 1) -> dict[str, dict[str, Any]]:
    """What the decision record (what `history` shows) holds for each check of !iid."""
    record = bot.app[RECORD]
    await record.flush()
    return {row["check"]: row for row in await record.latest(1, iid)}


def leaves(outcome: dict[str, Any]) -> list[str]:
    """The evidence of every predicate under a recorded outcome."""
    children = outcome.get("children") or []
    if not children:
        return [outcome["evidence"]]
    return [text for child in children for text in leaves(child)]


async def start(
    tmp_path: Path, start_bot: Callable[..., Any], central: dict[str, str] = CENTRAL, **kw: Any
) -> Bot:
    return await start_bot(policy_dir=write_policies(tmp_path / "central", central), **kw)


async def deliver(bot: Bot, gitlab: FakeGitLab, iid: int = 1) -> None:
    sha = gitlab.mr(1, iid)["sha"]
    status, body = await bot.deliver(payloads.merge_request_hook(iid=iid, sha=sha))
    assert status == 202, body
    await bot.settle()


async def test_the_target_branch_decides_and_the_source_branch_cannot_change_its_rules(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """A check only the repository defines is judged by the target branch's file; the same
    file loosened on the MR's own branch changes nothing. A check both layers define needs
    both: the central rule holds, the repository's ticket rule fails, and the evidence names
    the layer each rule came from (central file, repository path@sha)."""
    seed_mr(gitlab, CHECKS, labels=["team"])
    main = gitlab.commit_files(
        1, "main", {f"{FOLDER}/title.yml": TICKET, f"{FOLDER}/r.yml": REVIEWED}
    )
    # The MR tries to drop the ticket rule and the review label on its own branch.
    gitlab.propose_files(
        1,
        1,
        {
            f"{FOLDER}/title.yml": None,
            f"{FOLDER}/r.yml": "check: reviewed\nrequire:\n  - draft: false\n",
        },
    )
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "failed",
        "labelled": "passed",
        "reviewed": "failed",
    }
    rows = await latest(bot)
    sha = main[:12]
    title = rows["conventional-title"]
    assert title["policy_path"] == (
        f"central {tmp_path}/central/title.yml + repository {FOLDER}/title.yml@{sha}"
    )
    assert leaves(title["outcome"]) == [
        'title: "feat: add login" matches `^(feat|fix|docs|chore)(\\(.+\\))?: ` '
        f"[central {tmp_path}/central/title.yml]",
        'title: "feat: add login" does not match `ACME-[0-9]+` '
        f"[repository {FOLDER}/title.yml@{sha}]",
    ]
    assert rows["reviewed"]["policy_path"] == f"repository {FOLDER}/r.yml@{sha}"
    assert rows["labelled"]["policy_path"].endswith("central/size.yml")  # the repo is silent
    # The details page shows the same layers, rule by rule.
    status, page, _ = await get(bot, link(bot))
    assert status == 200
    assert f"[repository {FOLDER}/title.yml@{sha}]" in page
    assert f"[central {tmp_path}/central/title.yml]" in page


async def test_the_mr_note_says_which_layer_a_failing_rule_came_from(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed_mr(gitlab, ["conventional-title"], title="chore: x")
    main = gitlab.commit_files(1, "main", {f"{FOLDER}/title.yml": TICKET + "comment: on_failure\n"})
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    [note] = notes_on(gitlab, 1)
    assert (
        f'- ✗ `ticket in title — title: "chore: x" does not match ACME-[0-9]+ '
        f"[repository {FOLDER}/title.yml@{main[:12]}]`" in note
    )
    assert "[central " not in note  # `chore:` holds centrally: only the team's rule fails


async def test_a_lost_push_hook_is_healed_after_repository_policy_ttl(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """No Push Hook arrives for a change of main's policies: within REPOSITORY_POLICY_TTL the
    bot judges by what it read; after it, the next evaluation reads main's head again."""
    seed_mr(gitlab, CHECKS, labels=["team"])
    gitlab.commit_files(1, "main", {f"{FOLDER}/r.yml": REVIEWED})
    bot = await start(tmp_path, start_bot, repository_policy_ttl=0.5)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["reviewed"] == "failed"
    gitlab.commit_files(1, "main", {f"{FOLDER}/r.yml": REVIEWED.replace("reviewed]", "team]")})
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["reviewed"] == "failed"  # the head is still trusted
    await asyncio.sleep(0.6)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["reviewed"] == "passed"


async def test_a_broken_repository_file_fails_its_check_with_file_and_line_and_nothing_else(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed_mr(gitlab, CHECKS, labels=["team", "reviewed"])
    gitlab.commit_files(
        1, "main", {f"{FOLDER}/r.yml": "check: reviewed\nrequire:\n  - lables: {any: [x]}\n"}
    )
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "passed",
        "labelled": "passed",
        "reviewed": "failed",
    }
    async with bot.session.get(f"{bot.url}/healthz") as resp:
        assert resp.status == 200
    rows = await latest(bot)
    assert rows["reviewed"]["reason"] == (
        f"repository {FOLDER}/r.yml@{gitlab.branch_sha(1, 'main')[:12]}: the repository policy "
        f"does not load: {FOLDER}/r.yml:3: unknown predicate `lables`; did you mean `labels`?"
    )
    assert rows["reviewed"]["outcome"]["fix"] == (
        "fix the file on the target branch (by merge request); "
        "`python -m bot validate .gitlab/status-checks` shows every problem"
    )


async def test_a_repository_file_that_is_not_utf8_is_the_files_problem_not_gitlabs(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """GitLab serves a file's bytes as they are: a Latin-1 file fails its own check with
    `file:1:` and the fix, at once, instead of being taken for a GitLab failure and retried."""
    seed_mr(gitlab, CHECKS, labels=["team", "reviewed"])
    latin1 = "check: reviewed\ndescription: Revue demand\xe9e\nrequire:\n  - draft: false\n"
    # Unreadable text names no `check:`, so the file name does (reviewed.yml).
    gitlab.commit_files(1, "main", {f"{FOLDER}/reviewed.yml": latin1.encode("latin-1")})
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "passed",
        "labelled": "passed",
        "reviewed": "failed",
    }
    rows = await latest(bot)
    assert f"{FOLDER}/reviewed.yml:1: the file is not UTF-8 text" in rows["reviewed"]["reason"]
    assert rows["reviewed"]["wake_at"] is None


async def test_a_replaceable_central_policy_gives_way_to_the_repositorys(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """`labelled` is replaceable centrally: the repository's own version decides it alone
    (the MR has no `team` label, which the central one wants)."""
    seed_mr(gitlab, CHECKS, labels=["backend", "reviewed"])
    replacement = "check: labelled\nrequire:\n  - labels: {any: [backend, frontend]}\n"
    gitlab.commit_files(1, "main", {f"{FOLDER}/labelled.yml": replacement})
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["labelled"] == "passed"
    rows = await latest(bot)
    assert rows["labelled"]["policy_path"].startswith(f"repository {FOLDER}/labelled.yml@")


async def test_unreadable_repository_policies_fail_closed_and_the_bot_looks_again(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """GitLab fails the branch read: the check only the repository defines, and the
    replaceable central one, and the central floor the repository never touched (the new
    head could add rules to it) are `failed` "waiting for the repository policies" (never
    passed, never left pending); once GitLab answers the bot finds the policies by itself and
    every check is judged again."""
    seed_mr(gitlab, CHECKS, labels=["team", "reviewed"])
    gitlab.commit_files(1, "main", {f"{FOLDER}/r.yml": REVIEWED})
    gitlab.fail(503, times=4, path_contains="/repository/branches/")  # every retry of one read
    bot = await start(tmp_path, start_bot)
    bot.app[EVALUATOR].repository.retry_base = 0.5  # the product's 5 s, shortened
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "failed",
        "labelled": "failed",
        "reviewed": "failed",
    }
    rows = await latest(bot)
    assert rows["reviewed"]["reason"] == (
        f"repository {FOLDER} (unreadable): waiting for the repository policies: "
        "reading `main`: GitLab answered 503: Service Unavailable"
    )
    assert rows["reviewed"]["wake_at"] is not None
    await eventually(lambda: gitlab.statuses(1, 1)["reviewed"] == "passed", limit=15)
    assert gitlab.statuses(1, 1)["labelled"] == "passed"
    assert gitlab.statuses(1, 1)["conventional-title"] == "passed"


async def test_repository_policies_cost_no_request_until_the_target_branch_moves(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """Read once per target-branch head: the branch, the folder, each file; then nothing
    more per evaluation. A Push Hook that changes the policies makes the bot read the branch,
    the folder and only the changed file, and judge again the open MRs that target it; a push
    that leaves the folder as it was re-judges nothing. A project without the folder costs one
    branch read and one 404 for the folder, once."""
    seed_mr(gitlab, CHECKS, labels=["team"])
    seed_mr(gitlab, iid=2, labels=["team"], source_branch="other")
    before = gitlab.commit_files(
        1, "main", {f"{FOLDER}/r.yml": REVIEWED, f"{FOLDER}/title.yml": TICKET}
    )
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert sorted(repository_reads(gitlab)) == [
        "GET /projects/:id/repository/branches/:branch",
        "GET /projects/:id/repository/files/:file_path/raw",
        "GET /projects/:id/repository/files/:file_path/raw",
        "GET /projects/:id/repository/tree",
    ]
    assert gitlab.statuses(1, 1)["reviewed"] == "failed"
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    await deliver(bot, gitlab, iid=2)
    assert repository_reads(gitlab) == []  # no extra request per evaluation

    # A push to main that changes one policy: the label rule now takes `team`.
    after = gitlab.commit_files(
        1, "main", {f"{FOLDER}/r.yml": REVIEWED.replace("reviewed]", "team]")}
    )
    gitlab.reset_calls()
    status, body = await bot.deliver(gitlab.push_hook(1, "main", before, after), event="Push Hook")
    assert status == 202, body
    await bot.settle()
    assert sorted(repository_reads(gitlab)) == [
        "GET /projects/:id/repository/branches/:branch",
        "GET /projects/:id/repository/files/:file_path/raw",  # r.yml only: title.yml is known
        "GET /projects/:id/repository/tree",
    ]
    assert gitlab.statuses(1, 1)["reviewed"] == "passed"
    assert gitlab.statuses(1, 2)["reviewed"] == "passed"

    # A push that leaves the folder as it was: nothing is judged again.
    again = gitlab.commit_files(1, "main", {"src/app.py": "print('hi')\n"})
    gitlab.reset_calls()
    status, _ = await bot.deliver(gitlab.push_hook(1, "main", after, again), event="Push Hook")
    assert status == 202
    await bot.settle()
    assert sorted(repository_reads(gitlab)) == [
        "GET /projects/:id/repository/branches/:branch",
        "GET /projects/:id/repository/tree",
    ]
    assert gitlab.calls_to("GET", "/merge_requests") == []


async def test_a_project_without_repository_policies_pays_once(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    seed_mr(gitlab, ["conventional-title"])
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    tree = gitlab.calls_to("GET", "/repository/tree")
    assert [c.status for c in tree] == [404]
    assert len(repository_reads(gitlab)) == 2
    gitlab.reset_calls()
    for _ in range(3):
        await deliver(bot, gitlab)
    assert repository_reads(gitlab) == []
    assert gitlab.statuses(1, 1) == {"conventional-title": "passed"}


# -- MRs that change the repository's policies -------------------------------------------------

TEAM = """
check: reviewed
require:
  - labels: {any: [team]}
"""
TEAM_CASES = """
policy: reviewed
cases:
  - name: a team MR passes
    mr: {labels: [team]}
    expect: passed
  - name: a reviewed MR no longer does
    mr: {labels: [reviewed]}
    expect: failed
"""


def notes_on(gitlab: FakeGitLab, iid: int) -> list[str]:
    return [
        str((c.json or {}).get("body", ""))
        for c in gitlab.calls
        if c.method in ("POST", "PUT") and f"/merge_requests/{iid}/notes" in c.path
    ]


async def test_a_proposed_test_file_cannot_make_the_bot_read_its_hosts_files(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """The bot runs the test files a policy MR proposes. A `policy:` path outside the proposed
    folder (absolute, or climbing out of it) is refused before it is opened, with the same
    words whether or not the file exists: nothing of the host is read, quoted or probed."""
    secret = tmp_path / "host-secret.yml"
    secret.write_text("check: x\nmode: hunter2-secret-value\nrequire: [{draft: false}]\n")
    seed_mr(gitlab, ["reviewed", "status-check-policies"], labels=["reviewed"])
    gitlab.commit_files(1, "main", {f"{FOLDER}/reviewed.yml": REVIEWED})
    case = "cases:\n  - name: a\n    mr: {title: x}\n    expect: passed\n"
    gitlab.propose_files(
        1,
        1,
        {
            f"{FOLDER}/leak.test.yaml": f"policy: {secret}\n{case}",
            f"{FOLDER}/probe.test.yaml": f"policy: ../../../../../../..{secret}\n{case}",
            f"{FOLDER}/absent.test.yaml": f"policy: /nonexistent/nothing.yml\n{case}",
        },
    )
    bot = await start(tmp_path, start_bot, {})
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["status-check-policies"] == "failed"
    [note] = notes_on(gitlab, 1)
    assert "hunter2" not in note and "mode must be" not in note
    reason = (await latest(bot))["status-check-policies"]["reason"]
    assert "hunter2" not in reason and "mode must be" not in reason
    refused = "`policy`: name a check, or a policy file in this folder"
    for name in ("leak", "probe", "absent"):
        assert f"{FOLDER}/{name}.test.yaml:1: {refused}" in reason


async def test_a_policy_mr_gets_validated_tested_and_a_read_only_preview_of_every_flip(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """!1 proposes that `reviewed` take the `team` label instead of `reviewed`. Its own
    `status-check-policies` passes (the files load, their cases pass), and its note lists the
    open MRs whose verdict would flip: !2 passed → failed, !3 failed → passed. Nothing is
    posted or written on !2 and !3, and !1 itself is still judged by main's policies."""
    seed_mr(gitlab, ["reviewed", "status-check-policies"], labels=["team"])
    seed_mr(gitlab, iid=2, labels=["reviewed"], source_branch="two")
    seed_mr(gitlab, iid=3, labels=["team"], source_branch="three")
    main = gitlab.commit_files(1, "main", {f"{FOLDER}/reviewed.yml": REVIEWED})
    head = gitlab.propose_files(
        1, 1, {f"{FOLDER}/reviewed.yml": TEAM, f"{FOLDER}/reviewed.test.yaml": TEAM_CASES}
    )
    bot = await start(tmp_path, start_bot, {})
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {"reviewed": "failed", "status-check-policies": "passed"}
    assert [c.path for c in gitlab.status_posts()] == [
        "/api/v4/projects/1/merge_requests/1/status_check_responses"
    ] * 2
    assert notes_on(gitlab, 2) == notes_on(gitlab, 3) == []
    [note] = notes_on(gitlab, 1)
    proposed = f"{FOLDER}/reviewed.yml@{head[:12]}"
    assert "#### Policy preview\n\n2 verdicts of open MRs would change.\n" in note
    assert (
        f"- `!2 reviewed: passed → failed: labels: has none of team [repository {proposed}]`"
        in note
    )
    assert (
        "- `!3 reviewed: failed → passed: no longer: labels: has none of reviewed "
        f"[repository {FOLDER}/reviewed.yml@{main[:12]}]`" in note
    )
    rows = await latest(bot)
    assert rows["status-check-policies"]["reason"] == "all 3 rules hold"

    # A broken proposal and a failing case fail the check, saying where.
    gitlab.propose_files(
        1,
        1,
        {
            f"{FOLDER}/reviewed.yml": TEAM + "  - lables: {any: [x]}\n",
            f"{FOLDER}/other.test.yaml": TEAM_CASES.replace("expect: failed", "expect: passed"),
        },
    )
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1)["status-check-policies"] == "failed"
    reason = (await latest(bot))["status-check-policies"]["reason"]
    assert f"{FOLDER}/reviewed.yml:5: unknown predicate `lables`; did you mean `labels`?" in reason


async def test_the_preview_of_a_policy_mr_is_bounded_and_read_once_per_head(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """At most 50 open MRs are replayed; judging the same head again reads none of them."""
    seed_mr(gitlab, ["reviewed", "status-check-policies"])
    for iid in range(2, 54):
        seed_mr(gitlab, iid=iid, labels=["reviewed"], source_branch=f"b{iid}")
    gitlab.commit_files(1, "main", {f"{FOLDER}/reviewed.yml": REVIEWED})
    gitlab.propose_files(1, 1, {f"{FOLDER}/reviewed.yml": TEAM})
    bot = await start(tmp_path, start_bot, {}, sweep_budget=1000.0)
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    replayed = {c.path for c in gitlab.calls_to("GET", "/status_checks")} - {
        "/api/v4/projects/1/merge_requests/1/status_checks"
    }
    assert len(replayed) == 50
    [note] = notes_on(gitlab, 1)
    assert "50 verdicts of open MRs would change (2 more open MRs not looked at)" in note
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    assert [c.path for c in gitlab.calls_to("GET", "/status_checks")] == [
        "/api/v4/projects/1/merge_requests/1/status_checks"
    ]


async def test_history_rules_show_the_layer_of_every_rule(
    gitlab: FakeGitLab,
    start_bot: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m bot history --rules` prints each decision's policy (both layers) and every
    rule with the layer it came from, from STATE_DIR alone."""
    seed_mr(gitlab, ["conventional-title"])
    main_sha = gitlab.commit_files(1, "main", {f"{FOLDER}/title.yml": TICKET})
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    await bot.app[RECORD].flush()
    for name in ("GITLAB_URL", "GITLAB_TOKEN", "GITLAB_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(bot.settings.state_dir))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["history", "acme/app!1", "--rules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    central = f"{tmp_path}/central/title.yml"
    repository = f"{FOLDER}/title.yml@{main_sha[:12]}"
    assert lines[2:] == [
        f"    policy: central {central} + repository {repository}",
        f"    ✓ central {central}: the only rule holds",
        '      ✓ title: "feat: add login" matches ^(feat|fix|docs|chore)(\\(.+\\))?:  '
        f"[central {central}]",
        f"    ✗ repository {repository}: ticket in title — "
        'title: "feat: add login" does not match ACME-[0-9]+',
        '      ✗ ticket in title — title: "feat: add login" does not match ACME-[0-9]+ '
        f"[repository {repository}]",
    ]


async def test_explain_judges_with_the_target_branchs_layers(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """`explain` reads main's repository policies as the service does (GET only) and shows
    each rule's layer."""
    seed_mr(gitlab, CHECKS, labels=["team"])
    main_sha = gitlab.commit_files(1, "main", {f"{FOLDER}/title.yml": TICKET})
    bot = await start(tmp_path, start_bot)
    gitlab.reset_calls()
    out = io.StringIO()
    code = await asyncio.to_thread(explain, bot.settings, "acme/app!1", color=False, out=out)
    assert code == 0
    text = out.getvalue()
    assert "repository policies of main (1 file)" in text
    assert (
        f"conventional-title (central {tmp_path}/central/title.yml + repository "
        f"{FOLDER}/title.yml@{main_sha[:12]})" in text
    )
    assert (
        f'    ✗ ticket in title — title: "feat: add login" does not match ACME-[0-9]+ '
        f"[repository {FOLDER}/title.yml@{main_sha[:12]}]\n" in text
    )
    assert {c.method for c in gitlab.calls} == {"GET"}


async def test_a_push_to_a_branch_no_judged_mr_targets_costs_nothing(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """A push to an MR's source branch (the Merge Request Hook brings that change) makes no
    request for repository policies: the bot never judged anything by that branch's."""
    seed_mr(gitlab, CHECKS, labels=["team"])
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    before = gitlab.branch_sha(1, "feature")
    after = gitlab.commit_files(1, "feature", {"src/app.py": "x = 1\n"})
    gitlab.reset_calls()
    status, _ = await bot.deliver(gitlab.push_hook(1, "feature", before, after), event="Push Hook")
    assert status == 202
    await bot.settle()
    assert gitlab.calls == []


# -- sizes: a huge file, too many files ----------------------------------------------------------


def policy_files(count: int, prefix: str = "c") -> dict[str, str | bytes | None]:
    return {
        f"{FOLDER}/{prefix}{n:03}.yml": f"check: {prefix}{n:03}\nrequire:\n  - draft: false\n"
        for n in range(count)
    }


async def test_a_huge_repository_file_fails_its_own_check_and_is_not_held_whole(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """A 30 MB `big.yml` on main: the bot reads no more of it than a policy file may hold
    (plus one byte, to know it is over), fails the check it would define with `file:1:` and
    a true reason (larger than the limit: its exact size was never read), and leaves the other
    checks alone. What the bot keeps of it is bounded by the limit, not by the file."""
    seed_mr(gitlab, [*CHECKS, "big"], labels=["team", "reviewed"])
    huge = b"check: big\nrequire:\n  - draft: false\n" + b"# padding\n" * 3_000_000
    gitlab.commit_files(1, "main", {f"{FOLDER}/big.yml": huge, f"{FOLDER}/r.yml": REVIEWED})
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {
        "conventional-title": "passed",
        "labelled": "passed",
        "reviewed": "passed",
        "big": "failed",
    }
    rows = await latest(bot)
    assert rows["big"]["reason"].endswith(
        f"{FOLDER}/big.yml:1: the policy file is larger than 64 kB: split it up"
    )
    blobs = bot.app[EVALUATOR].repository._blobs
    held = sum(len(data) for data in blobs.values())
    assert held <= MAX_POLICY_BYTES + 1 + len(REVIEWED)


async def test_more_than_100_policy_files_fail_every_check_closed_once_per_commit(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """101 policy files on main: not a GitLab outage but the repository's problem. Every
    listed check fails at once (the folder could define any of them), says why at
    `.gitlab/status-checks:1` and what to do, does not wake itself up, and the same head is
    never read again. Far more files: the tree is not read past the page that tells."""
    seed_mr(gitlab, CHECKS, labels=["team", "reviewed"])
    main = gitlab.commit_files(1, "main", policy_files(101))
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == dict.fromkeys(CHECKS, "failed")
    rows = await latest(bot)
    problem = f"{FOLDER}:1: 101 policy and test files, at most 100"
    assert rows["reviewed"]["reason"] == (
        f"repository {FOLDER}@{main[:12]}: the repository policies are not read: {problem}"
    )
    for check in CHECKS:
        assert problem in rows[check]["reason"] or any(
            problem in text for text in leaves(rows[check]["outcome"])
        ), rows[check]
        assert rows[check]["wake_at"] is None
    assert rows["reviewed"]["outcome"]["fix"] == (
        f"remove policy or test files from {FOLDER}/ of `main` (by merge request): "
        "at most 100 are read"
    )
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    assert repository_reads(gitlab) == []  # no extra request per evaluation
    assert gitlab.statuses(1, 1) == dict.fromkeys(CHECKS, "failed")

    after = gitlab.commit_files(1, "main", policy_files(250, prefix="d"))
    gitlab.reset_calls()
    status, body = await bot.deliver(gitlab.push_hook(1, "main", main, after), event="Push Hook")
    assert status == 202, body
    await bot.settle()
    assert len(gitlab.calls_to("GET", "/repository/tree")) == 2  # 100 a page: 200 tell
    assert gitlab.calls_to("GET", "/repository/files/") == []
    rows = await latest(bot)
    assert rows["reviewed"]["reason"].endswith(
        f"{FOLDER}:1: at least 200 policy and test files, at most 100"
    )


async def test_100_policy_files_and_any_number_of_other_files_are_read(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """The limit counts policy and test files only: 500 fixtures in a subfolder do not count
    (and are never downloaded)."""
    seed_mr(gitlab, CHECKS, labels=["team", "reviewed"])
    files = {**policy_files(99), f"{FOLDER}/r.yml": REVIEWED}
    files |= {f"{FOLDER}/fixtures/f{n:03}.json": "{}" for n in range(500)}
    gitlab.commit_files(1, "main", files)
    bot = await start(tmp_path, start_bot)
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == dict.fromkeys(CHECKS, "passed")
    assert len(gitlab.calls_to("GET", "/repository/files/")) == 100
    rows = await latest(bot)
    assert rows["reviewed"]["policy_path"].startswith(f"repository {FOLDER}/r.yml@")


async def test_a_policy_mr_with_too_many_files_fails_its_check_and_does_not_wait(
    gitlab: FakeGitLab, start_bot: Callable[..., Any], tmp_path: Path
) -> None:
    """An MR proposing 102 policy files: `status-check-policies` fails (the files are the
    MR's problem, not GitLab's), wakes nothing up, and judging the same head again reads
    nothing of the repository."""
    seed_mr(gitlab, ["reviewed", "status-check-policies"], labels=["team", "reviewed"])
    gitlab.commit_files(1, "main", {f"{FOLDER}/reviewed.yml": REVIEWED})
    gitlab.propose_files(1, 1, policy_files(101))
    bot = await start(tmp_path, start_bot, {})
    await deliver(bot, gitlab)
    assert gitlab.statuses(1, 1) == {"reviewed": "passed", "status-check-policies": "failed"}
    rows = await latest(bot)
    row = rows["status-check-policies"]
    assert f"{FOLDER}:1: 102 policy and test files, at most 100" in row["reason"]
    assert row["wake_at"] is None
    gitlab.reset_calls()
    await deliver(bot, gitlab)
    assert repository_reads(gitlab) == []
    assert gitlab.statuses(1, 1)["status-check-policies"] == "failed"
