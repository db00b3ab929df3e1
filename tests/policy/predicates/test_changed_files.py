"""`changed_files` and `only_changed_files`: gitignore-style paths, renames, deletions."""

from __future__ import annotations

import time

from bot.policy import (
    compile_rule,
    make_facts,
)
from tests.builders import judge


def test_changed_files_any_path_matches() -> None:
    outcome = judge("changed_files: ['src/auth/**']", changed_files=["README.md", "src/auth/x.py"])
    assert outcome.passed
    assert outcome.evidence == "changed_files: src/auth/x.py matches src/auth/**"
    failed = judge("changed_files: ['src/auth/**']", changed_files=["README.md", "src/x.py"])
    assert not failed.passed
    assert failed.evidence == "changed_files: no changed path matches src/auth/** (2 paths checked)"


def test_changed_files_gitignore_semantics() -> None:
    assert judge("changed_files: ['*.md']", changed_files=["docs/deep/a.md"]).passed
    assert not judge("changed_files: ['/*.md']", changed_files=["docs/a.md"]).passed
    assert judge("changed_files: ['/*.md']", changed_files=["a.md"]).passed
    assert judge("changed_files: ['**/secrets/**']", changed_files=["a/b/secrets/k"]).passed
    assert judge("changed_files: ['config/']", changed_files=["app/config/x.yml"]).passed


def test_changed_files_negation_last_match_decides() -> None:
    rule = "changed_files: ['src/auth/**', '!src/auth/README.md']"
    assert not judge(rule, changed_files=["src/auth/README.md"]).passed
    assert judge(rule, changed_files=["src/auth/README.md", "src/auth/login.py"]).passed


def test_changed_files_rename_counts_under_both_paths() -> None:
    moved_out = {"old_path": "src/auth/token.py", "new_path": "src/util/token.py"}
    assert judge("changed_files: ['src/auth/**']", changed_files=[moved_out]).passed
    moved_in = {"old_path": "src/util/token.py", "new_path": "src/auth/token.py"}
    assert judge("changed_files: ['src/auth/**']", changed_files=[moved_in]).passed


def test_changed_files_deleted_file_counts() -> None:
    deleted = {"path": "src/auth/legacy.py", "deleted": True, "deletions": 40}
    assert judge("changed_files: ['src/auth/**']", changed_files=[deleted]).passed


def test_changed_files_empty_diff() -> None:
    outcome = judge("changed_files: ['src/**']", changed_files=[])
    assert not outcome.passed
    assert outcome.evidence == "changed_files: the MR changes no files"


def test_only_changed_files() -> None:
    rule = "only_changed_files: ['docs/**', '*.md']"
    held = judge(rule, changed_files=["docs/a.txt", "README.md"])
    assert held.passed
    assert held.evidence == "only_changed_files: all 2 changed paths match docs/**, *.md"
    failed = judge(rule, changed_files=["docs/a.txt", "src/app.py", "src/b.py"])
    assert not failed.passed
    assert failed.evidence == (
        "only_changed_files: 2 of 3 changed paths are outside docs/**, *.md: src/app.py, src/b.py"
    )
    assert failed.fix == "limit the change to files matching docs/**, *.md"


def test_only_changed_files_empty_diff_passes_and_says_so() -> None:
    outcome = judge("only_changed_files: ['docs/**']", changed_files=[])
    assert outcome.passed
    assert outcome.evidence == (
        "only_changed_files: the MR changes no files, so none is outside docs/**"
    )


def test_only_changed_files_rename_out_of_docs_fails() -> None:
    renamed = {"old_path": "docs/a.md", "new_path": "src/a.md"}
    outcome = judge("only_changed_files: ['docs/**']", changed_files=[renamed])
    assert not outcome.passed
    assert "1 of 2 changed paths is outside docs/**: src/a.md" in outcome.evidence


def test_only_changed_files_lists_at_most_three_paths() -> None:
    files = [f"src/f{i}.py" for i in range(10)]
    outcome = judge("only_changed_files: ['docs/**']", changed_files=files)
    assert outcome.evidence.endswith("src/f0.py, src/f1.py, src/f2.py and 7 more")


def test_three_thousand_changed_files() -> None:
    files = [{"path": f"docs/section{i % 30}/page{i}.md", "additions": 1} for i in range(3000)]
    facts = make_facts(changed_files=[*files, "src/app.py"])
    started = time.perf_counter()
    only = compile_rule("only_changed_files: ['docs/**']").evaluate(facts)
    some = compile_rule("changed_files: ['src/**']").evaluate(facts)
    count = compile_rule("changed_files_count: {max: 2500}").evaluate(facts)
    lines = compile_rule("changed_lines: {max: 3000}").evaluate(facts)
    assert time.perf_counter() - started < 1.0
    assert not only.passed
    assert "1 of 3001 changed paths is outside docs/**: src/app.py" in only.evidence
    assert some.passed
    assert count.evidence == "changed_files_count: 3001 > max 2500"
    assert lines.passed
    assert lines.evidence == "changed_lines: 3000 <= max 3000"
