"""`all`, `any`, `not`, nested; verdicts, reasons, fixes and the laws combinators must obey."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.policy import compile_rule, evaluate, load_policy_text, make_facts, render_verdict
from bot.policy.model import Outcome

SIZE_OR_HOTFIX = """
any:
  - changed_lines: {max: 400}
  - labels: {any: [hotfix]}
"""


def big(**facts: object):
    return make_facts(changed_files=[{"path": "a.py", "additions": 500}], **facts)  # type: ignore[arg-type]


def test_any_fails_with_alternative_fixes() -> None:
    outcome = compile_rule(SIZE_OR_HOTFIX).evaluate(big())
    assert not outcome.passed
    assert outcome.evidence == "any: none of 2 rules holds"
    assert outcome.fix == "reduce the change to at most 400 lines or add label hotfix"
    assert [leaf.rule for leaf in outcome.failing_leaves()] == ["changed_lines", "labels"]


def test_any_holds_by_one() -> None:
    outcome = compile_rule(SIZE_OR_HOTFIX).evaluate(big(labels=["hotfix"]))
    assert outcome.passed
    assert outcome.evidence == "any: holds by `labels`"
    assert len(outcome.children) == 2  # every child is evaluated, for the explanation


def test_all() -> None:
    rule = compile_rule("all: [{draft: false}, {pipeline: success}]")
    held = rule.evaluate(make_facts(pipeline="success"))
    assert held.passed and held.evidence == "all: all 2 rules hold"
    failed = rule.evaluate(make_facts(draft=True, pipeline="success"))
    assert failed.evidence == "all: 1 of 2 rules fail (`draft`)"
    assert failed.fix == "mark the MR as ready"


def test_not_fails_with_the_inverse_fix() -> None:
    rule = compile_rule("not: {labels: {any: [do-not-merge]}}")
    failed = rule.evaluate(make_facts(labels=["do-not-merge"]))
    assert not failed.passed
    assert failed.evidence == (
        "not: `labels` must not hold, but it does (labels: has label do-not-merge)"
    )
    assert failed.fix == "remove label do-not-merge"
    assert [leaf.rule for leaf in failed.failing_leaves()] == ["not"]
    held = rule.evaluate(make_facts(labels=[]))
    assert held.passed
    assert held.evidence == "not: `labels` does not hold (labels: has none of do-not-merge)"


def test_nested_not_any() -> None:
    rule = compile_rule(
        """
not:
  name: risky
  any:
    - changed_files: ['migrations/**']
    - labels: {any: [breaking]}
"""
    )
    assert rule.evaluate(make_facts(changed_files=["src/a.py"])).passed
    failed = rule.evaluate(make_facts(changed_files=["migrations/0001.sql"]))
    assert not failed.passed
    assert failed.evidence.startswith("not: `risky` must not hold, but it does (any: holds by")
    assert failed.fix == "change no files matching migrations/**"
    assert rule.needs.diffs


def test_double_negation() -> None:
    rule = compile_rule("not: {not: {draft: true}}")
    assert rule.evaluate(make_facts(draft=True)).passed
    assert not rule.evaluate(make_facts(draft=False)).passed


def test_policy_reason_joins_failing_leaves() -> None:
    policy = load_policy_text(
        """
check: demo
require:
  - pipeline: success
  - name: small or hotfix
    any:
      - changed_lines: {max: 400}
      - labels: {any: [hotfix]}
  - draft: false
"""
    )
    verdict = evaluate(policy, big(pipeline="running"))
    assert verdict.status == "failed"
    assert verdict.reason == (
        "pipeline: waiting for pipeline (running); "
        "changed_lines: 500 > max 400; "
        "labels: has none of hotfix"
    )
    assert verdict.outcome is not None
    assert verdict.outcome.evidence == "2 of 3 rules fail"
    passed = evaluate(policy, make_facts(pipeline="success"))
    assert passed.status == "passed"
    assert passed.reason == "all 3 rules hold"


def test_named_leaf_leads_the_reason() -> None:
    policy = load_policy_text("require:\n  - {name: conventional, title: '^feat'}\n")
    verdict = evaluate(policy, make_facts(title="nope"))
    assert verdict.reason == 'conventional — title: "nope" does not match `^feat`'


def test_render_verdict_tree() -> None:
    policy = load_policy_text(
        "check: demo\nrequire:\n  - pipeline: success\n  - "
        + SIZE_OR_HOTFIX.strip().replace("\n", "\n    ")
    )
    text = render_verdict(evaluate(policy, big(pipeline="success")), color=False)
    assert text.splitlines() == [
        "✗ demo: failed — changed_lines: 500 > max 400; labels: has none of hotfix",
        "  ✓ pipeline: the pipeline is success",
        "  ✗ any: none of 2 rules holds",
        "      fix: reduce the change to at most 400 lines or add label hotfix",
        "    ✗ changed_lines: 500 > max 400",
        "        fix: reduce the change to at most 400 lines",
        "    ✗ labels: has none of hotfix",
        "        fix: add label hotfix",
    ]
    colored = render_verdict(evaluate(policy, big(pipeline="success")), color=True)
    assert "\033[31m✗\033[0m" in colored


def test_render_hides_fixes_under_a_holding_rule() -> None:
    policy = load_policy_text("require:\n  - not: {labels: {any: [blocked]}}\n")
    text = render_verdict(evaluate(policy, make_facts()))
    assert "fix:" not in text
    assert text.startswith("✓ policy: passed — the only rule holds")


def test_render_offers_no_fix_for_a_policy_that_does_not_apply() -> None:
    policy = load_policy_text(
        "applies_to: {target_branches: [main]}\nrequire:\n  - pipeline: success\n"
    )
    text = render_verdict(evaluate(policy, make_facts(target_branch="dev")))
    assert text.splitlines() == [
        "✓ policy: passed [not applicable] — not applicable: target branch dev is not one of main",
        "  ○ target_branches — target branch dev is not one of main",
    ]
    advisory = load_policy_text("mode: advisory\nrequire:\n  - pipeline: success\n")
    text = render_verdict(evaluate(advisory, make_facts()))
    assert "fix: run a pipeline" in text  # advisory: what would fail, and what would fix it


# --- laws ------------------------------------------------------------------------------------

LEAVES = [
    "draft: false",
    "labels: {any: [hotfix]}",
    "labels: {none: [blocked]}",
    "pipeline: success",
    "changed_lines: {max: 10}",
    "only_changed_files: ['docs/**']",
    "title: '^feat'",
    "threads_resolved: true",
]

facts_strategy = st.builds(
    make_facts,
    title=st.sampled_from(["feat: x", "fix: y", ""]),
    draft=st.booleans(),
    labels=st.lists(st.sampled_from(["hotfix", "blocked", "docs"]), unique=True),
    pipeline=st.sampled_from([None, "success", "failed", "running"]),
    changed_files=st.lists(
        st.builds(
            dict,
            path=st.sampled_from(["docs/a.md", "src/b.py", "README.md"]),
            additions=st.integers(0, 8),
        ),
        max_size=3,
    ),
    unresolved_threads=st.integers(0, 2),
)


def rule_text(depth: int, leaves: list[str] = LEAVES) -> st.SearchStrategy[str]:
    """Random rule trees in flow YAML."""
    leaf = st.sampled_from(leaves).map(lambda text: "{" + text + "}")
    if depth == 0:
        return leaf
    sub = rule_text(depth - 1, leaves)
    return st.one_of(
        leaf,
        sub.map(lambda inner: "{not: " + inner + "}"),
        st.lists(sub, min_size=1, max_size=3).map(
            lambda items: "{any: [" + ", ".join(items) + "]}"
        ),
        st.lists(sub, min_size=1, max_size=3).map(
            lambda items: "{all: [" + ", ".join(items) + "]}"
        ),
    )


def truth(outcome: Outcome) -> bool | None:
    """The outcome in three-valued logic: True, False, or None when it cannot be decided."""
    return None if outcome.unknown else outcome.passed


@settings(max_examples=200, deadline=None)
@given(rule_text(2), facts_strategy)
def test_not_is_the_opposite_and_keeps_doubt(text: str, facts) -> None:
    outcome = compile_rule(text).evaluate(facts)
    negated = compile_rule("{not: " + text + "}").evaluate(facts)
    if outcome.unknown:
        assert (negated.passed, negated.unknown) == (False, True)
    else:
        assert negated.passed is not outcome.passed
    assert not (outcome.passed and outcome.unknown)


@settings(max_examples=200, deadline=None)
@given(rule_text(2), facts_strategy)
def test_any_or_all_of_one_is_the_rule(text: str, facts) -> None:
    expected = truth(compile_rule(text).evaluate(facts))
    assert truth(compile_rule("{any: [" + text + "]}").evaluate(facts)) is expected
    assert truth(compile_rule("{all: [" + text + "]}").evaluate(facts)) is expected


@settings(max_examples=200, deadline=None)
@given(rule_text(1), rule_text(1), facts_strategy)
def test_de_morgan(left: str, right: str, facts) -> None:
    either = compile_rule("{not: {any: [" + left + ", " + right + "]}}").evaluate(facts)
    both = compile_rule("{all: [{not: " + left + "}, {not: " + right + "}]}").evaluate(facts)
    assert truth(either) is truth(both)


@settings(max_examples=200, deadline=None)
@given(rule_text(2), facts_strategy)
def test_failing_rules_explain_themselves(text: str, facts) -> None:
    outcome = compile_rule(text).evaluate(facts)
    if outcome.passed:
        assert outcome.fix is None
    else:
        leaves = list(outcome.failing_leaves())
        assert leaves
        assert all(leaf.evidence and leaf.fix for leaf in leaves)


# --- Doubt never becomes a pass ---------------------------------------------------------------
# What GitLab shows may be less than the truth: a diff it cut (the rest of the files unlisted),
# no pipeline for the head yet (one may appear, with any status), approvals it may still delete.
# Whatever rule tree a policy builds, a pass on what GitLab showed must be a pass on every truth
# consistent with it: otherwise a merge gate passes a commit the truth would fail.

DOUBT_LEAVES = [
    *LEAVES,
    "changed_files: ['src/**']",
    "changed_files_count: {max: 2}",
    "changed_files_count: {min: 2}",
    "changed_lines: {min: 3}",
    "approvals: {count: 1}",
    "approvals: {count: 2, from: {users: [carol, dave]}}",
    "pipeline: [failed, canceled]",
]


@st.composite
def shown_and_true(draw: st.DrawFn) -> tuple[object, object]:
    """(what GitLab shows, one truth consistent with it)."""
    files = draw(
        st.lists(
            st.builds(
                dict,
                path=st.sampled_from(["docs/a.md", "src/b.py", "README.md", "docs/c.md"]),
                additions=st.integers(0, 4),
            ),
            max_size=5,
        )
    )
    listed = draw(st.integers(0, len(files)))
    cut = listed < len(files) or draw(st.booleans())
    true_pipeline = draw(st.sampled_from([None, "success", "failed", "running", "canceled"]))
    shown_pipeline = draw(st.sampled_from([None, true_pipeline]))
    # Each approval is settled, or given before the push and kept, or deleted by GitLab later.
    fates = {
        name: draw(st.sampled_from(["none", "settled", "kept", "deleted"]))
        for name in ("carol", "dave", "erin")
    }
    approvers = [name for name, fate in fates.items() if fate != "none"]
    unsettled = [name for name, fate in fates.items() if fate in ("kept", "deleted")]
    deleted = [name for name, fate in fates.items() if fate == "deleted"]
    common = {
        "title": draw(st.sampled_from(["feat: x", "fix: y"])),
        "labels": draw(st.lists(st.sampled_from(["hotfix", "blocked"]), unique=True)),
        "unresolved_threads": draw(st.integers(0, 1)),
    }
    shown = make_facts(
        **common,
        changed_files=files[:listed],
        changed_files_truncated=cut,
        pipeline=shown_pipeline,
        approved_by=approvers,
        unsettled_approvers=unsettled,
    )
    truth = make_facts(
        **common,
        changed_files=files,
        pipeline=true_pipeline,
        approved_by=[a for a in approvers if a not in deleted],
    )
    return shown, truth


@settings(max_examples=400, deadline=None, derandomize=True)
@given(rule_text(2, DOUBT_LEAVES), shown_and_true())
def test_a_pass_on_what_gitlab_shows_is_a_pass_on_the_truth(text: str, pair) -> None:
    shown, truth = pair
    rule = compile_rule(text)
    if rule.evaluate(shown).passed:
        assert rule.evaluate(truth).passed, text
