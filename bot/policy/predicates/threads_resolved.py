"""`threads_resolved: true`."""

from __future__ import annotations

from yaml.nodes import Node

from bot.policy.facts import FactNeeds, MergeRequestFacts
from bot.policy.model import Outcome
from bot.policy.nodes import Ctx
from bot.policy.predicates.base import Predicate, expect_true, plural, register


@register
class ThreadsResolved(Predicate):
    """`threads_resolved: true` — no unresolved thread.

    Counts unresolved resolvable threads from the discussions when they were fetched (they are
    declared as needed), so it holds regardless of the project's "all threads must be resolved"
    setting; without them it falls back to GitLab's `blocking_discussions_resolved`.
    """

    key = "threads_resolved"
    __slots__ = ()

    @classmethod
    def compile(cls, ctx: Ctx, node: Node, name: str | None, line: int) -> Predicate | None:
        if not expect_true(ctx, node, cls.key):
            return None
        return cls(name, line, FactNeeds(discussions=True))

    def evaluate(self, facts: MergeRequestFacts) -> Outcome:
        count = facts.unresolved_threads
        if count is None:
            if facts.blocking_discussions_resolved:
                return self.outcome(
                    True,
                    "GitLab reports every blocking thread resolved",
                    negated_fix="open a thread",
                )
            return self.outcome(
                False,
                "GitLab reports unresolved blocking threads",
                fix="resolve the open threads",
            )
        if count:
            threads = plural(count, "unresolved thread")
            return self.outcome(False, f"{threads}", fix=f"resolve the {threads}")
        return self.outcome(True, "no unresolved threads", negated_fix="open a thread")
