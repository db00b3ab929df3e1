"""Every predicate (README, "Predicates"), holding and failing, with the evidence people read."""

from __future__ import annotations

import time

import pytest

from bot.policy import (
    MissingFactError,
    Outcome,
    compile_rule,
    evaluate,
    load_policy_text,
    make_facts,
)
from bot.policy.facts import ChangedFile


def judge(rule: str, **facts: object) -> Outcome:
    return compile_rule(rule).evaluate(make_facts(**facts))  # type: ignore[arg-type]


# --- title / description -------------------------------------------------------------------


def test_title_matches() -> None:
    outcome = judge("title: '^feat'", title="feat: add x")
    assert outcome.passed
    assert outcome.rule == "title"
    assert outcome.evidence == 'title: "feat: add x" matches `^feat`'
    assert outcome.fix is None


def test_title_does_not_match() -> None:
    outcome = judge("title: '^feat'", title="Add x")
    assert not outcome.passed
    assert outcome.evidence == 'title: "Add x" does not match `^feat`'
    assert outcome.fix == "change the title to match `^feat`"


def test_title_regex_is_a_search_and_flags_work() -> None:
    assert judge("title: 'JIRA-\\d+'", title="fix: crash (JIRA-12)").passed
    assert judge("title: '(?i)^wip'", title="WIP: later").passed
    assert not judge("title: '^wip'", title="WIP: later").passed


def test_long_title_is_clipped_in_evidence() -> None:
    outcome = judge("title: '^feat'", title="x" * 500)
    assert len(outcome.evidence) < 120
    assert "…" in outcome.evidence


def test_named_rule_keeps_its_name() -> None:
    outcome = judge("{name: conventional title, title: '^feat'}", title="nope")
    assert outcome.rule == "conventional title"
    assert outcome.evidence.startswith("title: ")


def test_description() -> None:
    outcome = judge("description: 'Closes #\\d+'", description="Closes #12")
    assert outcome.passed
    assert outcome.evidence == 'description: the description "Closes #12" matches `Closes #\\d+`'
    empty = judge("description: 'Closes #\\d+'", description="")
    assert not empty.passed
    assert empty.evidence == "description: the empty description does not match `Closes #\\d+`"
    assert empty.fix == "change the description to match `Closes #\\d+`"


def test_catastrophic_regex_on_a_huge_title_returns_promptly() -> None:
    rule = compile_rule("title: '(a+)+$'")
    facts = make_facts(title="a" * 100_000 + "!")
    started = time.perf_counter()
    outcome = rule.evaluate(facts)
    assert time.perf_counter() - started < 0.5
    assert not outcome.passed


def test_catastrophic_description_regex_returns_promptly() -> None:
    rule = compile_rule("description: '^(\\w+\\s?)*$'")
    facts = make_facts(description="word " * 20_000 + "!")
    started = time.perf_counter()
    assert not rule.evaluate(facts).passed
    assert time.perf_counter() - started < 0.5


# --- labels ----------------------------------------------------------------------------------


def test_labels_all() -> None:
    rule = "labels: {all: [backend, reviewed]}"
    held = judge(rule, labels=["reviewed", "backend", "x"])
    assert held.passed
    assert held.evidence == "labels: has labels backend, reviewed"
    failed = judge(rule, labels=["backend"])
    assert not failed.passed
    assert failed.evidence == "labels: missing label reviewed"
    assert failed.fix == "add label reviewed"


def test_labels_any() -> None:
    rule = "labels: {any: [hotfix, urgent]}"
    assert judge(rule, labels=["urgent"]).evidence == "labels: has label urgent"
    failed = judge(rule, labels=["bug"])
    assert failed.evidence == "labels: has none of hotfix, urgent"
    assert failed.fix == "add one of labels hotfix, urgent"


def test_labels_none() -> None:
    rule = "labels: {none: [do-not-merge, blocked]}"
    assert judge(rule, labels=["bug"]).evidence == "labels: has none of do-not-merge, blocked"
    failed = judge(rule, labels=["blocked"])
    assert not failed.passed
    assert failed.evidence == "labels: has label blocked, which must not be set"
    assert failed.fix == "remove label blocked"


def test_labels_combined_keys_must_all_hold() -> None:
    rule = "labels: {all: [backend], none: [wip]}"
    assert judge(rule, labels=["backend"]).passed
    failed = judge(rule, labels=["backend", "wip"])
    assert not failed.passed
    assert failed.evidence == "labels: has label wip, which must not be set"


def test_labels_are_case_sensitive_and_a_single_string_is_accepted() -> None:
    assert not judge("labels: {any: hotfix}", labels=["Hotfix"]).passed
    assert judge("labels: {any: hotfix}", labels=["hotfix"]).passed


# --- draft, branches, author -------------------------------------------------------------------


def test_draft() -> None:
    not_draft = judge("draft: false", draft=False)
    assert not_draft.passed
    assert not_draft.evidence == "draft: the MR is not a draft"
    draft = judge("draft: false", draft=True)
    assert not draft.passed
    assert draft.evidence == "draft: the MR is a draft"
    assert draft.fix == "mark the MR as ready"
    assert judge("draft: true", draft=True).passed


def test_target_branch_glob_and_list() -> None:
    assert judge("target_branch: main", target_branch="main").passed
    outcome = judge("target_branch: [main, 'release/*']", target_branch="release/1.2")
    assert outcome.evidence == "target_branch: release/1.2 matches main, release/*"
    failed = judge("target_branch: [main, 'release/*']", target_branch="dev")
    assert not failed.passed
    assert failed.evidence == "target_branch: dev is not one of main, release/*"
    assert failed.fix == "use a target branch matching main, release/*"


def test_branch_star_matches_slashes_like_gitlab_wildcards() -> None:
    assert judge("target_branch: 'release/*'", target_branch="release/2026/q1").passed
    assert not judge("target_branch: 'release/*'", target_branch="prerelease/1").passed
    assert not judge("target_branch: main", target_branch="main2").passed


def test_source_branch() -> None:
    assert judge("source_branch: 'feature/*'", source_branch="feature/x").passed
    failed = judge("source_branch: 'feature/*'", source_branch="hack")
    assert failed.evidence == "source_branch: hack is not one of feature/*"


def test_author_users_are_case_insensitive() -> None:
    outcome = judge("author: {users: [Alice, bob]}", author="alice")
    assert outcome.passed
    assert outcome.evidence == "author: alice is one of alice, bob"
    failed = judge("author: {users: [alice]}", author="mallory")
    assert not failed.passed
    assert failed.evidence == "author: mallory is not one of alice"


def test_author_groups() -> None:
    rule = "author: {groups: [Acme/Platform]}"
    members = {"acme/platform": ["carol"]}
    outcome = judge(rule, author="carol", group_members=members)
    assert outcome.evidence == "author: carol is in acme/platform"
    failed = judge(rule, author="dave", group_members=members)
    assert failed.evidence == "author: dave is not in acme/platform"


def test_author_group_needs_are_declared_and_missing_members_are_a_bug() -> None:
    rule = compile_rule("author: {groups: [Acme/Platform]}")
    assert rule.needs.groups == frozenset({"acme/platform"})
    with pytest.raises(MissingFactError, match="members of group acme/platform"):
        rule.evaluate(make_facts(author="carol"))


# --- the diff ---------------------------------------------------------------------------------


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


def test_changed_lines() -> None:
    files = [{"path": "a", "additions": 300, "deletions": 100}, {"path": "b", "additions": 1}]
    failed = judge("changed_lines: {max: 400}", changed_files=files)
    assert not failed.passed
    assert failed.evidence == "changed_lines: 401 > max 400"
    assert failed.fix == "reduce the change to at most 400 lines"
    assert judge("changed_lines: {max: 401}", changed_files=files).passed
    too_small = judge("changed_lines: {min: 500}", changed_files=files)
    assert too_small.evidence == "changed_lines: 401 < min 500"
    held = judge("changed_lines: {min: 1, max: 1000}", changed_files=files)
    assert held.evidence == "changed_lines: 401 within min 1, max 1000"


def test_changed_files_count() -> None:
    files = ["a", {"old_path": "b", "new_path": "c"}, {"path": "d", "deleted": True}]
    outcome = judge("changed_files_count: {max: 3}", changed_files=files)
    assert outcome.passed
    assert outcome.evidence == "changed_files_count: 3 <= max 3"
    failed = judge("changed_files_count: {max: 2}", changed_files=files)
    assert failed.fix == "reduce the change to at most 2 files"
    empty = judge("changed_files_count: {min: 1}", changed_files=[])
    assert empty.evidence == "changed_files_count: 0 < min 1"


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


def test_a_truncated_diff_keeps_a_guarded_policy_applicable() -> None:
    policy = load_policy_text(
        "check: guard\napplies_to: {changed_files: ['src/auth/**']}\n"
        "require:\n  - approvals: {count: 1}\n"
    )
    facts = {"changed_files": ["docs/a.md"], "approved_by": []}
    assert not evaluate(policy, make_facts(**facts)).applicable
    verdict = evaluate(policy, make_facts(**facts, changed_files_truncated=True))
    assert (verdict.applicable, verdict.status) == (True, "failed")


def test_changed_file_paths_of_facts() -> None:
    assert ChangedFile("a", "b", renamed_file=True).paths == ("a", "b")
    assert ChangedFile("a", "a", deleted_file=True).paths == ("a",)


# --- approvals --------------------------------------------------------------------------------

SECURITY = "approvals: {count: 1, from: {groups: [acme/security]}}"
MEMBERS = {"acme/security": ["alice", "sam"]}


def test_approvals_from_a_group() -> None:
    outcome = judge(SECURITY, author="bob", approved_by=["sam"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == "approvals: 1 of 1 from acme/security (sam)"


def test_author_approving_own_mr_does_not_count() -> None:
    outcome = judge(SECURITY, author="alice", approved_by=["alice"], group_members=MEMBERS)
    assert not outcome.passed
    assert outcome.evidence == (
        "approvals: 0 of 1 from acme/security (alice approved but is the author)"
    )
    assert outcome.fix == "get 1 more approval from acme/security"


def test_approver_outside_the_group_is_named() -> None:
    outcome = judge(SECURITY, author="alice", approved_by=["bob", "Sam"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == (
        "approvals: 1 of 1 from acme/security (Sam; bob approved but is not in acme/security)"
    )


def test_no_approvals_yet_and_plural_fix() -> None:
    outcome = judge("approvals: {count: 2}", approved_by=[])
    assert outcome.evidence == "approvals: 0 of 2 (no approvals yet)"
    assert outcome.fix == "get 2 more approvals"


def test_exclude_author_false_counts_the_author() -> None:
    rule = "approvals: {count: 1, exclude_author: false}"
    assert judge(rule, author="alice", approved_by=["alice"]).passed
    assert not judge("approvals: {count: 1}", author="alice", approved_by=["ALICE"]).passed


def test_approvals_from_users_and_groups() -> None:
    rule = "approvals: {count: 2, from: {users: [lead], groups: [acme/security]}}"
    outcome = judge(rule, approved_by=["lead", "sam", "eve"], group_members=MEMBERS)
    assert outcome.passed
    assert outcome.evidence == (
        "approvals: 2 of 2 from acme/security or lead "
        "(lead, sam; eve approved but is neither in acme/security nor one of lead)"
    )


def test_duplicate_approvals_count_once() -> None:
    outcome = judge("approvals: {count: 2}", approved_by=["bob", "bob"])
    assert not outcome.passed
    assert outcome.evidence == "approvals: 1 of 2 (bob)"


def test_approvals_needs() -> None:
    rule = compile_rule(SECURITY)
    assert rule.needs.approvals and rule.needs.groups == frozenset({"acme/security"})
    with pytest.raises(MissingFactError, match="approvals"):
        rule.evaluate(make_facts(approved_by=None, group_members=MEMBERS))


# --- pipeline, threads, commits, conflicts ----------------------------------------------------


def test_pipeline_success() -> None:
    outcome = judge("pipeline: success", pipeline="success")
    assert outcome.passed
    assert outcome.evidence == "pipeline: the pipeline is success"


def test_pipeline_missing_is_waiting() -> None:
    outcome = judge("pipeline: success", pipeline=None, sha="abcdef0123456789" * 2 + "abcdefgh")
    assert not outcome.passed
    assert outcome.evidence == "pipeline: waiting for a pipeline for abcdef01"


@pytest.mark.parametrize("status", ["running", "pending", "created"])
def test_pipeline_in_progress_is_waiting(status: str) -> None:
    outcome = judge("pipeline: success", pipeline=status)
    assert not outcome.passed
    assert outcome.evidence == f"pipeline: waiting for pipeline ({status})"
    assert outcome.fix == "wait for the pipeline to finish (needs success)"


def test_pipeline_failed_and_lists() -> None:
    failed = judge("pipeline: success", pipeline="failed")
    assert failed.evidence == "pipeline: the pipeline is failed, not success"
    assert judge("pipeline: [success, skipped]", pipeline="skipped").passed
    manual = judge("pipeline: [success, skipped]", pipeline="manual")
    assert manual.evidence == "pipeline: the pipeline is manual, not success or skipped"


def test_threads_resolved_counts_threads() -> None:
    rule = compile_rule("threads_resolved: true")
    assert rule.needs.discussions
    assert rule.evaluate(make_facts(unresolved_threads=0)).evidence == (
        "threads_resolved: no unresolved threads"
    )
    two = rule.evaluate(make_facts(unresolved_threads=2))
    assert not two.passed
    assert two.evidence == "threads_resolved: 2 unresolved threads"
    assert two.fix == "resolve the 2 unresolved threads"
    one = rule.evaluate(make_facts(unresolved_threads=1))
    assert one.evidence == "threads_resolved: 1 unresolved thread"


def test_threads_resolved_falls_back_to_gitlab_flag() -> None:
    rule = compile_rule("threads_resolved: true")
    unknown = make_facts(unresolved_threads=None, blocking_discussions_resolved=False)
    outcome = rule.evaluate(unknown)
    assert not outcome.passed
    assert outcome.evidence == "threads_resolved: GitLab reports unresolved blocking threads"
    ok = make_facts(unresolved_threads=None, blocking_discussions_resolved=True)
    assert rule.evaluate(ok).passed


def test_commits_message() -> None:
    rule = "commits: {message: '^(feat|fix)'}"
    held = judge(rule, commits=["feat: a", "fix: b"])
    assert held.passed
    assert held.evidence == "commits: all 2 commits match `^(feat|fix)`"
    failed = judge(rule, commits=[{"sha": "a" * 40, "message": "wip\n\nmore"}, "fix: b"])
    assert not failed.passed
    assert failed.evidence == (
        'commits: 1 of 2 commits does not match `^(feat|fix)`: aaaaaaaa "wip"'
    )
    assert failed.fix == "reword commits to match `^(feat|fix)`"


def test_commits_signed_off() -> None:
    signed = "fix: b\n\nSigned-off-by: Bob <bob@example.com>"
    rule = "commits: {signed_off: true}"
    assert judge(rule, commits=[signed]).evidence == "commits: the only commit is signed off"
    failed = judge(rule, commits=[signed, {"sha": "b" * 40, "message": "fix: c"}])
    assert not failed.passed
    assert failed.evidence == "commits: 1 of 2 commits lacks a Signed-off-by line: bbbbbbbb"
    assert failed.fix == "sign off every commit (git commit -s)"


def test_commits_empty_and_needs() -> None:
    assert judge("commits: {signed_off: true}", commits=[]).evidence == (
        "commits: the MR has no commits"
    )
    rule = compile_rule("commits: {message: x}")
    assert rule.needs.commits
    with pytest.raises(MissingFactError, match="commits"):
        rule.evaluate(make_facts(commits=None))


def test_no_conflicts() -> None:
    assert judge("no_conflicts: true", has_conflicts=False).evidence == (
        "no_conflicts: no merge conflicts"
    )
    failed = judge("no_conflicts: true", has_conflicts=True)
    assert not failed.passed
    assert failed.evidence == "no_conflicts: the MR has merge conflicts"
    assert failed.fix == "rebase or merge the target branch and resolve the conflicts"


def test_predicates_without_optional_facts_need_nothing() -> None:
    for text in ("title: x", "labels: {any: [a]}", "draft: false", "pipeline: success"):
        needs = compile_rule(text).needs
        assert not (needs.diffs or needs.approvals or needs.commits or needs.discussions)
