"""What the diff predicates share: the diff is an optional fact, and a diff GitLab cut is a lower
bound, never a pass on what it left out."""

from __future__ import annotations

import pytest

from bot.policy import (
    MissingFactError,
    Outcome,
    compile_rule,
    make_facts,
)
from tests.builders import judge


def test_diff_predicates_need_diffs() -> None:
    for text in (
        "changed_files: ['a']",
        "only_changed_files: ['a']",
        "changed_lines: {max: 1}",
        "changed_files_count: {max: 1}",
    ):
        rule = compile_rule(text)
        assert rule.needs.diffs
        with pytest.raises(MissingFactError, match="changed files"):
            rule.evaluate(make_facts(changed_files=None))


def test_a_truncated_diff_never_passes_on_what_gitlab_left_out() -> None:
    """GitLab cuts big diffs: counts are lower bounds, absences unknown (undecided, not passed)."""
    seen = [{"path": f"docs/p{i}.md", "additions": 2} for i in range(1000)]

    def cut(rule: str) -> Outcome:
        return judge(rule, changed_files=seen, changed_files_truncated=True)

    note = "GitLab listed 1000 of 1000+ files"
    over = cut("changed_files_count: {max: 999}")
    assert (over.passed, over.unknown, over.evidence) == (
        False,
        False,
        "changed_files_count: at least 1000 > max 999",
    )
    unsure = cut("changed_lines: {max: 5000}")
    assert (unsure.passed, unsure.unknown) == (False, True)
    assert (
        unsure.evidence == f"changed_lines: at least 2000, so max 5000 cannot be confirmed: {note}"
    )
    assert unsure.fix == "reduce the change to at most 5000 lines"
    floor = cut("changed_files_count: {min: 10}")
    assert (floor.passed, floor.evidence) == (True, "changed_files_count: at least 1000 >= min 10")
    only = cut("only_changed_files: ['docs/**']")
    assert (only.passed, only.unknown) == (False, True)
    assert only.evidence == (
        f"only_changed_files: the 1000 paths GitLab listed match docs/**, but {note}"
    )
    some = cut("changed_files: ['src/**']")
    assert (some.passed, some.unknown) == (False, True)
    assert some.evidence == f"changed_files: no path GitLab listed matches src/**, but {note}"
    assert cut("changed_files: ['docs/p3.md']").passed  # a match seen is a match
    absent = cut("not: {changed_files: ['src/**']}")
    assert (absent.passed, absent.unknown) == (False, True)  # doubt is not turned into a pass
