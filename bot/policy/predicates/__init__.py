"""The predicates of the policy language, one small module each (a YAML key, its compile and its
evaluate), registered in `base.REGISTRY` when imported. The list below is every module there is:
a new predicate is a new module here and its test in tests/policy/predicates/.

Every class validates its YAML value in `compile` (load time) and judges facts in `evaluate`
(hot path: plain Python over precompiled RE2 programs). Evidence is one sentence, `fix` says what
would make a failing rule pass, `negated_fix` what would make a holding rule fail (for `not`).
"""

from __future__ import annotations

from bot.policy.predicates import (
    approvals,
    author,
    branches,
    changed_files,
    commits,
    draft,
    freeze,
    labels,
    no_conflicts,
    pipeline,
    size,
    threads_resolved,
    title,
)

MODULES = (
    title,
    labels,
    draft,
    branches,
    author,
    changed_files,
    size,
    approvals,
    pipeline,
    threads_resolved,
    commits,
    no_conflicts,
    freeze,
)
