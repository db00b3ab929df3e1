"""Policy test cases (`*.test.yaml`) and `run_tests`, including the shipped policies' own cases."""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path

import pytest

from bot.policy import run_tests, validate_paths
from bot.policy.facts import GroupMembers
from bot.policy.testing import make_facts, parse_test_file

SHIPPED = Path(__file__).parents[2] / "policies"

POLICY = """
check: size-limit
require:
  - name: small enough
    any:
      - changed_lines: {max: 400}
      - labels: {any: [hotfix]}
  - pipeline: success
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run(*paths: Path | str) -> tuple[int, int, list[str]]:
    out = io.StringIO()
    passed, failed = run_tests([str(path) for path in paths], out)
    return passed, failed, out.getvalue().splitlines()


def test_shipped_policies_pass_their_own_cases() -> None:
    passed, failed, lines = run(SHIPPED)
    assert failed == 0, "\n".join(line for line in lines if not line.startswith("PASS"))
    assert passed >= 40
    assert lines[-1] == f"{passed} passed, 0 failed"
    checks = {line.split(":")[0].removeprefix("PASS ") for line in lines[:-1]}
    assert checks == {
        "security-review",
        "conventional-title",
        "change-freeze",
        "size-limit",
        "pipeline-green",
        "docs-or-approval",
    }


def test_shipped_cases_catch_a_broken_policy(tmp_path: Path) -> None:
    copy = tmp_path / "policies"
    shutil.copytree(SHIPPED, copy)
    size = copy / "size-limit.yml"
    size.write_text(size.read_text().replace("max: 400", "max: 4000"))
    freeze = copy / "change-freeze.yml"
    freeze.write_text(freeze.read_text().replace("Europe/Berlin", "UTC"))
    passed, failed, lines = run(copy)
    assert failed > 0
    failing = [line for line in lines if line.startswith("FAIL")]
    assert any(
        line.startswith("FAIL size-limit: a big change: expected failed") for line in failing
    )
    assert any(line.startswith("FAIL change-freeze: ") for line in failing)
    assert lines[-1] == f"{passed} passed, {failed} failed"


def test_case_lines_and_failure_format(tmp_path: Path) -> None:
    write(tmp_path, "size-limit.yml", POLICY)
    write(
        tmp_path,
        "size-limit.test.yaml",
        """
        policy: size-limit
        defaults:
          pipeline: success
        cases:
          - name: small
            mr:
              changed_files: [{path: a.py, additions: 10}]
            expect: passed
          - name: wrongly expected to fail
            mr: {changed_files: [a.py]}
            expect: failed
          - name: big
            mr:
              changed_files: [{path: a.py, additions: 401}]
            expect: {verdict: failed, failing: [small enough]}
          - name: big, leaves named
            mr:
              changed_files: [{path: a.py, additions: 401}]
            expect: {verdict: failed, failing: [changed_lines, labels]}
          - name: wrong failing rules
            mr:
              pipeline: running
              changed_files: [{path: a.py, additions: 401}]
            expect: {verdict: failed, failing: [pipeline]}
          - name: reason substring
            mr: {pipeline: null}
            expect: {verdict: failed, reason: "waiting for a pipeline for"}
        """,
    )
    passed, failed, lines = run(tmp_path)
    test_file = tmp_path / "size-limit.test.yaml"
    assert lines == [
        "PASS size-limit: small",
        "FAIL size-limit: wrongly expected to fail: expected failed, got passed "
        f"(all 2 rules hold) [{test_file}:9]",
        "PASS size-limit: big",
        "PASS size-limit: big, leaves named",
        "FAIL size-limit: wrong failing rules: expected failing rules [pipeline], got "
        "[changed_lines, labels, pipeline] (changed_lines: 401 > max 400; "
        "labels: has none of hotfix; pipeline: waiting for pipeline (running)) "
        f"[{test_file}:20]",
        "PASS size-limit: reason substring",
        "4 passed, 2 failed",
    ]
    assert (passed, failed) == (4, 2)


def test_tests_folder_policy_by_file_and_single_policy_selection(tmp_path: Path) -> None:
    write(tmp_path, "size-limit.yml", POLICY)
    write(tmp_path, "other.yml", "require: [{draft: false}]\n")
    write(
        tmp_path,
        "tests/nested/size.test.yml",
        """
        policy: size-limit
        cases:
          - {name: no pipeline, expect: failed}
        """,
    )
    write(
        tmp_path,
        "tests/other.test.yaml",
        """
        policy: ../other.yml
        cases:
          - {name: draft, mr: {draft: true}, expect: failed}
          - {name: ready, expect: passed}
        """,
    )
    assert run(tmp_path)[:2] == (3, 0)
    assert run(tmp_path / "other.yml")[2] == [
        "PASS other: draft",
        "PASS other: ready",
        "2 passed, 0 failed",
    ]
    assert run(tmp_path / "tests" / "other.test.yaml")[:2] == (2, 0)


def test_test_file_problems_are_reported_with_lines_and_count_as_failures(tmp_path: Path) -> None:
    write(tmp_path, "size-limit.yml", POLICY)
    bad = write(
        tmp_path,
        "size.test.yaml",
        """
        policy: size-limt
        cases:
          - name: x
            mr: {titel: x, now: "2026-01-01T10:00:00"}
            expect: pased
          - name: y
            mr:
              changed_files: [{pth: a}]
              pipeline: sucess
            expect: {verdict: failed, failng: [x]}
        """,
    )
    passed, failed, lines = run(tmp_path)
    assert lines == [
        f"ERROR {bad}:1: `policy`: no policy with check `size-limt` in {tmp_path}; "
        "did you mean `size-limit`? (checks: size-limit)",
        f"ERROR {bad}:4: unknown key `titel` in `mr`; did you mean `title`?",
        f"ERROR {bad}:5: `expect` must be passed or failed, got `pased`",
        f"ERROR {bad}:8: unknown key `pth` in an item of `changed_files`; did you mean `path`?",
        f"ERROR {bad}:9: unknown pipeline status `sucess`; did you mean `success`?",
        f"ERROR {bad}:10: unknown key `failng` in `expect`; did you mean `failing`?",
        "0 passed, 6 failed",
    ]
    assert (passed, failed) == (0, 6)
    assert [problem.line for problem in validate_paths([str(bad)])] == [1, 4, 5, 8, 9, 10]


def test_unknown_failing_rule_name_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "size-limit.yml", POLICY)
    bad = write(
        tmp_path,
        "size.test.yaml",
        """
        policy: size-limit
        cases:
          - name: x
            expect: {verdict: failed, failing: [small enuf]}
        """,
    )
    _, failed, lines = run(bad)
    assert lines[0] == (
        f"ERROR {bad}:4: `failing`: `size-limit` has no rule `small enuf`; did you mean "
        "`small enough`? (its rules: small enough, changed_lines, labels, pipeline)"
    )
    assert failed == 1  # one mistake, one failure: the case that names it is not run


def test_now_needs_an_offset_and_broken_defaults_run_nothing(tmp_path: Path) -> None:
    write(tmp_path, "size-limit.yml", POLICY)
    bad = write(
        tmp_path,
        "size.test.yaml",
        """
        policy: size-limit
        defaults:
          now: 2026-01-01 10:00
        cases:
          - {name: x, expect: failed}
        """,
    )
    assert run(tmp_path)[2] == [
        f"ERROR {bad}:3: `now`: `2026-01-01 10:00` needs a UTC offset, "
        "e.g. 2026-01-01 10:00Z or +01:00",
        "0 passed, 1 failed",
    ]


def test_a_broken_policy_is_an_error_not_a_crash(tmp_path: Path) -> None:
    policy = write(tmp_path, "size-limit.yml", "require:\n  - changed_lines: {max: lots}\n")
    write(tmp_path, "size.test.yaml", "policy: size-limit\ncases: [{expect: passed}]\n")
    _, failed, lines = run(tmp_path)
    assert lines == [
        f"ERROR {policy}:2: `changed_lines.max` must be a whole number, got a string",
        "0 passed, 1 failed",
    ]
    assert failed == 1


def test_nothing_to_run(tmp_path: Path) -> None:
    assert run(tmp_path) == (0, 0, [])  # the caller says so and fails (`NO_CASES`)
    assert run(tmp_path / "missing")[2] == [
        f"ERROR {tmp_path / 'missing'}:1: no such file or folder",
        "0 passed, 1 failed",
    ]


def test_mr_fields_reach_the_facts(tmp_path: Path) -> None:
    write(tmp_path, "p.yml", "require: [{draft: false}]\n")
    path = write(
        tmp_path,
        "p.test.yaml",
        """
        policy: p
        defaults:
          group_members: {acme/security: [sam]}
          author: alice
        cases:
          - name: everything
            mr:
              title: "feat: x"
              description: ""
              labels: [a, b]
              draft: false
              source_branch: feature/x
              target_branch: release/1
              project: acme/app
              sha: 0000000000000000000000000000000000000001
              pipeline: success
              has_conflicts: true
              unresolved_threads: 2
              changed_files:
                - src/a.py
                - {old_path: a, new_path: b, additions: 1, deletions: 2}
                - {path: c, deleted: true}
              approved_by: [sam, bob]
              commits: ["fix: a", {sha: abc, message: "fix: b"}]
              group_members: {acme/leads: [Lee]}
              now: "2026-03-27T16:00:00+01:00"
            expect: passed
        """,
    )
    case = parse_test_file(path).cases[0]
    facts = make_facts(**case.mr)
    assert facts.title == "feat: x"
    assert facts.labels == ("a", "b")
    assert (facts.source_branch, facts.target_branch) == ("feature/x", "release/1")
    assert facts.project_path == "acme/app"
    assert facts.author.username == "alice"
    assert facts.pipeline_status == "success"
    assert facts.has_conflicts and facts.unresolved_threads == 2
    assert not facts.blocking_discussions_resolved
    assert facts.changed_files is not None
    assert [changed.paths for changed in facts.changed_files] == [("src/a.py",), ("a", "b"), ("c",)]
    assert facts.changed_files[1].renamed_file and facts.changed_files[2].deleted_file
    assert [user.username for user in facts.approved_by or ()] == ["sam", "bob"]
    assert [commit.message for commit in facts.commits or ()] == ["fix: a", "fix: b"]
    assert facts.group_members == {
        "acme/security": GroupMembers(frozenset({"sam"})),
        "acme/leads": GroupMembers(frozenset({"lee"})),
    }
    assert facts.now.isoformat() == "2026-03-27T16:00:00+01:00"


@pytest.mark.parametrize("expect", ["passed", "{verdict: passed, applicable: false}"])
def test_applicability_expectation(tmp_path: Path, expect: str) -> None:
    write(tmp_path, "p.yml", "applies_to: {target_branches: main}\nrequire: [{draft: false}]\n")
    write(
        tmp_path,
        "p.test.yaml",
        f"policy: p\ncases:\n  - {{mr: {{target_branch: dev, draft: true}}, expect: {expect}}}\n",
    )
    assert run(tmp_path)[2][0] == "PASS p: case 1"
