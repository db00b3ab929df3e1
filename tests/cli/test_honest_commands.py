"""Commands that cannot lie (issue 11 item 7): `validate` and `test` in a real process, as a CI
job runs them. A folder with nothing to check, or no test cases, exits 1 with one clear line (a
typo in a CI path must not go green); `validate` checks the test files of the folders it is
given; one mistake counts once in `test`."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.processes import run_bot as bot

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies"

SIZE = """\
check: size-limit
require:
  - name: small enough
    any:
      - changed_lines: {max: 400}
      - labels: {any: [hotfix]}
"""
SIZE_TESTS = """\
policy: size-limit
cases:
  - name: small
    mr: {changed_files: [{path: a.py, additions: 3}]}
    expect: passed
  - name: big
    mr: {changed_files: [{path: a.py, additions: 900}]}
    expect: {verdict: failed, failing: [small enough]}
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def outcome(result: subprocess.CompletedProcess[str]) -> tuple[int, list[str], list[str]]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result.stderr.splitlines()


# -- nothing to check ---------------------------------------------------------------------------


def test_validate_a_folder_without_policy_files_exits_1_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "polices"  # the typo a CI job makes
    empty.mkdir()
    (empty / "README.md").write_text("not a policy\n")
    assert outcome(bot("validate", empty)) == (
        1,
        [],
        [f"error: no policy or test files in {empty} (policies are *.yml or *.yaml files)"],
    )
    # One empty folder among good ones is still a typo: it fails too.
    assert outcome(bot("validate", SHIPPED, empty))[0] == 1


def test_test_a_folder_without_cases_exits_1_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_cases = write(tmp_path / "untested", {"size.yml": SIZE})
    for folder in (empty, no_cases):
        assert outcome(bot("test", folder)) == (
            1,
            [],
            [
                f"error: no test cases in {folder} "
                "(put *.test.yaml files beside the policies or under tests/)"
            ],
        )


def test_test_a_policy_file_nobody_tests_exits_1(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", {"size.yml": SIZE, "other.yml": "require: [{draft: false}]\n"})
    write(folder, {"size.test.yaml": SIZE_TESTS})
    code, out, err = outcome(bot("test", folder / "other.yml"))
    assert (code, out) == (1, [])
    assert err == [
        f"error: no test cases in {folder / 'other.yml'} "
        "(put *.test.yaml files beside the policies or under tests/)"
    ]


def test_a_test_file_with_no_cases_is_a_problem_for_both_commands(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", {"size.yml": SIZE, "size.test.yaml": "policy: size-limit\n"})
    (folder / "size.test.yaml").write_text("policy: size-limit\ncases: []\n")
    problem = f"{folder}/size.test.yaml:2: `cases` must not be an empty list"
    assert outcome(bot("validate", folder)) == (1, [problem], ["1 problem found"])
    assert outcome(bot("test", folder)) == (1, [f"ERROR {problem}", "0 passed, 1 failed"], [])


# -- validate checks the test files of the folders it is given ---------------------------------


def test_validate_checks_test_files_beside_and_under_tests(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "p",
        {
            "size.yml": SIZE,
            "size.test.yaml": SIZE_TESTS.replace("mr: {changed", "mr: {titel: x, changed", 1),
            "tests/more.test.yaml": """\
                policy: size-limt
                cases: [{expect: passed}]
            """,
        },
    )
    code, out, err = outcome(bot("validate", folder))
    assert (code, err) == (1, ["2 problems found"])
    assert out == [
        f"{folder}/size.test.yaml:4: unknown key `titel` in `mr`; did you mean `title`?",
        f"{folder}/tests/more.test.yaml:1: `policy`: no policy with check `size-limt` in "
        f"{folder}; did you mean `size-limit`? (checks: size-limit)",
    ]


def test_validate_reports_a_broken_policy_once_though_its_tests_name_it(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "p",
        {
            "size.yml": "check: size-limit\nrequire:\n  - changed_lines: {max: lots}\n",
            "size.test.yaml": SIZE_TESTS,
            "tests/again.test.yaml": SIZE_TESTS,
        },
    )
    assert outcome(bot("validate", folder)) == (
        1,
        [f"{folder}/size.yml:3: `changed_lines.max` must be a whole number, got a string"],
        ["1 problem found"],
    )


def test_the_shipped_tests_folder_is_checked_against_its_policies() -> None:
    """`policies/tests` holds test files only: their policies are the folder above."""
    assert outcome(bot("validate", SHIPPED / "tests")) == (0, ["policies are valid"], [])
    code, out, _ = outcome(bot("test", SHIPPED / "tests"))
    assert code == 0 and out[-1].endswith(" passed, 0 failed") and not out[-1].startswith("0 ")


# -- one mistake counts once ---------------------------------------------------------------------


def test_a_typo_in_failing_counts_once(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "p",
        {"size.yml": SIZE, "size.test.yaml": SIZE_TESTS.replace("[small enough]", "[small enuf]")},
    )
    code, out, _ = outcome(bot("test", folder))
    assert code == 1
    assert out == [
        f"ERROR {folder}/size.test.yaml:8: `failing`: `size-limit` has no rule `small enuf`; "
        "did you mean `small enough`? (its rules: small enough, changed_lines, labels)",
        "PASS size-limit: small",
        "1 passed, 1 failed",
    ]


def test_a_folder_and_a_policy_file_in_it_run_each_case_once(tmp_path: Path) -> None:
    folder = write(tmp_path / "p", {"size.yml": SIZE, "size.test.yaml": SIZE_TESTS})
    broken = SIZE_TESTS.replace("{verdict: failed, failing: [small enough]}", "passed")
    write(folder, {"tests/broken.test.yaml": broken})
    code, out, _ = outcome(bot("test", folder, folder / "size.yml", folder / "tests"))
    assert code == 1
    assert out == [
        "PASS size-limit: small",
        "PASS size-limit: big",
        "PASS size-limit: small",
        "FAIL size-limit: big: expected passed, got failed (changed_lines: 900 > max 400; "
        f"labels: has none of hotfix) [{folder}/tests/broken.test.yaml:6]",
        "3 passed, 1 failed",
    ]
