"""`no_conflicts: true`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, expect_true, register


@register
class NoConflicts(Predicate):
    """`no_conflicts: true` — the MR has no merge conflicts."""

    key = "no_conflicts"
    __slots__ = ()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        return cls(name, line) if expect_true(ctx, node, cls.key) else None

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        if facts.has_conflicts:
            return self.outcome(
                False,
                "the MR has merge conflicts",
                fix="rebase or merge the target branch and resolve the conflicts",
            )
        return self.outcome(True, "no merge conflicts", negated_fix="create a merge conflict")
