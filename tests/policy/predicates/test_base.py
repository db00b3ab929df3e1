"""What every predicate shares (base.py): the facts it declares it needs."""

from __future__ import annotations

from bot.policy import (
    compile_rule,
)


def test_predicates_without_optional_facts_need_nothing() -> None:
    for text in ("title: x", "labels: {any: [a]}", "draft: false", "pipeline: success"):
        needs = compile_rule(text).needs
        assert not (needs.diffs or needs.approvals or needs.commits or needs.discussions)
