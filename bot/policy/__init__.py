"""The policy language (README, "Policy language"): load, evaluate, explain and test policies.

policy_set = load_policy_dir("policies")          # PolicyLoadError lists every problem
verdict = evaluate(policy_set.get("size-limit"), facts)
print(render_verdict(verdict, color=True))
"""

from __future__ import annotations

from bot.policy.evaluate import evaluate
from bot.policy.explanation import render_verdict
from bot.policy.loader import (
    load_policy_dir,
    load_policy_file,
    load_policy_text,
    validate_paths,
)
from bot.policy.model import (
    MissingFactError,
    Outcome,
    Policy,
    PolicyLoadError,
    PolicyProblem,
    PolicySet,
    Rule,
    Verdict,
)
from bot.policy.predicates.base import REGISTRY
from bot.policy.testing import compile_rule, make_facts, run_tests

__all__ = [
    "REGISTRY",
    "MissingFactError",
    "Outcome",
    "Policy",
    "PolicyLoadError",
    "PolicyProblem",
    "PolicySet",
    "Rule",
    "Verdict",
    "compile_rule",
    "evaluate",
    "load_policy_dir",
    "load_policy_file",
    "load_policy_text",
    "make_facts",
    "render_verdict",
    "run_tests",
    "validate_paths",
]
