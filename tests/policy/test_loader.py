"""Loading policies: the model it builds, and every error class reported at its exact line."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from bot.policy import (
    PolicyLoadError,
    load_policy_dir,
    load_policy_file,
    load_policy_text,
    validate_paths,
)


def problems_of(text: str, name: str = "p.yml") -> list[str]:
    """`line: message` for every problem of a policy text."""
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_text(textwrap.dedent(text).lstrip("\n"), name)
    assert all(problem.path == name for problem in caught.value.problems)
    return [f"{problem.line}: {problem.message}" for problem in caught.value.problems]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --- the model ------------------------------------------------------------------------------


def test_full_policy_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "security.yml",
        """
        check: security-review
        description: Auth changes need security.
        mode: advisory
        comment: on_failure
        applies_to:
          projects: ["acme/*"]
          target_branches: [main]
          changed_files: ["src/auth/**"]
        require:
          - approvals: {count: 1, from: {groups: [acme/security]}}
          - name: green
            pipeline: success
        """,
    )
    policy = load_policy_file(path)
    assert policy.check == "security-review"
    assert policy.description == "Auth changes need security."
    assert policy.mode == "advisory"
    assert policy.comment == "on_failure"
    assert policy.line == 1
    assert policy.path == str(path)
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [rule.name for rule in policy.rules] == ["approvals", "green"]
    assert [rule.line for rule in policy.rules] == [10, 12]
    assert [rule.name for rule in policy.applies_to] == [
        "projects",
        "target_branches",
        "changed_files",
    ]
    needs = policy.needs
    assert needs.diffs and needs.approvals and needs.groups == frozenset({"acme/security"})
    assert not needs.commits and not needs.discussions


def test_defaults(tmp_path: Path) -> None:
    policy = load_policy_file(write(tmp_path, "size-limit.yaml", "require: [{draft: false}]\n"))
    assert policy.check == "size-limit"
    assert (policy.mode, policy.comment, policy.description) == ("enforce", "never", "")


def test_yaml_quirks_are_read_as_written() -> None:
    policy = load_policy_text(
        """
require:
  - labels: {any: [yes, 1.0, on]}
  - freeze: {windows: [{from: 16:00, to: 18:00}]}
"""
    )
    assert policy.rules[0].any == ("yes", "1.0", "on")  # type: ignore[attr-defined]


def test_anchors_and_merge_keys_work() -> None:
    policy = load_policy_text(
        """
require:
  - approvals: &security {count: 1, from: {groups: [acme/security]}}
  - not: {approvals: {<<: *security, count: 3}}
"""
    )
    assert policy.rules[1].rule.count == 3  # type: ignore[attr-defined]


# --- folders ------------------------------------------------------------------------------------


def test_load_dir_skips_tests_and_is_not_recursive(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", "require: [{draft: false}]\n")
    write(tmp_path, "b.yaml", "check: bee\nrequire: [{draft: false}]\n")
    write(tmp_path, "a.test.yaml", "this is: [not a policy\n")
    write(tmp_path, "tests/a.test.yml", "policy: a\ncases: []\n")
    write(tmp_path, "tests/c.yml", "not: a policy at all\n")
    write(tmp_path, "notes.txt", "ignored\n")
    policies = load_policy_dir(tmp_path)
    assert [policy.check for policy in policies.policies] == ["a", "bee"]
    assert policies.get("bee") is policies.policies[1]
    assert len(policies) == 2
    expected = hashlib.sha256()
    for name in ("a.yml", "b.yaml"):
        expected.update(name.encode() + b"\0" + (tmp_path / name).read_bytes() + b"\0")
    assert policies.digest == expected.hexdigest()


def test_digest_changes_with_content(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yml", "require: [{draft: false}]\n")
    before = load_policy_dir(tmp_path).digest
    path.write_text("require: [{draft: true}]\n")
    assert load_policy_dir(tmp_path).digest != before


def test_load_dir_reports_every_problem_of_every_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", "require:\n  - titel: x\n")
    write(tmp_path, "b.yml", "check: b\nmode: strict\nrequire: []\n")
    write(tmp_path, "c.yml", "require: [{draft: false}]\n")
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(tmp_path)
    assert [str(problem) for problem in caught.value.problems] == [
        f"{tmp_path}/a.yml:2: unknown predicate `titel`; did you mean `title`?",
        f"{tmp_path}/b.yml:2: `mode` must be one of enforce, advisory, got `strict`",
        f"{tmp_path}/b.yml:3: `require` is empty: give at least one rule",
    ]


def test_duplicate_check_names_report_the_second_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", "check: review\nrequire: [{draft: false}]\n")
    write(tmp_path, "b.yml", "# the same check again\ncheck: review\nrequire: [{draft: false}]\n")
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(tmp_path)
    assert [str(problem) for problem in caught.value.problems] == [
        f"{tmp_path}/b.yml:2: duplicate check `review`: already defined in {tmp_path}/a.yml:1"
    ]


def test_duplicate_from_file_stem(tmp_path: Path) -> None:
    write(tmp_path, "review.yml", "require: [{draft: false}]\n")
    write(tmp_path, "zz.yml", "check: review\nrequire: [{draft: false}]\n")
    problems = validate_paths([str(tmp_path)])
    assert [str(problem) for problem in problems] == [
        f"{tmp_path}/zz.yml:1: duplicate check `review`: already defined in {tmp_path}/review.yml:1"
    ]


def test_duplicates_are_reported_even_when_a_file_has_other_problems(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", "check: review\nrequire:\n  - lables: {any: [x]}\n")
    write(tmp_path, "b.yml", "check: review\nrequire: [{draft: false}]\n")
    write(tmp_path, "c.yml", "check: [not, a, name]\nrequire: [{draft: false}]\n")
    write(tmp_path, "d.yml", "check: review\nrequire: [\n")  # YAML error: its check is unknown
    expected = [
        f"{tmp_path}/a.yml:3: unknown predicate `lables`; did you mean `labels`?",
        f"{tmp_path}/c.yml:1: `check` must be a string, got a list",
        f"{tmp_path}/d.yml:3: YAML syntax error: expected the node content, but found "
        "'<stream end>' (while parsing a flow node at line 3)",
        f"{tmp_path}/b.yml:1: duplicate check `review`: already defined in {tmp_path}/a.yml:1",
    ]
    with pytest.raises(PolicyLoadError) as caught:
        load_policy_dir(tmp_path)
    assert [str(problem) for problem in caught.value.problems] == expected
    assert [str(problem) for problem in validate_paths([str(tmp_path)])] == expected
    files = [str(tmp_path / name) for name in ("a.yml", "b.yml")]
    assert [str(problem) for problem in validate_paths(files)] == [expected[0], expected[3]]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="no such file or folder"):
        load_policy_dir(tmp_path / "nope")


def test_validate_paths_files_and_folders(tmp_path: Path) -> None:
    good = write(tmp_path, "good/a.yml", "require: [{draft: false}]\n")
    bad = write(tmp_path, "bad.yml", "require:\n  - draft: maybe\n")
    assert validate_paths([str(good), str(good.parent)]) != []  # the same check twice
    assert validate_paths([str(good.parent)]) == []
    assert [str(problem) for problem in validate_paths([str(bad)])] == [
        f"{bad}:2: `draft` must be true or false, got a string"
    ]
    assert [problem.message for problem in validate_paths([str(tmp_path / "x")])] == [
        "no such file or folder"
    ]


def test_shipped_policies_are_valid() -> None:
    policies = load_policy_dir(Path(__file__).parents[2] / "policies")
    assert {policy.check for policy in policies.policies} == {
        "security-review",
        "conventional-title",
        "change-freeze",
        "size-limit",
        "pipeline-green",
        "docs-or-approval",
    }


# --- every error class, at its line -----------------------------------------------------------


def test_yaml_syntax_error_line() -> None:
    assert problems_of(
        """
        check: x
        require:
          - title: [unclosed
          - draft: false
        """
    ) == [
        "4: YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 3)"
    ]


def test_yaml_bad_indentation() -> None:
    assert problems_of("check: x\n  mode: enforce\n") == [
        "2: YAML syntax error: mapping values are not allowed here"
    ]


def test_empty_file() -> None:
    assert problems_of("") == ["1: the file is empty: a policy needs at least a `require` list"]
    assert problems_of("# only a comment\n") == [
        "1: the file is empty: a policy needs at least a `require` list"
    ]


def test_not_a_mapping() -> None:
    assert problems_of("\n- draft: false\n") == [
        "1: a policy file must be a mapping (check, require, ...), got a list"
    ]
    assert problems_of("just text") == [
        "1: a policy file must be a mapping (check, require, ...), got a string"
    ]


def test_unknown_top_level_key_with_suggestion() -> None:
    assert problems_of(
        """
        check: x
        requires:
          - draft: false
        """
    ) == [
        "1: the policy has no `require` list: give at least one rule",
        "2: unknown key `requires` in the policy; did you mean `require`?",
    ]


def test_predicate_at_top_level_gets_a_hint() -> None:
    assert problems_of("labels: {any: [x]}\nrequire: [{draft: false}]\n") == [
        "1: unknown key `labels` at the top of the policy; `labels` is a predicate: "
        "put it in a list item under `require:`"
    ]


def test_unknown_predicate_with_suggestion() -> None:
    assert problems_of(
        """
        require:
          - draft: false
          - lables: {any: [hotfix]}
        """
    ) == ["3: unknown predicate `lables`; did you mean `labels`?"]


def test_unknown_nested_key_with_suggestion() -> None:
    assert problems_of(
        """
        require:
          - approvals:
              count: 1
              form: {groups: [acme/security]}
        """
    ) == ["4: unknown key `form` in `approvals`; did you mean `from`?"]


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    assert problems_of("require:\n  - labels: {zzz: [a]}\n") == ["2: unknown key `zzz` in `labels`"]


def test_wrong_types() -> None:
    assert problems_of(
        """
        check: [a, b]
        require:
          - approvals: {count: two}
          - draft: "no"
          - labels: {any: {a: b}}
          - changed_lines: {max: -1}
          - target_branch: {main: true}
          - threads_resolved: yes please
        """
    ) == [
        "1: `check` must be a string, got a list",
        "3: `approvals.count` must be a whole number, got a string",
        "4: `draft` must be true or false, got a string",
        "5: `labels.any` must be a string or a list of strings, got a mapping",
        "6: `changed_lines.max` must be at least 0, got -1",
        "7: `target_branch` must be a string or a list of strings, got a mapping",
        "8: `threads_resolved` must be true or false, got a string",
    ]


def test_bad_regexes_are_what_re2_rejects() -> None:
    assert problems_of(
        """
        require:
          - title: '(?=lookahead)'
          - description: '(unclosed'
          - commits: {message: '(\\w+)\\1'}
          - title: '^ok$'
        """
    ) == [
        "2: bad regex in `title` `(?=lookahead)`: invalid perl operator: (?= "
        "(RE2 syntax: no lookaround or backreferences)",
        "3: bad regex in `description` `(unclosed`: missing ): (unclosed",
        "4: bad regex in `commits.message` `(\\w+)\\1`: invalid escape sequence: \\1 "
        "(RE2 syntax: no lookaround or backreferences)",
    ]


def test_bad_globs() -> None:
    assert problems_of(
        """
        require:
          - changed_files:
              - 'src/**'
              - 'src/[a'
          - only_changed_files: ['trailing\\']
          - changed_files: ['']
        """
    ) == [
        "4: bad glob in `changed_files` `src/[a`: not a valid gitignore pattern (an unclosed `[`?)",
        "5: bad glob in `only_changed_files` `trailing\\`: Invalid git pattern: 'trailing\\\\'",
        "6: each item of `changed_files` must not be empty",
    ]


def test_unknown_timezone_with_suggestion() -> None:
    assert problems_of(
        """
        require:
          - freeze:
              timezone: Europe/Berln
              windows: [{from: Fri 16:00, to: Mon 08:00}]
        """
    ) == [
        "3: unknown timezone `Europe/Berln`; did you mean `Europe/Berlin`? "
        "(use an IANA name like Europe/Berlin)"
    ]


def test_bad_freeze_windows() -> None:
    assert problems_of(
        """
        require:
          - freeze:
              windows:
                - {from: Fri 16:00, to: 2026-01-01}
                - {from: Fryday 16:00, to: Mon 08:00}
                - {from: 2026-12-20, to: 2026-12-01}
                - {from: "25:00", to: "08:00"}
                - {from: soon, to: later}
                - {from: Fri 16:00}
                - {days: [sat, funday]}
                - {from: Mon 08:00, to: Mon 08:00}
                - {days: [sat], from: Sat 08:00, to: Sun 08:00}
        """
    ) == [
        "4: `from` is a weekday and time but `to` is a date; write both the same way",
        "5: `from`: unknown weekday `Fryday`; did you mean `friday`?",
        "6: the freeze window ends before it starts",
        "7: `from`: `25:00` is not a valid date or time (hour must be in 0..23)",
        "8: `from`: `soon` must be a date (2026-12-20), a date and time (2026-12-20 16:00), "
        "a weekday and time (Fri 16:00) or a time of day (22:00)",
        "8: `to`: `later` must be a date (2026-12-20), a date and time (2026-12-20 16:00), "
        "a weekday and time (Fri 16:00) or a time of day (22:00)",
        "9: a freeze window needs both `from` and `to`",
        "10: `days`: unknown weekday `funday`; did you mean `sunday`?",
        "11: the freeze window starts and ends at the same moment",
        '12: `days` goes with times of day (from: "22:00"), not with dates or weekdays',
    ]


def test_empty_require() -> None:
    assert problems_of("check: x\nrequire: []\n") == [
        "2: `require` is empty: give at least one rule"
    ]
    assert problems_of("check: x\nrequire:\n") == ["2: `require` is empty: give at least one rule"]


def test_missing_require() -> None:
    assert problems_of("check: x\n") == [
        "1: the policy has no `require` list: give at least one rule"
    ]


def test_rule_item_shape_errors() -> None:
    assert problems_of(
        """
        require:
          - {title: x, draft: false}
          - name: just a name
          - 42
          - not: []
          - any: []
          - all: {draft: false}
        """
    ) == [
        "2: an item of `require` has one predicate each, got `title`, `draft`: put them in "
        "separate list items (every item of `require` must hold) or under `all:`",
        "3: an item of `require` needs one predicate or combinator (e.g. `labels:`), got none",
        "4: an item of `require` must be a mapping, got a number",
        "5: `not` must be a mapping, got a list",
        "6: `any` must not be an empty list",
        "7: `all` must be a list, got a mapping",
    ]


def test_errors_inside_nested_combinators_keep_their_lines() -> None:
    assert problems_of(
        """
        require:
          - any:
              - labels: {any: [hotfix]}
              - not:
                  all:
                    - pipeline: sucess
        """
    ) == [
        "6: unknown pipeline status `sucess`; did you mean `success`? (one of created, "
        "waiting_for_resource, preparing, pending, running, success, failed, canceled, "
        "skipped, manual, scheduled)"
    ]


def test_value_errors() -> None:
    assert problems_of(
        """
        mode: enforced
        comment: sometimes
        require:
          - no_conflicts: false
          - changed_lines: {min: 20, max: 10}
          - commits: {}
          - approvals: {count: 0}
          - labels: {}
        """
    ) == [
        "1: `mode` must be one of enforce, advisory, got `enforced`; did you mean `enforce`?",
        "2: `comment` must be one of never, on_failure, always, got `sometimes`",
        "4: `no_conflicts: false` checks nothing; remove the rule instead",
        "5: `changed_lines`: `min` (20) is greater than `max` (10)",
        "6: `commits` needs `message`, `signed_off` or both",
        "7: `approvals.count` must be at least 1, got 0",
        "8: `labels` needs `all`, `any` or `none`",
    ]


def test_duplicate_keys() -> None:
    assert problems_of("check: a\ncheck: b\nrequire: [{draft: false}]\n") == [
        "2: duplicate key `check` in the policy"
    ]


def test_applies_to_errors() -> None:
    assert problems_of(
        """
        applies_to:
          target_branch: [main]
          changed_files: ['[']
        require: [{draft: false}]
        """
    ) == [
        "2: unknown key `target_branch` in `applies_to`; did you mean `target_branches`?",
        "3: bad glob in `changed_files` `[`: not a valid gitignore pattern (an unclosed `[`?)",
    ]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yml"
    path.write_bytes(b"check: \xff\n")
    with pytest.raises(PolicyLoadError, match=r"bin.yml:1: the file is not UTF-8 text"):
        load_policy_file(path)


def test_unknown_key_does_not_hide_its_siblings_problems() -> None:
    assert problems_of(
        """
        require:
          - approvals:
              count: two
              form: {groups: [acme/security]}
        """
    ) == [
        "3: `approvals.count` must be a whole number, got a string",
        "4: unknown key `form` in `approvals`; did you mean `from`?",
    ]
