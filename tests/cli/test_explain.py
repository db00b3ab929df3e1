"""`explain` against the fake GitLab: what it reads, what it prints, how it fails; in-process,
then as users run it (`python -m bot explain` in a real subprocess)."""

from __future__ import annotations

import asyncio
import io
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.cli.explain import explain, use_color
from bot.config import Settings
from bot.keys import parse_reference
from tests.conftest import TOKEN, write_policies
from tests.fakegitlab import FakeGitLab, diff_file
from tests.processes import SHIPPED, explain_process

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TITLE_ONLY = {"title.yml": "check: conventional-title\nrequire:\n  - title: '^feat: '\n"}
REVIEW = {
    "review.yml": """
        check: review
        require:
          - approvals: {count: 1, from: {groups: [acme/security]}}
          - commits: {signed_off: true}
    """
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("group/app!42", ("group/app", 42)), ("17!42", (17, 42)), (" a/b/c!1 ", ("a/b/c", 1))],
)
def test_references(text: str, expected: tuple[Any, int]) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["group/app", "group/app!", "!4", "x!0", "x!abc", "a b!1"])
def test_bad_references(text: str) -> None:
    with pytest.raises(ValueError, match="is not PROJECT!IID"):
        parse_reference(text)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert use_color(Terminal(), {}) is True
    assert use_color(io.StringIO(), {}) is False
    assert use_color(Terminal(), {"NO_COLOR": "1"}) is False
    assert use_color(Terminal(), {"NO_COLOR": ""}) is True  # no-color.org: set and non-empty


def seed(gitlab: FakeGitLab) -> None:
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    gitlab.add_project(7, "group/app")
    gitlab.add_mr(
        7,
        42,
        title="feat: login",
        labels=["backend"],
        author={"id": 1, "username": "alice"},
        diffs=[diff_file("src/auth/login.py", additions=5, renamed_from="src/login.py")],
        commits=[{"id": "a" * 40, "message": "feat: login\n\nSigned-off-by: Alice <a@x>"}],
        approved_by=[{"id": 3, "username": "carol"}],
    )
    gitlab.add_status_check(7, "conventional-title")
    gitlab.add_status_check(7, "review")


async def run_explain(
    gitlab: FakeGitLab, policies: Path, reference: str = "group/app!42", color: bool = False
) -> tuple[int, str]:
    settings = Settings(
        gitlab_url=gitlab.url, gitlab_token=TOKEN, policy_dir=policies, gitlab_timeout=2.0
    )
    out = io.StringIO()
    code = await asyncio.to_thread(explain, settings, reference, color=color, out=out)
    return code, out.getvalue()


# The target branch's head and its .gitlab/status-checks/ folder (none here: a 404).
REPOSITORY_READS = {
    "/projects/:id/repository/branches/:branch": 1,
    "/projects/:id/repository/tree": 1,
}


def routes(gitlab: FakeGitLab) -> Counter[str]:
    mr = "/projects/:id/merge_requests/:merge_request_iid"
    return Counter(c.route.split(" ", 1)[1].replace(mr, "MR") for c in gitlab.calls)


async def test_a_title_policy_reads_only_the_mr_and_its_checks(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    seed(gitlab)
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", TITLE_ONLY))
    assert code == 0
    assert routes(gitlab) == Counter(
        {"/version": 1, "MR": 1, "MR/status_checks": 1, **REPOSITORY_READS}
    )
    assert (
        "facts fetched: MR, status checks, repository policies of main (none) "
        "(5 requests, all reads)" in out
    )
    assert "  status checks: conventional-title pending, review pending" in out
    assert "status checks with no policy here: review" in out
    assert out.rstrip().splitlines()[-2] == "1 policy: 1 passed, 0 failed"


async def test_the_facts_a_policy_needs_are_read_and_shown(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    seed(gitlab)
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", REVIEW))
    assert code == 0
    assert routes(gitlab) == Counter(
        {
            "/version": 1,
            "MR": 1,
            "MR/status_checks": 1,
            "MR/approvals": 1,
            "MR/versions": 1,
            "/projects/:id/approvals": 1,
            "MR/commits": 1,
            "/groups/:id/members": 1,
            "/groups/:id/members/all": 1,
            "/groups/:id/descendant_groups": 1,
            **REPOSITORY_READS,
        }
    )
    lines = out.splitlines()
    assert (
        "facts fetched: MR, status checks, repository policies of main (none), approvals, "
        "commits, members of acme/security (12 requests, all reads)" in lines
    )
    assert (
        "  MR: author alice; labels backend; not a draft; pipeline none; no conflicts; "
        "blocking threads resolved" in lines
    )
    assert "  approvals: carol" in lines
    assert "  commits: 1: aaaaaaaa feat: login" in lines
    assert "  members of acme/security: carol" in lines
    assert "  ✓ approvals: 1 of 1 from acme/security (carol)" in lines
    assert "  ✓ commits: the only commit is signed off" in lines


async def test_renamed_files_show_both_paths(gitlab: FakeGitLab, tmp_path: Path) -> None:
    seed(gitlab)
    policies = {"src.yml": "check: src\nrequire:\n  - changed_files: ['src/**']\n"}
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", policies))
    assert code == 0
    assert "  diffs: 1 file, +5 -0: src/login.py → src/auth/login.py" in out.splitlines()


async def test_colour_is_used_when_asked(gitlab: FakeGitLab, tmp_path: Path) -> None:
    seed(gitlab)
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", TITLE_ONLY), color=True)
    assert code == 0
    assert "\x1b[32m✓\x1b[0m" in out and "\x1b[1mconventional-title\x1b[0m" in out


async def test_unreadable_status_checks_do_not_stop_the_explanation(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    seed(gitlab)
    gitlab.licensed = False  # no Ultimate: the status check endpoints answer 401
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", TITLE_ONLY))
    assert code == 0
    assert "  status checks: not readable: GitLab answered 401: the token is invalid" in out
    assert "conventional-title (" in out and "— status checks not readable" in out
    assert "✓ conventional-title: passed" in out


async def test_facts_gitlab_refuses_are_shown_and_fail_the_policies_needing_them(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    seed(gitlab)
    gitlab.fail(403, times=5, path_contains="/approvals")
    code, out = await run_explain(gitlab, write_policies(tmp_path / "p", REVIEW))
    assert code == 0
    assert "could not read approvals: GitLab answered 403: the token's user lacks a role" in out
    assert "cannot read approvals: GitLab answered 403" in out  # the verdict's reason


async def test_an_unreachable_gitlab_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeGitLab(token=TOKEN) as gitlab:
        url = gitlab.url
    closed = FakeGitLab(token=TOKEN)
    closed.url = url  # nothing listens there any more
    code, out = await run_explain(closed, write_policies(tmp_path / "p", TITLE_ONLY))
    assert (code, out) == (1, "")
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: cannot read merge request group/app!42: GitLab is unreachable")


async def test_an_invalid_policy_is_reported_with_file_and_line(
    gitlab: FakeGitLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_policies(tmp_path / "p", {"bad.yml": "require:\n  - draft: maybe\n"})
    code, out = await run_explain(gitlab, folder)
    assert (code, out) == (1, "")
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: invalid policy: {folder}/bad.yml:2: `draft` must be true or false, got a string"
    ]
    assert gitlab.calls == []


# --- as a real subprocess ---------------------------------------------------------------------


def seed_explain(gitlab: FakeGitLab) -> None:
    """group/app!42: an auth change by alice, approved only by alice herself, 500 lines."""
    gitlab.add_group(11, "acme/security", [{"id": 1, "username": "alice"}])
    gitlab.add_project(7, "group/app")
    gitlab.add_mr(
        7,
        42,
        title="Add login",
        author={"id": 1, "username": "alice"},
        diffs=[diff_file("src/auth/login.py", additions=450, deletions=50)],
        approved_by=[{"id": 1, "username": "alice"}],
        pipeline="running",
    )
    gitlab.add_status_check(7, "security-review")
    gitlab.add_status_check(7, "conventional-title")
    gitlab.add_status_check(7, "another-service")


async def test_explain_prints_the_tree_with_evidence_and_facts_and_writes_nothing(
    gitlab: FakeGitLab,
) -> None:
    seed_explain(gitlab)
    code, out, err = await explain_process(gitlab, "group/app!42")
    assert (code, err) == (0, "")
    assert not ANSI.search(out), "no colour when stdout is not a terminal"
    lines = out.splitlines()
    assert lines[0] == "group/app!42: Add login"
    assert any(
        line.startswith(
            "facts fetched: MR, status checks, repository policies of main (none), diffs, "
            "line counts,"
        )
        and "members of acme/security" in line
        and "all reads" in line
        for line in lines
    )
    assert "  diffs: 1 file, +450 -50: src/auth/login.py" in lines
    assert "  approvals: alice" in lines
    assert "  members of acme/security: alice" in lines
    assert f"security-review ({SHIPPED}/security-review.yml) — GitLab shows pending" in lines
    assert (
        "  ✗ security approval — approvals: 0 of 1 from acme/security "
        "(alice approved but is the author)" in lines
    )
    assert "      fix: get 1 more approval from acme/security" in lines
    assert "      ✗ changed_lines: 500 > max 400" in lines
    assert '  ✗ conventional title — title: "Add login" does not match' in out
    assert "status checks with no policy here: another-service" in lines
    assert re.search(r"^6 policies: \d passed( \(\d not applicable\))?, \d failed \(", out, re.M)
    assert [c for c in gitlab.calls if c.method != "GET"] == []
    assert gitlab.statuses(7, 42) == {
        "security-review": "pending",
        "conventional-title": "pending",
        "another-service": "pending",
    }


async def test_explain_by_project_id(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, _ = await explain_process(gitlab, "7!42")
    assert code == 0
    assert out.startswith("group/app!42: Add login\n")


async def test_explain_a_missing_mr_is_a_clear_error(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, err = await explain_process(gitlab, "group/app!99")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "error: cannot read merge request group/app!99: GitLab answered 404: the project, "
        "merge request or status check does not exist, or the token's user cannot see it "
        "(add it as a member of the project)"
    ]


async def test_explain_a_malformed_reference_is_a_usage_error(gitlab: FakeGitLab) -> None:
    code, out, err = await explain_process(gitlab, "group/app#42")
    assert (code, out) == (2, "")
    assert err.startswith("error: 'group/app#42' is not PROJECT!IID")
    assert gitlab.calls == []


async def test_explain_colours_a_terminal_unless_no_color(gitlab: FakeGitLab) -> None:
    seed_explain(gitlab)
    code, out, _ = await explain_process(gitlab, "group/app!42", tty=True)
    assert code == 0
    assert "\x1b[31m✗\x1b[0m" in out and "\x1b[32m✓\x1b[0m" in out
    code, out, _ = await explain_process(gitlab, "group/app!42", tty=True, NO_COLOR="1")
    assert code == 0
    assert not ANSI.search(out)
    assert "✗ security approval — approvals: 0 of 1" in out
