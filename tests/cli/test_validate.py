"""`python -m bot validate` as users run it, in a real subprocess."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import TOKEN, write_policies
from tests.fakegitlab import FakeGitLab
from tests.processes import (
    SHIPPED,
    assert_one_error_line,
    run_bot,
)


def test_validate_accepts_the_shipped_policies() -> None:
    result = run_bot("validate", str(SHIPPED))
    assert (result.returncode, result.stdout, result.stderr) == (0, "policies are valid\n", "")


def test_validate_reports_every_problem_as_file_line_message(tmp_path: Path) -> None:
    folder = write_policies(
        tmp_path / "p",
        {
            "a.yml": """\
                check: review
                require:
                  - lables: {any: [reviewed]}
                  - approvals:
                      form: {groups: [acme/security]}
            """,
            "b.yml": "check: review\nrequire:\n  - draft: false\n",
            "c.yml": """\
                check: freeze
                require:
                  - freeze:
                      timezone: Europe/Berln
                      windows: [{from: Fri 16:00, to: Mon 08:00}]
            """,
            "d.yml": "check: empty\nrequire: []\n",
        },
    )
    result = run_bot("validate", str(folder))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{folder}/a.yml:3: unknown predicate `lables`; did you mean `labels`?",
        f"{folder}/a.yml:5: unknown key `form` in `approvals`; did you mean `from`?",
        f"{folder}/c.yml:4: unknown timezone `Europe/Berln`; did you mean `Europe/Berlin`? "
        "(use an IANA name like Europe/Berlin)",
        f"{folder}/d.yml:2: `require` is empty: give at least one rule",
        f"{folder}/b.yml:1: duplicate check `review`: already defined in {folder}/a.yml:1",
    ]
    assert result.stderr == "5 problems found\n"


async def test_validate_warns_about_groups_and_users_gitlab_cannot_show(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """A typo in a group name would leave every rule consulting it undecided: with a token,
    `validate` names it, where, and what GitLab said (a warning: the policy itself is valid)."""
    gitlab.add_group(11, "acme/security", [{"id": 3, "username": "carol"}])
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "dba.yml").write_text(
        "check: dba-review\n"
        "require:\n"
        "  - approvals: {count: 1, from: {groups: [acme/dba, acme/security]}}\n"
        "  - author: {users: [nobody-here]}\n"
    )
    result = await asyncio.to_thread(
        run_bot, "validate", str(folder), GITLAB_URL=gitlab.url, GITLAB_TOKEN=TOKEN
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"warning: {folder}/dba.yml:3: group acme/dba: GitLab answered 404: the project, merge "
        "request or status check does not exist, or the token's user cannot see it (add it as "
        "a member of the project)",
        f"warning: {folder}/dba.yml:4: user nobody-here: GitLab has no such user",
        "policies are valid",
    ]


def test_validate_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    assert_one_error_line(run_bot("validate", str(tmp_path / "nope")), "no such file or folder")


def test_validate_judges_a_repository_folder_as_the_bot_reads_it(tmp_path: Path) -> None:
    """`replaceable:` loads centrally but is refused in `.gitlab/status-checks/` (the bot fails
    that check): `validate`, the fix the bot names, must say so too, with file and line."""
    repository = write_policies(
        tmp_path / "app" / ".gitlab" / "status-checks",
        {"size.yml": "check: size\nreplaceable: true\nrequire:\n  - draft: false\n"},
    )
    result = run_bot("validate", str(repository))
    assert (result.returncode, result.stdout) == (
        1,
        f"{repository}/size.yml:1: `replaceable` is for central policies: remove it here\n",
    )
    central = write_policies(
        tmp_path / "central", {"size.yml": (repository / "size.yml").read_text()}
    )
    assert run_bot("validate", str(central)).returncode == 0
