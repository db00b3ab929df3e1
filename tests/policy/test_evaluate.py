"""evaluate(): applicability, advisory mode, reasons, and what a verdict carries."""

from __future__ import annotations

import pytest
import re2

from bot.policy import MissingFactError, evaluate, load_policy_text, make_facts
from bot.policy.patterns import searcher

SCOPED = """
check: security-review
applies_to:
  projects: ["acme/*"]
  target_branches: [main, "release/*"]
  source_branches: ["feature/*"]
  changed_files: ["src/auth/**"]
require:
  - approvals: {count: 1}
"""


def scoped(**facts: object):
    defaults: dict[str, object] = {
        "project": "acme/app",
        "target_branch": "main",
        "source_branch": "feature/x",
        "changed_files": ["src/auth/login.py"],
    }
    policy = load_policy_text(SCOPED)
    return evaluate(policy, make_facts(**{**defaults, **facts}))  # type: ignore[arg-type]


def test_in_scope_is_judged() -> None:
    verdict = scoped()
    assert (verdict.status, verdict.applicable) == ("failed", True)
    assert verdict.reason == "approvals: 0 of 1 (no approvals yet)"


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({"project": "other/app"}, "not applicable: project other/app is not one of acme/*"),
        (
            {"target_branch": "dev"},
            "not applicable: target branch dev is not one of main, release/*",
        ),
        ({"source_branch": "hack"}, "not applicable: source branch hack is not one of feature/*"),
        (
            {"changed_files": ["README.md"]},
            "not applicable: no changed path matches src/auth/** (1 path checked)",
        ),
        ({"changed_files": []}, "not applicable: the MR changes no files"),
    ],
)
def test_out_of_scope_is_passed_and_says_why(facts: dict[str, object], reason: str) -> None:
    verdict = scoped(**facts)
    assert verdict.status == "passed"
    assert not verdict.applicable
    assert verdict.reason == reason


def test_projects_match_case_insensitively_and_across_subgroups() -> None:
    assert scoped(project="ACME/sub/app").applicable


def test_advisory_always_passes_but_says_what_failed() -> None:
    policy = load_policy_text("mode: advisory\nrequire:\n  - pipeline: success\n")
    failing = evaluate(policy, make_facts(pipeline="failed"))
    assert failing.status == "passed"
    assert failing.advisory
    assert failing.reason == "advisory: would fail: pipeline: the pipeline is failed, not success"
    assert failing.outcome is not None and not failing.outcome.passed
    holding = evaluate(policy, make_facts(pipeline="success"))
    assert holding.reason == "advisory: the only rule holds"


def test_missing_fact_is_an_error_not_a_verdict() -> None:
    policy = load_policy_text("require:\n  - changed_lines: {max: 10}\n")
    with pytest.raises(MissingFactError, match="changed_lines"):
        evaluate(policy, make_facts(changed_files=None))


def test_verdict_to_dict() -> None:
    policy = load_policy_text("check: demo\nrequire:\n  - draft: false\n")
    data = evaluate(policy, make_facts(draft=True)).to_dict()
    assert data["check"] == "demo"
    assert data["status"] == "failed"
    assert data["reason"] == "draft: the MR is a draft"
    assert data["outcome"]["children"] == [
        {
            "rule": "draft",
            "passed": False,
            "evidence": "draft: the MR is a draft",
            "fix": "mark the MR as ready",
        }
    ]


def test_fast_search_falls_back_to_the_public_api() -> None:
    class Plain:
        """A compiled regex without the private fast path."""

        def __init__(self, pattern: str) -> None:
            self.compiled = re2.compile(pattern)

        def search(self, text: str) -> object:
            return self.compiled.search(text)

    search = searcher(Plain("^a"))  # type: ignore[arg-type]
    assert search("abc") is True
    assert search("cab") is False
