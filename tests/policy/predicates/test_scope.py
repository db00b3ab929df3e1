"""`applies_to`: which MRs a policy judges at all."""

from __future__ import annotations

from bot.policy import (
    evaluate,
    load_policy_text,
    make_facts,
)


def test_a_truncated_diff_keeps_a_guarded_policy_applicable() -> None:
    policy = load_policy_text(
        "check: guard\napplies_to: {changed_files: ['src/auth/**']}\n"
        "require:\n  - approvals: {count: 1}\n"
    )
    facts = {"changed_files": ["docs/a.md"], "approved_by": []}
    assert not evaluate(policy, make_facts(**facts)).applicable
    verdict = evaluate(policy, make_facts(**facts, changed_files_truncated=True))
    assert (verdict.applicable, verdict.status) == (True, "failed")
